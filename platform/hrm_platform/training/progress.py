"""The one line per epoch that both training paths print, and how a Ray worker's line reaches the driver.

A Ray Train worker's stdout reaches the driver only if the driver forwards every worker's log, and with it
Ray's own chatter (placement-group cleaners, report dumps, core-worker warnings). So rank 0 puts its lines on
a Ray queue instead, and a thread in the driver prints them: `hrm train` shows our lines only, and
`--verbose` turns Ray's log forwarding back on.

    with relayed_progress(print) as queue:            # driver
        ... train_loop_config = {..., "progress_queue": queue}
    queue.put(line)                                   # rank 0, in the worker
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def format_slow_start(seconds_per_step: float, steps: int) -> str:
    """The warning after a slow first step: how long the first epoch will take and what to do about it."""
    minutes = seconds_per_step * steps / 60
    return (f"warning: the first step took {seconds_per_step:.1f} s, so an epoch of {steps} steps takes about "
            f"{minutes:.0f} min; a smaller model trains faster (e.g. --config jobs/configs/demo.yaml, or "
            "model.d_model=64), and train.max_train_batches=N caps the batches per epoch")


def _compute_rate(metrics: dict[str, Any]) -> str:
    """'2.31 TFLOP/s' (model FLOPs), with the MFU on a GPU of known peak."""
    achieved = metrics.get("achieved_tflops")
    if achieved is None:
        return ""
    mfu = metrics.get("mfu")
    return f"{achieved:.2f} TFLOP/s" + (f" (MFU {mfu:.1%})" if mfu is not None else "")


_POLL_S = 0.25  # how often the printing thread checks for the end of training between lines


@contextmanager
def relayed_progress(print_line: Callable[[str], None]) -> Iterator[Any]:
    """A Ray queue for progress lines (a zero-CPU actor, so it never takes a training worker's slot) and a
    driver thread that prints each line as it arrives; everything queued is printed before this returns."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()

    def printer() -> None:
        while not (done.is_set() and queue.empty()):
            try:
                print_line(queue.get(timeout=_POLL_S))
            except Empty:
                continue

    thread = threading.Thread(target=printer, name="progress-relay", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join(timeout=10)
        queue.shutdown()
