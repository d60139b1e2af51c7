"""Ray Data ingestion (`data.loader: ray_data`): a partitioned-Parquet market read by Ray Data tasks and
streamed to the training workers as windows, so no process holds the whole market.

    market = plan_streamed_market(config.data)       # two small Ray Data passes: spans and feature statistics
    datasets = {split: window_dataset(market, split) for split in ("train", "val")}
    TorchTrainer(..., datasets=datasets)             # each worker: ray.train.get_dataset_shard("train")

An instrument's features need its contiguous history, so one Ray Data task reads one instrument's part files
(`data/parquet.py`), builds features, labels and split ranges with the in-memory loader's own function
(`dataset.instrument_arrays`), and yields the windows of one split in blocks of `data.block_windows` rows:
a task holds one instrument, a worker holds its prefetched batches and its local shuffle buffer.

Normalisation statistics are fitted on the train split from per-instrument partial sums
(`features.block_sums`, one task per instrument) that the driver adds in instrument order with
`combine_block_sums`: the arithmetic of `FeatureStats.fit`, so both loaders produce the same bits.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hrm_platform.config import DataConfig
from hrm_platform.data.dataset import describe_data, instrument_arrays, min_bars, train_feature_rows
from hrm_platform.data.features import (
    FEATURE_NAMES,
    LOOKBACK,
    FeatureSpec,
    FeatureStats,
    block_sums,
    combine_block_sums,
)
from hrm_platform.data.frequency import BarFrequency, BarSpan, resolve_frequency
from hrm_platform.data.parquet import list_instrument_files, read_instrument

STREAMED_SPLITS = ("train", "val")  # what training streams; backtests read the test split in memory
SAMPLE_COLUMNS = ("window", "action", "quantity")  # what a training worker's batches carry
POSITION_COLUMNS = ("instrument", "end")  # where each window ends: instrument number (sorted symbols) and bar


@dataclass
class StreamedMarket:
    """What the driver learned about a Parquet market without loading it; pickled to every training worker."""

    config: DataConfig
    files: dict[str, list[str]]  # symbol -> its part files, in time order
    spans: dict[str, BarSpan]  # symbol -> bar count, first and last timestamp
    split_ends: dict[str, dict[str, tuple[int, int]]]  # symbol -> split -> end-bar range [start, stop)
    feature_spec: FeatureSpec
    frequency: BarFrequency

    @property
    def symbols(self) -> list[str]:
        return sorted(self.files)

    @property
    def n_features(self) -> int:
        return self.feature_spec.n_features

    def split_size(self, split: str) -> int:
        """Windows in `split` over every instrument."""
        return sum(stop - start for ranges in self.split_ends.values() for start, stop in [ranges[split]])

    def description(self) -> dict[str, object]:
        """The checkpoint manifest's `data` entry, as the in-memory loader writes it."""
        return describe_data(str(self.config.path), self.spans, self.split_ends, self.frequency)


def plan_streamed_market(config: DataConfig) -> StreamedMarket:
    """List the market's files and fit the feature statistics on its train split, one Ray Data task per
    instrument per pass (sums, then squared deviations from the mean); nothing but partial sums comes back.

    A bad file (missing columns, unsorted or duplicate timestamps, an empty partition, too few bars) raises
    its OHLCVError here, naming the file and the row, before any training worker starts.
    """
    files = list_instrument_files(str(config.path))
    first = _per_instrument(files, config, center=None)
    count = sum(one.rows for one in first.values())
    mean = combine_block_sums([one.sums for one in first.values()], count)
    second = _per_instrument(files, config, center=mean)
    square = combine_block_sums([one.sums for one in second.values()], count)
    spans = {symbol: one.span for symbol, one in first.items()}
    return StreamedMarket(
        config=config,
        files=files,
        spans=spans,
        split_ends={symbol: one.ranges for symbol, one in first.items()},
        feature_spec=FeatureSpec(FEATURE_NAMES, LOOKBACK, config.window, FeatureStats.from_moments(mean, square)),
        frequency=resolve_frequency(spans, config.bars_per_year),
    )


def window_dataset(market: StreamedMarket, split: str, shuffle_seed: int | None = None, with_positions: bool = False):
    """A Ray Dataset of `split`'s windows: rows of window (W, F) float32, action int64, quantity float32 (and
    instrument, end with `with_positions`). With `shuffle_seed`, each instrument's windows come in a seeded
    random order (the worker's local shuffle buffer then mixes instruments); without, in time order."""

    columns = list(SAMPLE_COLUMNS) + (list(POSITION_COLUMNS) if with_positions else [])
    return _instrument_items(market.files).map_batches(
        _split_windows,
        batch_size=1,  # one instrument per call; the call yields its windows block by block
        fn_kwargs={"config": market.config, "split": split, "stats": market.feature_spec.stats,
                   "symbols": market.symbols, "shuffle_seed": shuffle_seed, "columns": columns},
    )


def _instrument_items(files: dict[str, list[str]]):
    """One row (symbol, files) per instrument, each its own block so that instruments run as parallel tasks."""
    import ray.data

    items = [{"symbol": symbol, "files": list(paths)} for symbol, paths in sorted(files.items())]
    return ray.data.from_items(items, override_num_blocks=len(items))


@dataclass
class _TrainSums:
    """One instrument's share of a statistics pass."""

    span: BarSpan
    ranges: dict[str, tuple[int, int]]  # split -> end-bar range [start, stop)
    rows: int  # train feature rows
    sums: np.ndarray  # (blocks, F) float64 partial sums of them (or of their squared deviations)


def _per_instrument(
    files: dict[str, list[str]], config: DataConfig, center: np.ndarray | None
) -> dict[str, _TrainSums]:
    """`_train_sums` for every instrument as a Ray Data task; symbol -> its sums, in symbol order."""
    rows = _instrument_items(files).map(_train_sums, fn_kwargs={"config": config, "center": center}).take_all()
    results = {str(row["symbol"]): pickle.loads(row["result"]) for row in sorted(rows, key=lambda row: row["symbol"])}
    for result in results.values():
        if isinstance(result, Exception):
            raise result
    return results


def _read(symbol: str, files: Any, config: DataConfig) -> pd.DataFrame:
    return read_instrument(str(symbol), [str(path) for path in files], min_rows=min_bars(config))


def _train_sums(row: dict[str, Any], config: DataConfig, center: np.ndarray | None) -> dict[str, Any]:
    """One instrument: its span, split ranges and the partial sums of its train feature rows (around `center`).

    A problem with the instrument's data comes back as the error itself, not raised: Ray Data would wrap it in
    its own exception and lose the message's type, and the driver re-raises it as the user's error.
    """
    symbol = str(row["symbol"])
    try:
        frame = _read(symbol, row["files"], config)
        arrays = instrument_arrays(symbol, frame, config)
    except ValueError as error:  # OHLCVError, or too few bars for the splits
        return {"symbol": symbol, "result": pickle.dumps(error)}
    rows = train_feature_rows(arrays.features, arrays.ranges["train"], config.window)  # (rows, F)
    sums = _TrainSums(BarSpan.of(frame.index), arrays.ranges, rows.shape[0], block_sums(rows, center=center))
    return {"symbol": symbol, "result": pickle.dumps(sums)}  # bytes: Arrow keeps them as they are


def _split_windows(
    batch: dict[str, np.ndarray], config: DataConfig, split: str, stats: FeatureStats, symbols: list[str],
    shuffle_seed: int | None, columns: list[str],
) -> Iterator[dict[str, np.ndarray]]:
    """One instrument (a batch of one row) -> its `split` windows in blocks of config.block_windows rows."""
    symbol = str(batch["symbol"][0])
    arrays = instrument_arrays(symbol, _read(symbol, batch["files"][0], config), config)
    features = stats.apply(arrays.features, out=arrays.features)  # (T, F) normalised in place
    ends = np.arange(*arrays.ranges[split], dtype=np.int64)  # end bars of this split's windows
    instrument = symbols.index(symbol)
    if shuffle_seed is not None:
        ends = np.random.default_rng([shuffle_seed, instrument]).permutation(ends)
    offsets = np.arange(-config.window + 1, 1)  # (W,)
    for start in range(0, ends.shape[0], config.block_windows):
        block = ends[start : start + config.block_windows]  # (b,)
        sample = {
            "window": features[block[:, None] + offsets],  # (b, W, F) float32, a copy
            "action": arrays.actions[block],
            "quantity": arrays.quantities[block],
            "instrument": np.full(block.shape[0], instrument, dtype=np.int64),
            "end": block,
        }
        yield {name: sample[name] for name in columns}
