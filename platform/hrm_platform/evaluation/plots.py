"""Evaluation plots as PNG files, drawn on bare `matplotlib.figure.Figure` objects.

No pyplot: nothing here touches matplotlib's global backend or needs a display, so it is safe in a Ray
worker, a test, or a headless server. Every function writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110
MODEL_COLOR = "#c0392b"
# Baselines get fixed, muted colours so that a strategy has the same colour in every figure.
STRATEGY_COLORS = {
    "model": MODEL_COLOR,
    "lightgbm": "#8e44ad",
    "mlp": "#d35400",
    "transformer": "#16a085",
    "oracle": "#2c3e50",
    "buy_and_hold": "#2980b9",
    "momentum": "#27ae60",
    "flat": "#7f8c8d",
}


# What the training loop records under these keys (training/epoch.py, training/fit.py): the two losses are
# not the same sum, so the legend says so rather than inviting a train-vs-val comparison of unlike quantities.
TRAINING_LABELS = {
    "train_loss": "train loss (action CE + quantity + ACT Q)",
    "val_loss": "val loss (action NLL only)",
}


def _label(name: str) -> str:
    return TRAINING_LABELS.get(name, name.replace("_", " "))


def _color(name: str, fallback_index: int) -> str:
    return STRATEGY_COLORS.get(name, f"C{fallback_index % 10}")


def _save(figure: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_equity_curves(
    equity: Mapping[str, np.ndarray], timestamps: Sequence | np.ndarray, path: Path, title: str,
    boundaries: Sequence = (),
) -> Path:
    """One line per strategy (equity (N,) from 1.0), the model drawn thick and on top; a dotted vertical line
    at each of `boundaries` (timestamps where a walk-forward fold starts)."""
    figure = Figure(figsize=(10, 5.2))
    axes = figure.add_subplot()
    x_values = _x_axis(timestamps, len(next(iter(equity.values()))))
    for index, (name, curve) in enumerate(equity.items()):
        is_model = name == "model"
        axes.plot(
            x_values,
            curve,
            label=f"{_label(name)} ({curve[-1] - 1:+.1%})",
            color=_color(name, index),
            linewidth=2.4 if is_model else 1.3,
            zorder=3 if is_model else 2,
            linestyle=":" if name == "flat" else "-",
        )
    axes.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
    for boundary in boundaries:
        axes.axvline(boundary, color="black", linewidth=0.8, linestyle=":", alpha=0.7)
    axes.set_title(title)
    axes.set_ylabel("equity (start = 1.0)")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=9, framealpha=0.9)
    figure.autofmt_xdate()
    return _save(figure, path)


def plot_drawdowns(
    drawdowns: Mapping[str, np.ndarray], timestamps: Sequence | np.ndarray, path: Path, title: str
) -> Path:
    """Drawdown below the running peak (drawdown (N,) as a positive fraction), drawn downwards in %."""
    figure = Figure(figsize=(10, 4.2))
    axes = figure.add_subplot()
    x_values = _x_axis(timestamps, len(next(iter(drawdowns.values()))))
    for index, (name, curve) in enumerate(drawdowns.items()):
        if name == "flat":
            continue  # always 0: it would only hide the axis
        is_model = name == "model"
        color = _color(name, index)
        axes.plot(
            x_values,
            -100 * curve,
            label=f"{_label(name)} (max {curve.max():.1%})",
            color=color,
            linewidth=2.0 if is_model else 1.1,
            zorder=3 if is_model else 2,
        )
        if is_model:
            axes.fill_between(x_values, -100 * curve, 0, color=color, alpha=0.15, zorder=1)
    axes.set_title(title)
    axes.set_ylabel("drawdown (%)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize=9, framealpha=0.9)
    figure.autofmt_xdate()
    return _save(figure, path)


def plot_training_curves(history: Sequence[Mapping[str, float]], path: Path, best_epoch: int | None = None) -> Path:
    """Per-epoch metrics of the whole run: losses, accuracies and mean ACT segments, one panel each.

    `history` is the manifest's list of per-epoch dicts (nested dicts are flattened to 'train_loss'); keys
    with 'loss', 'acc' or 'mean_segments' are drawn, per-segment lists and bookkeeping are left out. A dashed
    line marks `best_epoch` (the evaluated checkpoint). With no history the panels say so instead of failing.
    """
    figure = Figure(figsize=(13, 4.2))
    panels = dict(zip(("loss", "accuracy", "mean ACT segments"), figure.subplots(1, 3)))
    epochs = _epochs(history)
    for name, values in _numeric_series(history).items():
        panel = _training_panel(name)
        if panel is not None:
            panels[panel].plot(epochs, values, marker="o", label=_label(name))
    for title, axes in panels.items():
        if best_epoch is not None and history:
            axes.axvline(
                best_epoch, color="black", linestyle="--", linewidth=0.8, label=f"evaluated (epoch {best_epoch})"
            )
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if axes.get_lines():
            axes.legend(fontsize=9)
        else:
            axes.text(0.5, 0.5, f"no {title} recorded", ha="center", va="center", transform=axes.transAxes)
    figure.suptitle("training curves of the whole run (from its latest checkpoint's manifest)")
    figure.tight_layout()
    return _save(figure, path)


def _training_panel(metric_name: str) -> str | None:
    if "mean_segments" in metric_name:
        return "mean ACT segments"
    if "loss" in metric_name:
        return "loss"
    if "acc" in metric_name:
        return "accuracy"
    return None


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Counts with row-normalised shading (rows = true action, columns = predicted)."""
    matrix = np.asarray(matrix)
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(5.6, 4.8))
    axes = figure.add_subplot()
    image = axes.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        share = row_share[row, column]
        axes.text(column, row, f"{count}\n{share:.0%}", ha="center", va="center",
                  color="white" if share > 0.55 else "black", fontsize=11)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, labels=list(class_names))
    axes.set_yticks(ticks, labels=list(class_names))
    axes.set_xlabel("predicted action")
    axes.set_ylabel("true action (label)")
    axes.set_title("confusion matrix, test split")
    figure.colorbar(image, ax=axes, label="share of the true class")
    return _save(figure, path)


def plot_segments_histogram(counts: Mapping[str, int], path: Path) -> Path:
    """Bar chart of how many ACT segments inference used per window (`counts`: '1'..'M' -> windows)."""
    segments = [int(key) for key in counts]
    values = [counts[key] for key in counts]
    total = max(sum(values), 1)
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    bars = axes.bar(segments, values, color="#8e44ad", width=0.7)
    for bar, value in zip(bars, values):
        axes.annotate(f"{value / total:.0%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=10)
    axes.set_xticks(segments)
    axes.set_xlabel("segments used (ACT halting)")
    axes.set_ylabel("windows")
    axes.set_title(f"ACT segments per decision (mean {np.dot(segments, values) / total:.2f})")
    axes.grid(axis="y", alpha=0.3)
    axes.margins(y=0.12)
    return _save(figure, path)


def _x_axis(timestamps: Sequence | np.ndarray | None, length: int) -> np.ndarray:
    """Timestamps for the x axis when they match the curves, else the bar number."""
    if timestamps is not None and len(timestamps) == length:
        return np.asarray(timestamps)
    return np.arange(length)


def _numeric_series(history: Sequence[Mapping]) -> dict[str, list[float]]:
    """Numeric keys of the epoch records (nested dicts flattened to 'train_loss') -> values, NaN where missing."""
    flat_records = [_flatten(record) for record in history]
    keys: list[str] = []
    for record in flat_records:
        keys.extend(key for key in record if key not in keys and key != "epoch")
    return {key: [record.get(key, np.nan) for record in flat_records] for key in keys}


def _flatten(record: Mapping, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def _epochs(history: Sequence[Mapping[str, float]]) -> list[float]:
    return [float(record.get("epoch", index + 1)) for index, record in enumerate(history)]


def plot_instrument_equity(
    equity: Mapping[str, Mapping[str, np.ndarray]], timestamps: Mapping[str, Sequence], path: Path
) -> Path:
    """Small multiples: one panel per instrument with its strategies' equity curves (symbol -> name -> (N,))."""
    symbols = list(equity)
    columns = min(2, len(symbols))
    rows = -(-len(symbols) // columns)
    figure = Figure(figsize=(6.0 * columns, 3.3 * rows))
    grid = figure.subplots(rows, columns, squeeze=False)
    for panel, symbol in zip(grid.flat, symbols):
        for index, (name, curve) in enumerate(equity[symbol].items()):
            panel.plot(_x_axis(timestamps.get(symbol), len(curve)), curve, label=_label(name),
                       color=_color(name, index), linewidth=1.8 if name == "model" else 1.0,
                       zorder=3 if name == "model" else 2)
        panel.axhline(1.0, color="black", linewidth=0.6, alpha=0.5)
        panel.set_title(symbol, fontsize=10)
        panel.grid(alpha=0.3)
        panel.tick_params(axis="x", labelrotation=25, labelsize=8)
    for panel in list(grid.flat)[len(symbols):]:
        panel.set_visible(False)
    grid.flat[0].legend(fontsize=8, loc="upper left")
    figure.suptitle("equity per instrument, test split")
    figure.tight_layout()
    return _save(figure, path)


def plot_fold_sharpe(
    sharpe: Mapping[str, Sequence[tuple[float, float, float]]], path: Path, confidence: float
) -> Path:
    """Grouped bars: per walk-forward fold, each strategy's Sharpe with its interval as an error bar.

    sharpe: strategy -> per fold (estimate, low, high).
    """
    names = list(sharpe)
    n_folds = len(next(iter(sharpe.values())))
    width = 0.8 / max(len(names), 1)
    figure = Figure(figsize=(max(6.0, 1.6 * n_folds + 3), 4.6))
    axes = figure.add_subplot()
    for index, name in enumerate(names):
        values = np.asarray(sharpe[name], dtype=np.float64)  # (folds, 3)
        positions = np.arange(n_folds) - 0.4 + width * (index + 0.5)
        errors = np.abs(np.stack([values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]]))
        axes.bar(positions, values[:, 0], width, yerr=errors, capsize=2, label=_label(name),
                 color=_color(name, index), alpha=1.0 if name == "model" else 0.75)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_xticks(np.arange(n_folds), [f"fold {fold}" for fold in range(n_folds)])
    axes.set_ylabel(f"annualised Sharpe (error bars: {confidence:.0%} interval)")
    axes.set_title("Sharpe ratio by out-of-sample fold")
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8, ncol=min(4, len(names)), loc="upper left")
    return _save(figure, path)
