"""What `hrm export` found per variant (`VariantFigures`) and for the checkpoint (`ExportReport`), and the
table `hrm export` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from hrm_platform.config import ExportConfig


@dataclass
class VariantFigures:
    name: str
    description: str
    status: str = "pending"  # chosen | passed | failed | not servable | unavailable
    reason: str = ""
    build_s: float | None = None
    latency_batch1_ms: float | None = None
    latency_batch32_ms: float | None = None
    speedup_batch1: float | None = None
    speedup_batch32: float | None = None
    segment_ms: float | None = None
    fixed_ms: float | None = None
    agreement: float | None = None
    max_probability_diff: float | None = None
    max_probability_diff_served: float | None = None
    segments_agreement: float | None = None
    ready_s: float | None = None
    artefacts: dict[str, str] = field(default_factory=dict)

    @property
    def passed_checks(self) -> bool:
        return self.status in ("passed", "chosen", "not servable")


@dataclass
class ExportReport:
    checkpoint: Path
    model_version: str
    chosen: str | None
    variants: list[VariantFigures]
    eval_windows: int
    torch_threads: int
    settings: ExportConfig
    manifest_path: Path

    def figures(self, name: str) -> VariantFigures:
        return next(figures for figures in self.variants if figures.name == name)

    @property
    def chosen_variant(self) -> str:
        """What replicas serve: the chosen variant, or eager when none passed."""
        return self.chosen or "eager"

    @property
    def speedup_batch1(self) -> float:
        """The served variant's batch-1 speed-up over eager fp32 (1.0 when none was chosen)."""
        return self.figures(self.chosen).speedup_batch1 if self.chosen else 1.0

    def summary(self) -> str:
        header = (
            f"export of {self.checkpoint} (model {self.model_version}, torch {torch.__version__}, "
            f"{self.torch_threads} thread(s), {self.eval_windows} held-out windows)"
        )
        columns = ("variant", "status", "b1 ms", "x eager", "b32 ms", "x eager", "seg ms", "agree", "max dp", "ready s")
        rows = [columns] + [_summary_row(figures) for figures in self.variants]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
        lines = [header] + ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines += [f"  {figures.name}: {figures.reason}" for figures in self.variants if figures.reason]
        lines.append(self._choice_line())
        lines.append(f"manifest: {self.manifest_path}")
        return "\n".join(lines)

    def _choice_line(self) -> str:
        if self.chosen is None:
            return "chosen: none (no variant passed); replicas serve eager fp32"
        chosen = self.figures(self.chosen)
        return (
            f"chosen: {self.chosen}: {chosen.speedup_batch1:.2f}x eager fp32 at batch 1, "
            f"{chosen.agreement:.1%} action agreement, per-segment {chosen.segment_ms:.2f} ms"
        )


def _summary_row(entry: VariantFigures) -> tuple[str, ...]:
    def number(value: float | None, pattern: str) -> str:
        return "-" if value is None else format(value, pattern)

    return (
        entry.name,
        entry.status,
        number(entry.latency_batch1_ms, ".2f"),
        number(entry.speedup_batch1, ".2f"),
        number(entry.latency_batch32_ms, ".1f"),
        number(entry.speedup_batch32, ".2f"),
        number(entry.segment_ms, ".2f"),
        "-" if entry.agreement is None else f"{entry.agreement:.1%}",
        number(entry.max_probability_diff, ".4f"),
        number(entry.ready_s, ".1f"),
    )
