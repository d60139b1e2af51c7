"""One held-out split, evaluated: the checkpoint's model beside trained baselines fitted on the same split.

The trained baselines (`eval.baselines`) are fitted here on the split's train and val windows and labels (the
features normalised with the checkpoint's statistics, as the model sees them), then every trained model and
every rule baseline is backtested on the test bars with the same costs (`backtest.run_backtest`).

    model, loaded = load_model(checkpoint)
    result = evaluate_split(model, loaded, config)        # BacktestResult
    report = evaluate_checkpoint(checkpoint, out_dir)     # the same, from a path, written out (`hrm evaluate`)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hrm_platform.evaluation.backtest import BacktestResult, Prediction, WindowPredictor, hrm_predictor, run_backtest

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hrm_platform.baselines.base import BaselineModel
    from hrm_platform.checkpoint import LoadedCheckpoint
    from hrm_platform.config import PlatformConfig
    from hrm_platform.data.dataset import DatasetBundle
    from hrm_platform.evaluation.report import EvaluationReport


def evaluate_split(model: torch.nn.Module, loaded: LoadedCheckpoint, config: PlatformConfig) -> BacktestResult:
    """Backtest the checkpoint's `model` and freshly fitted baselines on the test split of `config.data`.

    `config`: the checkpoint's config with any evaluation overrides. The data is built with the checkpoint's
    feature statistics (exactly as serving normalises), so baselines and model read the same windows.
    """
    from hrm_platform.data.dataset import build_datasets

    bundle = build_datasets(config.data, feature_stats=loaded.feature_spec.stats)
    predictors = model_predictors(model, config)
    predictors.update(fit_baselines(bundle, config))
    return run_backtest(
        predictors, bundle, loaded.feature_spec,
        cost_bps=config.eval.cost_bps, momentum_lookback=config.eval.momentum_lookback,
    )


def model_predictors(model: torch.nn.Module, config: PlatformConfig) -> dict[str, WindowPredictor]:
    """The model as served (ACT halting, its probabilities after every segment recorded) and, with
    `eval.act_comparison`, the same weights stopped after one segment and run to all M segments."""
    limit = config.model.max_segments
    predictors = {"model": hrm_predictor(model, limit, per_segment=config.eval.act_comparison)}
    if config.eval.act_comparison:
        predictors["model_1_segment"] = hrm_predictor(model, 1)
        predictors["model_all_segments"] = hrm_predictor(model, limit, use_halting=False)
    return predictors


def fit_baselines(bundle: DatasetBundle, config: PlatformConfig) -> dict[str, WindowPredictor]:
    """name -> predictor of every `eval.baselines` model, fitted on the bundle's train (and val) split."""
    from hrm_platform.baselines.base import fit_baseline

    fitted = {
        name: fit_baseline(name, bundle.train, bundle.val, config.model, config.baselines, config.eval.baseline_seed)
        for name in config.eval.baselines
    }
    return {name: baseline_predictor(model) for name, model in fitted.items()}


def baseline_predictor(model: BaselineModel) -> WindowPredictor:
    def predict_windows(windows: np.ndarray) -> Prediction:
        outputs = model.predict(windows)
        return Prediction(outputs.probabilities, outputs.quantity)

    return predict_windows


EVALUATION_OVERRIDE_SECTIONS = ("eval", "data", "baselines")  # the model and its training are the checkpoint's


def evaluate_checkpoint(
    checkpoint: Path, out_dir: Path, data_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> EvaluationReport:
    """Backtest `checkpoint` and the baselines on the test split; write out_dir/metrics.json, the PNGs, report.md.

    Data: the checkpoint's own data config (the same synthetic market: same seed, sizes and split) or, with
    `data_path`, that OHLCV file split the same way. Features are normalised with the checkpoint's stored
    statistics either way, exactly as serving does. `overrides` (`eval.cost_bps=5`, `data.bars_per_year=252`)
    change the checkpoint's eval, data and baselines sections for this evaluation; other sections are refused.
    """
    from hrm_platform.checkpoint import load_model
    from hrm_platform.config import with_overrides
    from hrm_platform.evaluation.report import write_report

    model, loaded = load_model(checkpoint)
    if data_path is not None:  # source and path change together
        overrides = [*overrides, "data.source=file", f"data.path={data_path}"]
    config = with_overrides(
        loaded.config,
        list(overrides),
        f"{checkpoint} config with overrides",
        EVALUATION_OVERRIDE_SECTIONS,
        "evaluation",
    )
    result = evaluate_split(model, loaded, config)
    return write_report(result, loaded, config, Path(out_dir))
