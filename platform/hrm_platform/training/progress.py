"""The one line per epoch that both training paths print."""

from __future__ import annotations

import math
from typing import Any


def format_progress(metrics: dict[str, Any], total_epochs: int, seconds_per_epoch: float) -> str:
    """One line per epoch: epoch, loss, accuracy (train and validation), ACT segments, throughput, ETA."""
    remaining_s = max(0.0, (total_epochs - metrics["epoch"]) * seconds_per_epoch)
    validation = metrics.get("val_accuracy")
    parts = [
        f"epoch {metrics['epoch']}/{total_epochs}",
        f"loss {metrics['train_loss']:.4f}",
        f"acc {metrics['train_accuracy']:.3f}",
        f"val_acc {validation:.3f}" if validation is not None and math.isfinite(validation) else "val_acc -",
        f"segments {metrics['train_mean_segments']:.2f}",
        f"{metrics['samples_per_s']:.0f} samples/s",
        _compute_rate(metrics),
        f"ETA {int(remaining_s // 60)}:{int(remaining_s % 60):02d}",
    ]
    return "  ".join(part for part in parts if part)


def _compute_rate(metrics: dict[str, Any]) -> str:
    """'2.31 TFLOP/s' (model FLOPs), with the MFU on a GPU of known peak."""
    achieved = metrics.get("achieved_tflops")
    if achieved is None:
        return ""
    mfu = metrics.get("mfu")
    return f"{achieved:.2f} TFLOP/s" + (f" (MFU {mfu:.1%})" if mfu is not None else "")
