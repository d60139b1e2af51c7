"""Turn a `BacktestResult` into out_dir/metrics.json, the PNGs and report.md (which links the PNGs)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hrm_platform.actions import ACTIONS
from hrm_platform.evaluation import metrics, plots
from hrm_platform.evaluation.backtest import BacktestResult
from hrm_platform.evaluation.summary import STRATEGY_ORDER, backtest_statistics, ordered
from hrm_platform.evaluation.tables import act_markdown, strategy_lines, strategy_table_markdown, uncertainty_paragraph
from hrm_platform.evaluation.uncertainty import BootstrapSettings

if TYPE_CHECKING:
    from hrm_platform.checkpoint import LoadedCheckpoint
    from hrm_platform.config import PlatformConfig

PLOT_FILES = {
    "equity": "equity.png",
    "drawdown": "drawdown.png",
    "equity_by_instrument": "equity_by_instrument.png",
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "segments": "segments.png",
}


@dataclass
class WrittenReport:
    """What a report writer leaves in `out_dir`: metrics.json (also as `metrics`), report.md and the PNGs."""

    out_dir: Path
    metrics: dict[str, Any]
    report_path: Path
    metrics_path: Path
    plot_paths: dict[str, Path]

    @classmethod
    def write(
        cls, out_dir: Path, summary: dict[str, Any], plot_paths: dict[str, Path], render: Callable[[dict], str]
    ):
        """Record the plots in `summary`, write it as metrics.json and `render(summary)` as report.md."""
        summary["plots"] = {name: path.name for name, path in plot_paths.items()}
        metrics_path = out_dir / "metrics.json"
        metrics_path.write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n")
        report_path = out_dir / "report.md"
        report_path.write_text(render(summary))
        return cls(out_dir, summary, report_path, metrics_path, plot_paths)


class EvaluationReport(WrittenReport):
    """One checkpoint's backtest on its test split."""

    def summary(self) -> str:
        """A few lines for the terminal: the strategy table and the share of the oracle's PnL captured."""
        data = self.metrics["data"]
        lines = [f"backtest on one test split ({data['test_start']} .. {data['test_end']}, "
                 f"{self.metrics['costs']['cost_bps']} bps per unit turnover; {data['frequency_text']})"]
        lines += strategy_lines(self.metrics["portfolio"], self.metrics["information_coefficient"],
                                self.metrics["bootstrap"]["confidence"])
        lines.append(f"  test accuracy {self.metrics['classification']['accuracy']:.3f}, "
                     f"mean ACT segments {self.metrics['segments']['mean']:.2f}")
        if self.metrics.get("act"):
            lines.append(f"  ACT: {self.metrics['act']['verdict']}")
        captured = self.metrics.get("oracle_pnl_captured")
        if captured is not None:
            per_exposure = self.metrics.get("oracle_pnl_captured_per_exposure")
            scaled = "" if per_exposure is None else f" ({per_exposure:.1%} per unit of mean exposure)"
            lines.append(f"  oracle PnL captured: {captured:.1%}{scaled}")
        lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)


def write_report(
    result: BacktestResult, loaded: LoadedCheckpoint, config: PlatformConfig, out_dir: Path
) -> EvaluationReport:
    """`config`: what the evaluation ran with (the checkpoint's, with any evaluation overrides)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = collect_metrics(result, loaded, config)
    history = run_history(loaded.directory, loaded.manifest)
    summary["training"] = {"epochs_in_run": len(history), "evaluated_epoch": loaded.epoch}
    plot_paths = draw_plots(result, summary, history, out_dir, best_epoch=loaded.epoch)
    return EvaluationReport.write(out_dir, summary, plot_paths, render_markdown)


# --- metrics.json ---------------------------------------------------------------------------------------------


def collect_metrics(result: BacktestResult, loaded: LoadedCheckpoint, config: PlatformConfig) -> dict[str, Any]:
    periods = result.periods_per_year
    statistics = backtest_statistics(result, BootstrapSettings.from_config(config.eval))
    portfolio = statistics["portfolio"]
    decisions = list(result.decisions.values())
    predicted = np.concatenate([d.actions for d in decisions])
    true = np.concatenate(list(result.true_actions.values()))
    positions = np.concatenate([d.positions for d in decisions])
    data_config = config.data
    return {
        "checkpoint": str(loaded.directory),
        "model_version": loaded.model_version,
        "epoch": loaded.epoch,
        "data": {
            "source": data_config.source,
            "path": None if data_config.path is None else str(data_config.path),
            "symbols": [item.symbol for item in result.instruments],
            "test_start": str(result.portfolio.timestamps[0]),
            "test_end": str(result.portfolio.timestamps[-1]),
            "test_bars": int(len(result.portfolio.timestamps)),
            "decisions": int(len(predicted)),
            "bars_per_year": periods,
            "frequency": result.frequency.to_dict() if result.frequency else None,
            "frequency_text": result.frequency.describe() if result.frequency else f"{periods:,.0f} bars per year",
            "split": "walk-forward fold" if data_config.fold is not None else "val/test fractions",
            "window": data_config.window,
            "horizon": data_config.horizon,
        },
        "costs": {
            "cost_bps": config.eval.cost_bps,
            "momentum_lookback": config.eval.momentum_lookback,
            "holding": "decide at every bar from the window ending there, hold one bar (close to close)",
        },
        "classification": metrics.classification_metrics(true, predicted, ACTIONS),
        "segments": metrics.segments_distribution(
            np.concatenate([d.segments_used for d in decisions]), config.model.max_segments
        ),
        "positions": {
            "long_share": float(np.mean(positions > 0)),
            "short_share": float(np.mean(positions < 0)),
            "flat_share": float(np.mean(positions == 0)),
            "mean_abs_position": float(np.mean(np.abs(positions))),
        },
        "portfolio": portfolio,
        "bootstrap": statistics["bootstrap"],
        "information_coefficient": statistics["information_coefficient"],
        "accuracy_by_model": statistics["accuracy"],
        "act": statistics["act"],
        "baselines": {"trained": list(config.eval.baselines), "settings": config.baselines.model_dump(mode="json")},
        "instruments": {item.symbol: ordered(item.strategy_metrics(periods)) for item in result.instruments},
        "oracle_pnl_captured": _oracle_capture(portfolio),
        "oracle_pnl_captured_per_exposure": _oracle_capture(portfolio, per_exposure=True),
        "model_beats": {
            baseline: bool(portfolio["model"]["sharpe"] > portfolio[baseline]["sharpe"])
            for baseline in ("buy_and_hold", "momentum")
        },
    }


def _oracle_capture(portfolio: dict[str, dict], per_exposure: bool = False) -> float | None:
    """Model PnL / oracle PnL (sums of net per-bar returns); None without an oracle or when it made nothing.

    per_exposure: each PnL divided by its mean |position| first, i.e. the capture the model would have at the
    oracle's average size: it separates "right direction" from "small positions".
    """
    oracle, model = portfolio.get("oracle"), portfolio["model"]
    if oracle is None or oracle["pnl"] <= 0:
        return None
    if not per_exposure:
        return model["pnl"] / oracle["pnl"]
    if model["exposure"] == 0 or oracle["exposure"] == 0:
        return None
    return (model["pnl"] / model["exposure"]) / (oracle["pnl"] / oracle["exposure"])


def run_history(checkpoint: Path, manifest: dict[str, Any]) -> list[dict]:
    """The whole run's per-epoch history: the latest checkpoint of the run the evaluated one belongs to holds
    every epoch, the evaluated (best) one only those up to itself. Falls back to the checkpoint's own history
    when the run directory is gone or holds another run."""
    from hrm_platform.checkpoint import CheckpointError, load_manifest
    from hrm_platform.training.run_dir import latest_checkpoint_of_run

    own = _history(manifest)
    latest = latest_checkpoint_of_run(str(Path(checkpoint).parent.parent), Path(checkpoint).parent.name)
    if latest is None or latest == Path(checkpoint):
        return own
    try:
        later = _history(load_manifest(latest))
    except CheckpointError:
        return own
    same_run = len(later) >= len(own) and later[: len(own)] == own
    return later if same_run else own


def _history(manifest: dict[str, Any]) -> list[dict]:
    recorded = manifest.get("metrics", {})
    history = recorded.get("history") if isinstance(recorded, dict) else None
    return [record for record in history or [] if isinstance(record, dict)]


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- plots ----------------------------------------------------------------------------------------------------


def draw_plots(
    result: BacktestResult, summary: dict[str, Any], history: list[dict], out_dir: Path, best_epoch: int | None = None
) -> dict[str, Path]:
    portfolio = result.portfolio
    order = [name for name in STRATEGY_ORDER if name in portfolio.runs]
    title = f"equal-weight portfolio of {len(result.instruments)} instruments, test split"
    paths = {
        "equity": plots.plot_equity_curves(
            {name: metrics.equity_curve(portfolio.runs[name].returns) for name in order},
            portfolio.timestamps, out_dir / PLOT_FILES["equity"], f"equity: {title}",
        ),
        "drawdown": plots.plot_drawdowns(
            {name: metrics.drawdown_curve(portfolio.runs[name].returns) for name in order},
            portfolio.timestamps, out_dir / PLOT_FILES["drawdown"], f"drawdown: {title}",
        ),
        "equity_by_instrument": plots.plot_instrument_equity(
            {item.symbol: {name: metrics.equity_curve(item.runs[name].returns)
                           for name in order if name != "flat"} for item in result.instruments},
            {item.symbol: item.timestamps for item in result.instruments},
            out_dir / PLOT_FILES["equity_by_instrument"],
        ),
        "training_curves": plots.plot_training_curves(history, out_dir / PLOT_FILES["training_curves"], best_epoch),
        "confusion_matrix": plots.plot_confusion_matrix(
            np.array(summary["classification"]["confusion_matrix"]), ACTIONS,
            out_dir / PLOT_FILES["confusion_matrix"],
        ),
        "segments": plots.plot_segments_histogram(summary["segments"]["counts"], out_dir / PLOT_FILES["segments"]),
    }
    return paths


# --- report.md ------------------------------------------------------------------------------------------------


def render_markdown(summary: dict[str, Any]) -> str:
    data, costs = summary["data"], summary["costs"]
    files = summary["plots"]
    source = "synthetic market" if data["source"] == "synthetic" else f"`{data['path']}`"
    lines = [
        "# Backtest report",
        "",
        f"Checkpoint `{summary['checkpoint']}` (model version `{summary['model_version']}`, epoch "
        f"{summary['epoch']}), test split of the {source}: {len(data['symbols'])} instruments, "
        f"{data['test_start']} to {data['test_end']}, {data['decisions']} decisions.",
        "",
        f"Positions: {costs['holding']}; model position = direction of the argmax action (buy +1, sell -1, "
        f"hold 0) times the predicted quantity. Costs {costs['cost_bps']} bps per unit of turnover. Sharpe and "
        f"Sortino annualised with {data['frequency_text']}. Labels look {data['horizon']} bars ahead.",
        "",
        f"**This is one test split** of {data['test_bars']} bars per instrument "
        f"({data['test_bars'] / data['bars_per_year']:.2f} years at that rate): annualised returns extrapolate it "
        "by compounding and can look extreme, and its Sharpe ratios carry wide intervals. `hrm evaluate "
        "--walk-forward K` backtests K out-of-sample periods, each with a model trained on the history before it.",
        "",
        "## Model against baselines (equal-weight portfolio)",
        "",
        strategy_table_markdown(summary["portfolio"], summary["information_coefficient"],
                                summary["bootstrap"]["confidence"]),
        "",
        uncertainty_paragraph(summary["portfolio"], summary["information_coefficient"], summary["bootstrap"]),
        "",
        _oracle_line(summary),
        "",
        f"![equity curves]({files['equity']})",
        "",
        f"![drawdown]({files['drawdown']})",
        "",
        "## Per instrument (Sharpe)",
        "",
        _instrument_table(summary["instruments"]),
        "",
        f"![equity by instrument]({files['equity_by_instrument']})",
        "",
        "## Decisions",
        "",
        _classification_text(summary),
        "",
        f"![confusion matrix]({files['confusion_matrix']})",
        "",
        f"ACT used {summary['segments']['mean']:.2f} segments on average (of at most "
        f"{summary['segments']['max_segments']}).",
        "",
        act_markdown(summary.get("act")),
        "",
        f"![ACT segments]({files['segments']})",
        "",
        "## Training",
        "",
        f"![training curves]({files['training_curves']})",
        "",
    ]
    return "\n".join(lines)


def _instrument_table(instruments: dict[str, dict[str, dict]]) -> str:
    names = list(next(iter(instruments.values())))
    header = "| instrument | " + " | ".join(name.replace("_", " ") for name in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    rows = [f"| {symbol} | " + " | ".join(f"{by_name[name]['sharpe']:.2f}" for name in names) + " |"
            for symbol, by_name in instruments.items()]
    return "\n".join([header, rule, *rows])


def _oracle_line(summary: dict[str, Any]) -> str:
    portfolio = summary["portfolio"]
    beats = summary["model_beats"]
    verdict = (f"The model's Sharpe {portfolio['model']['sharpe']:.2f} "
               f"{'beats' if beats['buy_and_hold'] else 'does not beat'} buy and hold "
               f"({portfolio['buy_and_hold']['sharpe']:.2f}) and "
               f"{'beats' if beats['momentum'] else 'does not beat'} the momentum rule "
               f"({portfolio['momentum']['sharpe']:.2f}).")
    captured = summary.get("oracle_pnl_captured")
    if "oracle" not in portfolio:
        return verdict + " No oracle on real data."
    if captured is None:
        return verdict + " The oracle made no net PnL here, so no capture ratio."
    per_exposure = summary.get("oracle_pnl_captured_per_exposure")
    scaled = "" if per_exposure is None else (
        f" Per unit of mean exposure (model {portfolio['model']['exposure']:.2f}, oracle "
        f"{portfolio['oracle']['exposure']:.2f}) the model captures {per_exposure:.1%}.")
    return (verdict + f" **Oracle PnL captured: {captured:.1%}** (model PnL {portfolio['model']['pnl']:+.4f} / "
            f"oracle PnL {portfolio['oracle']['pnl']:+.4f}, sums of net per-bar returns)." + scaled)


def _classification_text(summary: dict[str, Any]) -> str:
    result = summary["classification"]
    positions = summary["positions"]
    per_class = ", ".join(
        f"{name}: precision {result['precision'][name]:.2f} / recall {result['recall'][name]:.2f} "
        f"(support {result['support'][name]})"
        for name in result["class_names"]
    )
    return (f"Accuracy {result['accuracy']:.3f} on the test labels; {per_class}. The model was long "
            f"{positions['long_share']:.0%}, short {positions['short_share']:.0%} and flat "
            f"{positions['flat_share']:.0%} of the time, mean |position| {positions['mean_abs_position']:.2f}.")
