"""data.loader: ray_data against the in-memory loader, on one partitioned-Parquet market (several part files
per instrument): the same samples per split to the bit, the same statistics and split ends, training that
lands within noise of the memory loader's, equal DDP shards, and bad files refused on the driver."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from hrm_platform import cli
from hrm_platform.checkpoint import load_manifest
from hrm_platform.config import PlatformConfig, load_config
from hrm_platform.data.dataset import SPLITS, build_datasets, load_bars
from hrm_platform.data.parquet import write_parquet_market
from hrm_platform.data.ray_data import plan_streamed_market, window_dataset
from hrm_platform.training.trainer import run_training

pytestmark = pytest.mark.ray

SMOKE_PRESET = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "smoke.yaml"
MARKET = ["data.n_instruments=3", "data.n_bars=1200"]


@pytest.fixture(scope="module")
def parquet_market(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The smoke market with 3 instruments, 500 rows per part file (3 parts each)."""
    bars, _ = load_bars(load_config(SMOKE_PRESET, MARKET).data)
    out = str(tmp_path_factory.mktemp("market") / "parquet")
    files = write_parquet_market(bars, out, rows_per_file=500)
    assert len(files) == 9
    return out


def _config(path: str, loader: str, *overrides: str) -> PlatformConfig:
    return load_config(SMOKE_PRESET, [*MARKET, "data.source=file", f"data.path={path}", f"data.loader={loader}",
                                      *overrides])


def _sample_set(windows: np.ndarray, actions: np.ndarray, quantities: np.ndarray) -> set[tuple[bytes, int, float]]:
    return {(window.tobytes(), int(action), float(quantity)) for window, action, quantity in
            zip(windows, actions, quantities)}


@pytest.mark.parametrize("split_overrides", [[], ["data.fold=1"]], ids=["val-test-fractions", "walk-forward-fold-1"])
def test_ray_data_yields_exactly_the_in_memory_samples_per_split(ray_cluster, parquet_market, split_overrides) -> None:
    config = _config(parquet_market, "ray_data", *split_overrides)
    bundle = build_datasets(config.data)  # the memory loader reads the same Parquet market
    market = plan_streamed_market(config.data)
    # Statistics fitted from per-instrument partial sums (one Ray Data task each) equal the in-memory fit's bits.
    assert np.array_equal(market.feature_spec.stats.mean, bundle.feature_spec.stats.mean)
    assert np.array_equal(market.feature_spec.stats.std, bundle.feature_spec.stats.std)
    # Same split ends per instrument (chronological, embargo apart), spans and bar frequency.
    assert market.description() == bundle.description()
    for split in SPLITS:
        rows = window_dataset(market, split, shuffle_seed=11).take_all()
        memory = bundle.split(split)
        windows, actions, quantities = memory.batch(np.arange(len(memory)))
        assert len(rows) == len(memory) == market.split_size(split) > 0
        streamed = _sample_set(np.stack([row["window"] for row in rows]), np.array([row["action"] for row in rows]),
                               np.array([row["quantity"] for row in rows]))
        assert streamed == _sample_set(windows.numpy(), actions.numpy(), quantities.numpy())  # tolerance 0


def test_shuffled_stream_is_a_permutation_within_each_instrument(ray_cluster, parquet_market) -> None:
    market = plan_streamed_market(_config(parquet_market, "ray_data").data)
    ordered = window_dataset(market, "train", with_positions=True).take_all()
    shuffled = window_dataset(market, "train", shuffle_seed=5, with_positions=True).take_all()
    positions = [(int(row["instrument"]), int(row["end"])) for row in ordered]
    assert positions == sorted(positions)  # without a seed: instrument by instrument, in time order
    shuffled_positions = [(int(row["instrument"]), int(row["end"])) for row in shuffled]
    assert sorted(shuffled_positions) == positions and shuffled_positions != positions


def test_one_worker_training_lands_within_noise_of_the_memory_loader(ray_cluster, parquet_market, tmp_path) -> None:
    """The best checkpoint's validation accuracy (what training keeps) after 3 epochs: the loaders differ only in
    the order of the windows, so the two must agree within 3 standard errors of a difference of accuracies."""
    summaries = {
        loader: run_training(
            _config(parquet_market, loader, "train.num_workers=1", "train.epochs=3", f"train.storage_path={tmp_path}",
                    f"train.name={loader}"),
            quiet=True,
        )
        for loader in ("memory", "ray_data")
    }
    memory, streamed = (summaries[loader].history for loader in ("memory", "ray_data"))
    assert [epoch["samples"] for epoch in streamed] == [epoch["samples"] for epoch in memory]  # same steps per epoch
    assert streamed[-1]["train_loss"] < streamed[0]["train_loss"]  # it learns
    n_val = len(build_datasets(_config(parquet_market, "memory").data).val)
    best = {loader: summary.metrics["val_accuracy"] for loader, summary in summaries.items()}
    noise = 3 * math.sqrt(2 * best["memory"] * (1 - best["memory"]) / n_val)
    assert abs(best["ray_data"] - best["memory"]) <= noise, (best, noise)
    manifests = {loader: load_manifest(summary.checkpoint_path) for loader, summary in summaries.items()}
    assert manifests["ray_data"]["feature_spec"] == manifests["memory"]["feature_spec"]
    assert manifests["ray_data"]["data"] == manifests["memory"]["data"]


def test_two_workers_stream_equal_shards_in_lockstep(ray_cluster, parquet_market, tmp_path) -> None:
    """Ray Train splits the stream into equal shards, each rank stops at the same batch (leaving the rest of
    its shard), and the next epoch starts a fresh pass: DDP's weights stay identical on both ranks."""
    config = _config(parquet_market, "ray_data", "train.num_workers=2", "train.epochs=2", "train.max_train_batches=4",
                     f"train.storage_path={tmp_path}")
    history = run_training(config, quiet=True).history
    assert [epoch["epoch"] for epoch in history] == [1, 2]
    for epoch in history:
        assert epoch["world_size"] == 2 and epoch["samples"] == 2 * 4 * config.train.batch_size
        assert epoch["param_fingerprints"][0] == epoch["param_fingerprints"][1]
        assert 0.0 <= epoch["val_accuracy"] <= 1.0 and epoch["private_memory_peak_mb"] > 0
    assert history[0]["param_fingerprints"][0] != history[1]["param_fingerprints"][0]


def test_a_bad_part_file_is_refused_with_its_file_and_row_before_training(ray_cluster, parquet_market, tmp_path,
                                                                          capsys) -> None:
    market = tmp_path / "bad"
    bars, _ = load_bars(load_config(SMOKE_PRESET, MARKET).data)
    write_parquet_market(bars, str(market), rows_per_file=500)
    part = sorted(market.glob("symbol=*/part-*.parquet"))[4]
    table = pq.read_table(part)
    pq.write_table(table.take([0, 2, 1, *range(3, table.num_rows)]), part)  # rows 2 and 3 swapped
    code = cli.main(["train", "--config", str(SMOKE_PRESET), *MARKET, "data.source=file", f"data.path={market}",
                     "data.loader=ray_data", f"train.storage_path={tmp_path / 'runs'}"])  # on the session cluster
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    assert f"{part}: row 3: unsorted" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "runs").exists()  # refused on the driver, before any worker trained


def test_walk_forward_checks_a_parquet_market_from_its_footers(parquet_market) -> None:
    """data.loader=ray_data: too many folds for the data fail before any training, from the row counts in the
    Parquet footers (the driver reads no bars), with the instrument named, as the memory loader's check does."""
    from hrm_platform.config import ConfigError
    from hrm_platform.data.parquet import instrument_row_counts, list_instrument_files
    from hrm_platform.evaluation.walk_forward import check_folds

    assert instrument_row_counts(list_instrument_files(parquet_market)) == {
        symbol: 1200 for symbol in list_instrument_files(parquet_market)
    }
    config = _config(parquet_market, "ray_data")
    check_folds(config, 3)
    with pytest.raises(ConfigError, match=r"walk-forward with 64 folds: instrument SYN00: .*fold"):
        check_folds(_config(parquet_market, "ray_data", "data.oos_fraction=0.95"), 64)
