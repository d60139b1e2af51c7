"""`hrm export`: variants measured and checked, only passing ones chosen, a verifiable manifest, replica load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hrm_platform.checkpoint import MANIFEST_FILE, file_sha256
from hrm_platform.cli import main
from hrm_platform.serving import export_checks
from hrm_platform.serving.engine import EngineError, InferenceEngine
from hrm_platform.serving.export import ExportSettings, export_engine
from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir

QUICK = ExportSettings(repeats_batch1=5, repeats_batch32=2, measure_ready=False)


@pytest.fixture
def checkpoint_copy(trained_checkpoint: Path, tmp_path: Path) -> Path:
    """Export writes into the checkpoint: work on a copy so other tests see an unexported one."""
    return Path(shutil.copytree(trained_checkpoint, tmp_path / "checkpoint"))


def test_cli_export_prints_table_writes_verifiable_manifest_and_replica_loads_choice(checkpoint_copy, capsys):
    assert main(["export", "--checkpoint", str(checkpoint_copy), "--variants", "eager", "jit_int8"]) == 0
    table = capsys.readouterr().out
    assert "variant" in table and "jit_int8" in table and "chosen:" in table

    manifest = json.loads((serving_dir(checkpoint_copy) / SERVING_MANIFEST).read_text())
    model_manifest = json.loads((checkpoint_copy / MANIFEST_FILE).read_text())
    assert manifest["model_version"] == model_manifest["model_version"]
    chosen = manifest["chosen"]
    figures = manifest["variants"]
    assert set(figures) == {"eager", "jit_int8"}
    assert figures[chosen]["status"] == "chosen"
    assert figures[chosen]["agreement"] >= 0.99 and figures[chosen]["max_probability_diff"] <= 0.05
    assert figures[chosen]["ready_s"] is not None and figures[chosen]["ready_s"] <= 15
    passing = [name for name, entry in figures.items() if entry["status"] in ("chosen", "passed")]
    assert chosen == min(passing, key=lambda name: figures[name]["latency_batch1_ms"])
    assert manifest["files"] == {
        "segment_jit_int8.pt": file_sha256(serving_dir(checkpoint_copy) / "segment_jit_int8.pt")
    }
    assert manifest["segment_ms"] == figures[chosen]["segment_ms"] > 0
    assert manifest["eval_windows"] >= 256

    engine = InferenceEngine.from_checkpoint(checkpoint_copy)
    assert engine.variant == chosen
    jit_int8 = InferenceEngine.from_checkpoint(checkpoint_copy, variant="jit_int8")
    int8 = InferenceEngine.from_checkpoint(checkpoint_copy, variant="int8")
    bars = _synthetic_request(engine.bars_needed)
    traced, eager_int8 = jit_int8.predict_bars([bars])[0], int8.predict_bars([bars])[0]
    assert traced.action == eager_int8.action
    assert traced.confidence == pytest.approx(eager_int8.confidence, abs=1e-4)


def test_variant_failing_its_check_is_never_chosen(checkpoint_copy, monkeypatch):
    real_judge = export_checks._judge

    def fastest_fails(entry, settings):
        if entry.name == "jit_int8":
            return "failed", "forced to fail by the test"
        return real_judge(entry, settings)

    monkeypatch.setattr(export_checks, "_judge", fastest_fails)
    report = export_engine(checkpoint_copy, variants=["eager", "jit_int8", "int8"], settings=QUICK)
    assert report.figures("jit_int8").status == "failed"
    assert report.chosen in ("eager", "int8")
    manifest = json.loads(report.manifest_path.read_text())
    assert manifest["chosen"] == report.chosen
    assert manifest["variants"]["jit_int8"]["reason"] == "forced to fail by the test"


def test_tolerance_fails_quantized_variants_and_leaves_eager(checkpoint_copy):
    strict = ExportSettings(max_probability_diff=0.0, repeats_batch1=3, repeats_batch32=1, measure_ready=False)
    report = export_engine(checkpoint_copy, variants=["int8", "eager"], settings=strict)
    assert [entry.name for entry in report.variants] == ["eager", "int8"]  # eager first: it is the reference
    assert report.figures("int8").status == "failed"
    assert "probability difference" in report.figures("int8").reason
    assert report.chosen == "eager"
    assert "chosen: eager" in report.summary()


def test_tampered_artefact_is_never_loaded(checkpoint_copy, caplog):
    export_engine(checkpoint_copy, variants=["eager", "jit_int8"], settings=QUICK)
    artefact = serving_dir(checkpoint_copy) / "segment_jit_int8.pt"
    artefact.write_bytes(artefact.read_bytes() + b"\0")
    with pytest.raises(EngineError, match="integrity"):
        InferenceEngine.from_checkpoint(checkpoint_copy, variant="jit_int8")
    manifest = json.loads((serving_dir(checkpoint_copy) / SERVING_MANIFEST).read_text())
    if manifest["chosen"] == "jit_int8":  # the replica falls back to eager fp32 from the verified checkpoint
        assert InferenceEngine.from_checkpoint(checkpoint_copy).variant == "eager"


def test_export_of_another_model_version_is_ignored(checkpoint_copy):
    export_engine(checkpoint_copy, variants=["eager", "jit_int8"], settings=QUICK)
    path = serving_dir(checkpoint_copy) / SERVING_MANIFEST
    manifest = json.loads(path.read_text())
    manifest["model_version"] = "0" * 12
    path.write_text(json.dumps(manifest))
    assert InferenceEngine.from_checkpoint(checkpoint_copy).variant == "eager"
    path.write_text("{not json")  # a damaged manifest: the automatic choice serves eager, a named variant refuses
    assert InferenceEngine.from_checkpoint(checkpoint_copy).variant == "eager"
    with pytest.raises(EngineError, match="not valid JSON"):
        InferenceEngine.from_checkpoint(checkpoint_copy, variant="jit_int8")


def _synthetic_request(n_bars: int):
    from hrm_platform.serving.engine import synthetic_bars

    return synthetic_bars(n_bars, seed=11)


def test_ready_time_rule_absolute_when_quiet_relative_to_eager_when_loaded(monkeypatch):
    """A variant that compiles at start is never servable; load on the machine does not disqualify the rest."""
    from hrm_platform.serving.export_report import ExportReport, VariantFigures

    def report_with(ready: dict[str, float]) -> ExportReport:
        monkeypatch.setattr(
            export_checks, "time_fresh_load", lambda checkpoint, name, threads, timeout: (ready[name], "")
        )
        variants = [VariantFigures(name, "", status="passed") for name in ready]
        report = ExportReport(Path("."), "v", None, variants, 256, 1, ExportSettings(), Path("m.json"))
        export_checks.measure_ready(report, ExportSettings())
        return report

    quiet = report_with({"eager": 2.5, "jit_int8": 3.0, "compiled": 16.0})
    assert [entry.status for entry in quiet.variants] == ["passed", "passed", "not servable"]
    assert "limit 15.0 s" in quiet.figures("compiled").reason
    loaded = report_with({"eager": 10.0, "jit_int8": 11.0, "compiled": 18.0, "compiled_int8": 56.0})
    assert [entry.status for entry in loaded.variants] == ["passed", "passed", "passed", "not servable"]
    assert "eager fp32 beside it: 10.0 s" in loaded.figures("compiled_int8").reason


def test_cli_export_reports_bad_input_without_traceback(tmp_path, trained_checkpoint, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(trained_checkpoint), "--variants", "fastest"]) == 2
    assert "unknown engine variant 'fastest'" in capsys.readouterr().err
