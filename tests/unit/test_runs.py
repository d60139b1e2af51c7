"""`hrm runs`: lists real runs with their best checkpoint (as the trainer ranks them) and export choice, finds
walk-forward runs a few folders down, names a damaged checkpoint instead of crashing, prints JSON, and
refuses a folder that does not exist."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from hrm_platform.checkpoint import MODEL_FILE, load_checkpoint, load_manifest
from hrm_platform.config import load_config, with_overrides
from hrm_platform.runs import add_runs_command, list_runs
from hrm_platform.serving.manifest import SERVING_MANIFEST, serving_dir, write_serving_manifest
from hrm_platform.training.local import train_local

SMOKE_PRESET = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "smoke.yaml"


def hrm(argv: list[str]) -> int:
    """`hrm <argv>` with the runs command registered as cli.py registers it."""
    parser = argparse.ArgumentParser(prog="hrm")
    add_runs_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """<storage>/smoke: two short epochs of the smoke preset, both checkpoints kept."""
    config = load_config(SMOKE_PRESET, ["train.epochs=2", "train.max_train_batches=2"])
    run_dir = tmp_path_factory.mktemp("storage") / "smoke"
    train_local(config, run_dir)
    return run_dir


@pytest.fixture
def storage(trained_run, tmp_path) -> Path:
    """A copy of the storage folder that a test may change."""
    shutil.copytree(trained_run, tmp_path / "storage" / "smoke")
    return tmp_path / "storage"


def _expected_best(run_dir: Path) -> tuple[Path, dict]:
    """The trainer's rule, from the manifests: highest val_accuracy, the later epoch on a tie."""
    checkpoints = sorted(run_dir.glob("epoch_*"))
    scored = [(load_manifest(path)["metrics"]["latest"]["val_accuracy"], path.name, path) for path in checkpoints]
    _, _, best = max(scored)
    return best, load_manifest(best)


def test_lists_the_run_with_its_best_epoch_metrics_and_path(storage, capsys):
    best, manifest = _expected_best(storage / "smoke")
    metrics = manifest["metrics"]["latest"]

    assert hrm(["runs", str(storage)]) == 0
    header, row, *rest = capsys.readouterr().out.splitlines()

    assert header.split()[:5] == ["RUN", "EPOCHS", "BEST", "VAL_ACC", "TRAIN_LOSS"]
    assert row.split() == [
        "smoke", "2/2", str(manifest["epoch"]), f"{metrics['val_accuracy']:.4f}", f"{metrics['train_loss']:.4f}",
        manifest["model_version"], "-", "finished", str(best),
    ]
    assert rest == []


def test_shows_the_variant_export_chose_for_the_best_checkpoint(storage, capsys):
    best, manifest = _expected_best(storage / "smoke")
    serving_dir(best).mkdir()
    write_serving_manifest(serving_dir(best) / SERVING_MANIFEST, manifest["model_version"], "int8", {"files": {}})

    (run,) = list_runs(storage)
    assert run.exported_variant == "int8"
    assert hrm(["runs", str(storage)]) == 0
    assert " int8 " in capsys.readouterr().out


def test_a_damaged_checkpoint_is_named_and_the_intact_one_is_listed(storage, capsys):
    run_dir = storage / "smoke"
    damaged = run_dir / "epoch_0001"
    with (damaged / MODEL_FILE).open("ab") as handle:
        handle.write(b"tampered")

    assert hrm(["runs", str(storage)]) == 0
    out = capsys.readouterr().out
    (run,) = list_runs(storage)

    assert run.status == "damaged"
    assert run.best_epoch == 2 and run.best_checkpoint == str(run_dir / "epoch_0002")  # the intact one
    assert run.epochs_completed == 2 and run.finished
    assert f"smoke: damaged: checkpoint {damaged}: {MODEL_FILE} failed its integrity check" in out
    assert " damaged " in out.splitlines()[1]


def test_json_has_every_field(storage, capsys):
    best, manifest = _expected_best(storage / "smoke")

    assert hrm(["runs", str(storage), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)

    assert listed == {
        "name": "smoke",
        "path": str(storage / "smoke"),
        "epochs_completed": 2,
        "epochs_configured": 2,
        "finished": True,
        "best_epoch": manifest["epoch"],
        "best_val_accuracy": manifest["metrics"]["latest"]["val_accuracy"],
        "best_train_loss": manifest["metrics"]["latest"]["train_loss"],
        "best_checkpoint": str(best),
        "model_version": manifest["model_version"],
        "exported_variant": "-",
        "damaged": [],
        "status": "finished",
    }


def test_an_unfinished_run_and_walk_forward_runs_a_few_folders_down(trained_run, tmp_path, capsys):
    runs_dir = tmp_path / "artifacts" / "demo" / "report" / "runs"
    for fold in range(2):
        shutil.copytree(trained_run, runs_dir / f"demo-fold{fold}")
    shutil.rmtree(runs_dir / "demo-fold1" / "epoch_0002")  # stopped after epoch 1

    runs = list_runs(tmp_path / "artifacts" / "demo")

    assert [(run.name, run.epochs_completed, run.status) for run in runs] == [
        ("demo-fold0", 2, "finished"), ("demo-fold1", 1, "unfinished"),
    ]
    assert hrm(["runs", str(runs_dir)]) == 0
    assert "1/2" in capsys.readouterr().out


def test_a_run_folder_itself_can_be_given(trained_run):
    (run,) = list_runs(trained_run)
    assert run.path == str(trained_run) and run.epochs_completed == 2


def test_no_runs_exits_0_with_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default folder, runs/, does not exist here
    assert hrm(["runs"]) == 0
    assert capsys.readouterr().out.startswith("no runs under runs; train one with `hrm train")
    (tmp_path / "empty").mkdir()
    assert hrm(["runs", str(tmp_path / "empty")]) == 0
    assert f"no runs under {tmp_path / 'empty'}" in capsys.readouterr().out


def test_a_folder_that_does_not_exist_exits_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert hrm(["runs", str(missing)]) == 2
    assert f"hrm runs: no such folder: {missing}" in capsys.readouterr().err


def test_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit):
        hrm(["runs", "--help"])
    assert "(default: runs, train.storage_path's default)" in " ".join(capsys.readouterr().out.split())


def test_a_run_continued_with_more_epochs_shows_the_new_total(trained_run, tmp_path):
    run_dir = tmp_path / "smoke"
    shutil.copytree(trained_run, run_dir)
    trained = load_checkpoint(run_dir / "epoch_0002").config
    train_local(with_overrides(trained, ["train.epochs=3"], source="test"), run_dir)

    (run,) = list_runs(run_dir)
    assert (run.epochs_completed, run.epochs_configured, run.finished) == (3, 3, True)
