"""A walk-forward evaluation written out: out_dir/metrics.json, the PNGs and report.md.

The pooled record (the K test periods concatenated, `summary.pool_results`) comes first: its Sharpe ratios,
their intervals and the model's paired Sharpe lead over every baseline, the ICs. Then every fold on its own,
with the checkpoint that made its decisions and the last bar its training saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hrm_platform.config import PlatformConfig
from hrm_platform.evaluation import metrics, plots
from hrm_platform.evaluation.report import WrittenReport
from hrm_platform.evaluation.summary import STRATEGY_ORDER, backtest_statistics, pool_results
from hrm_platform.evaluation.tables import act_markdown, strategy_lines, strategy_table_markdown, uncertainty_paragraph
from hrm_platform.evaluation.uncertainty import BootstrapSettings
from hrm_platform.evaluation.walk_forward import FoldRun

PLOT_FILES = {"equity": "equity_pooled.png", "fold_sharpe": "sharpe_by_fold.png"}


class WalkForwardReport(WrittenReport):
    """K out-of-sample folds and their pooled record."""

    def summary(self) -> str:
        """The pooled table for the terminal, and where the report is."""
        pooled, data = self.metrics["pooled"], self.metrics["data"]
        lines = [
            f"walk-forward: {data['folds']} folds, pooled out-of-sample {pooled['test_start']} .. {pooled['test_end']} "
            f"({pooled['bars']} bars; {data['frequency_text']}; {self.metrics['costs']['cost_bps']} bps per unit "
            "turnover)",
            *strategy_lines(pooled["portfolio"], pooled["information_coefficient"], pooled["bootstrap"]["confidence"]),
            *([f"  ACT: {pooled['act']['verdict']}"] if pooled.get("act") else []),
            f"  report: {self.report_path}",
        ]
        return "\n".join(lines)


def write_walk_forward_report(runs: list[FoldRun], config: PlatformConfig, out_dir: Path) -> WalkForwardReport:
    """`config`: the walk-forward's own (before the per-fold data.fold and train.name)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = BootstrapSettings.from_config(config.eval)
    pooled = pool_results([run.result for run in runs])
    summary = {
        "kind": "walk_forward",
        "data": _data_section(runs, config),
        "costs": {"cost_bps": config.eval.cost_bps, "momentum_lookback": config.eval.momentum_lookback},
        "baselines": {"trained": list(config.eval.baselines), "settings": config.baselines.model_dump(mode="json")},
        "pooled": {**_period(pooled), **backtest_statistics(pooled, settings)},
        "folds": [_fold_section(run, settings) for run in runs],
    }
    return WalkForwardReport.write(out_dir, summary, _draw(pooled, runs, summary, out_dir), render_markdown)


def _data_section(runs: list[FoldRun], config: PlatformConfig) -> dict[str, Any]:
    frequency = runs[0].result.frequency
    data = config.data
    return {
        "source": data.source,
        "path": None if data.path is None else str(data.path),
        "symbols": list(runs[0].result.decisions),
        "folds": len(runs),
        "oos_fraction": data.oos_fraction,
        "window": data.window,
        "horizon": data.horizon,
        "embargo": data.embargo_bars,
        "bars_per_year": runs[0].result.periods_per_year,
        "frequency": None if frequency is None else frequency.to_dict(),
        "frequency_text": (
            frequency.describe() if frequency else f"{runs[0].result.periods_per_year:,.0f} bars per year"
        ),
    }


def _period(result) -> dict[str, Any]:
    timestamps = result.portfolio.timestamps
    return {"test_start": str(timestamps[0]), "test_end": str(timestamps[-1]), "bars": int(len(timestamps))}


def _fold_section(run: FoldRun, settings: BootstrapSettings) -> dict[str, Any]:
    result = run.result
    return {
        "fold": run.fold,
        "checkpoint": run.checkpoint,
        "trained_now": run.trained,
        "validation_accuracy": run.validation_accuracy,
        "train_started": run.train_started,
        "train_finished": run.train_finished,
        "train_last_bar": result.train_last_bar,
        "test_first_bar": result.test_first_bar,
        **_period(result),
        **backtest_statistics(result, settings),
    }


def _draw(pooled, runs: list[FoldRun], summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    portfolio = pooled.portfolio
    order = [name for name in STRATEGY_ORDER if name in portfolio.runs and name != "flat"]
    boundaries = [run.result.portfolio.timestamps[0] for run in runs[1:]]
    equity = plots.plot_equity_curves(
        {name: metrics.equity_curve(portfolio.runs[name].returns) for name in order},
        portfolio.timestamps, out_dir / PLOT_FILES["equity"],
        f"walk-forward: {len(runs)} out-of-sample folds pooled (dotted lines: fold starts)",
        boundaries=boundaries,
    )
    fold_sharpe = plots.plot_fold_sharpe(
        {name: [(fold["portfolio"][name]["sharpe"], *fold["portfolio"][name]["sharpe_ci"]) for fold in summary["folds"]]
         for name in order},
        out_dir / PLOT_FILES["fold_sharpe"], summary["pooled"]["bootstrap"]["confidence"],
    )
    return {"equity": equity, "fold_sharpe": fold_sharpe}


def render_markdown(summary: dict[str, Any]) -> str:
    data, pooled, files = summary["data"], summary["pooled"], summary["plots"]
    source = "synthetic market" if data["source"] == "synthetic" else f"`{data['path']}`"
    lines = [
        "# Walk-forward report",
        "",
        f"{data['folds']} consecutive out-of-sample test folds over the last {data['oos_fraction']:.0%} of the "
        f"{source} ({len(data['symbols'])} instruments). Each fold's model and trained baselines were fitted on "
        f"the bars before it only (expanding window; {data['embargo']} bars of embargo after the last label), then "
        f"backtested on the fold with {summary['costs']['cost_bps']} bps per unit of turnover. Annualised with "
        f"{data['frequency_text']}.",
        "",
        f"## Pooled out-of-sample: {pooled['test_start']} to {pooled['test_end']} ({pooled['bars']} bars)",
        "",
        strategy_table_markdown(pooled["portfolio"], pooled["information_coefficient"],
                                pooled["bootstrap"]["confidence"]),
        "",
        uncertainty_paragraph(pooled["portfolio"], pooled["information_coefficient"], pooled["bootstrap"]),
        "",
        "Test accuracy: " + ", ".join(f"{name} {value:.3f}" for name, value in pooled["accuracy"].items()) + ".",
        "",
        "### What the model's ACT segments earn (pooled)",
        "",
        act_markdown(pooled.get("act")),
        "",
        f"![pooled equity]({files['equity']})",
        "",
        f"![Sharpe by fold]({files['fold_sharpe']})",
        "",
        "## Folds",
        "",
    ]
    for fold in summary["folds"]:
        lines += [
            f"### Fold {fold['fold']}: {fold['test_start']} to {fold['test_end']} ({fold['bars']} bars)",
            "",
            f"Checkpoint `{fold['checkpoint']}` ({'trained in this run' if fold['trained_now'] else 'reused'}; "
            f"validation accuracy {_number(fold['validation_accuracy'])}).",
            "",
            strategy_table_markdown(fold["portfolio"], fold["information_coefficient"],
                                    fold["bootstrap"]["confidence"]),
            "",
        ]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
