"""Checkpoints by URI (storage.py): a file:// "bucket" stands in for s3:// or gs://, read through the same
pyarrow filesystem layer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hrm_platform import storage
from hrm_platform.checkpoint import MANIFEST_FILE, CheckpointError, file_sha256, load_manifest
from hrm_platform.cli import main
from hrm_platform.serving.engine import EngineError, InferenceEngine, synthetic_bars
from hrm_platform.storage import is_uri, local_checkpoint, publish_export


@pytest.fixture
def bucket_checkpoint(trained_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the trained checkpoint in a folder read by URI only."""
    return Path(shutil.copytree(trained_checkpoint, tmp_path / "bucket" / "hrm-runs" / "smoke" / "epoch_0002"))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one silently different weight
    path.write_bytes(bytes(data))


def test_file_uri_round_trip_serves_what_the_local_path_serves(trained_checkpoint, bucket_checkpoint, tmp_path):
    uri, cache = bucket_checkpoint.as_uri(), tmp_path / "cache"
    copy = local_checkpoint(uri, cache)
    assert copy.parent == cache and copy.name.startswith("epoch_0002-")
    assert load_manifest(copy) == load_manifest(trained_checkpoint)  # every hash verified on the copy

    from_uri = InferenceEngine.from_checkpoint(uri, variant="eager", cache_dir=cache)
    from_path = InferenceEngine.from_checkpoint(trained_checkpoint, variant="eager")
    bars = [synthetic_bars(from_path.bars_needed + 4, seed=seed) for seed in range(6)]
    assert from_uri.checkpoint_dir == copy and from_uri.model_version == from_path.model_version
    for served, reference in zip(from_uri.predict_bars(bars), from_path.predict_bars(bars)):
        assert served.action == reference.action
        np.testing.assert_allclose(list(served.probabilities.values()), list(reference.probabilities.values()))


def test_a_cached_copy_is_reused_and_a_damaged_one_fetched_again(bucket_checkpoint, tmp_path, monkeypatch):
    uri, cache = bucket_checkpoint.as_uri(), tmp_path / "cache"
    copy = local_checkpoint(uri, cache)
    copies = []
    real_copy = storage._copy
    monkeypatch.setattr(storage, "_copy", lambda *args: copies.append(args[2]) or real_copy(*args))
    assert local_checkpoint(uri, cache) == copy and copies == []  # unchanged: no second download

    _flip_byte(copy / "model.pt")  # the local copy rots
    assert local_checkpoint(uri, cache) == copy and len(copies) == 1
    load_manifest(copy)
    assert sorted(path.name for path in cache.iterdir()) == [copy.name]  # no staging folder left


def test_a_uri_whose_copy_has_a_flipped_byte_is_refused(bucket_checkpoint, tmp_path):
    _flip_byte(bucket_checkpoint / "model.pt")
    uri, cache = bucket_checkpoint.as_uri(), tmp_path / "cache"
    with pytest.raises(CheckpointError) as refused:
        local_checkpoint(uri, cache)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {uri}: its copy does not verify, refused")
    assert "model.pt failed its integrity check" in message
    assert not any(cache.iterdir())  # nothing unverified is left to load
    with pytest.raises(EngineError, match="model.pt failed its integrity check"):
        InferenceEngine.from_checkpoint(uri, variant="eager", cache_dir=cache)


def test_plain_local_paths_are_unchanged(trained_checkpoint, tmp_path):
    cache = tmp_path / "cache"
    assert local_checkpoint(trained_checkpoint, cache) == trained_checkpoint
    assert local_checkpoint(str(trained_checkpoint), cache) == trained_checkpoint
    assert local_checkpoint("runs/missing", cache) == Path("runs/missing")  # the loader names what is wrong
    assert not cache.exists()
    assert is_uri("s3://bucket/run") and is_uri("file:///tmp/run") and not is_uri(Path("s3://bucket/run"))


def test_an_export_is_published_beside_the_uri_and_fetched_with_it(bucket_checkpoint, tmp_path):
    uri, cache = bucket_checkpoint.as_uri(), tmp_path / "cache"
    before = local_checkpoint(uri, cache)
    serving = before / "serving"  # what `hrm export` writes into the local copy (a stand-in artefact here)
    serving.mkdir()
    (serving / "segment.pt").write_bytes(b"artefact")
    manifest = {"chosen": "jit_int8", "files": {"segment.pt": file_sha256(serving / "segment.pt")}}
    (serving / "serving_manifest.json").write_text(json.dumps(manifest))
    publish_export(before, uri)
    assert (bucket_checkpoint / "serving" / "segment.pt").read_bytes() == b"artefact"

    after = local_checkpoint(uri, cache)  # the remote changed: a folder of its own, the old one untouched
    assert after != before and (after / "serving" / "segment.pt").read_bytes() == b"artefact"
    (bucket_checkpoint / "serving" / "segment.pt").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="serving/segment.pt is missing or failed its integrity check"):
        local_checkpoint(uri, tmp_path / "fresh-cache")


def test_commands_refuse_a_bad_uri_before_starting_anything(bucket_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # the default cache lives under ~
    _flip_byte(bucket_checkpoint / "model.pt")
    uri = bucket_checkpoint.as_uri()
    assert main(["export", "--checkpoint", uri]) == 2
    assert f"hrm export: checkpoint {uri}: its copy does not verify" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", uri, f"serve.checkpoint_cache_dir={tmp_path / 'cache'}"]) == 2
    assert "model.pt failed its integrity check" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "nosuchscheme://bucket/run"]) == 2
    assert "hrm evaluate: checkpoint nosuchscheme://bucket/run: cannot read it" in capsys.readouterr().err
    (bucket_checkpoint / MANIFEST_FILE).unlink()
    assert main(["evaluate", "--checkpoint", uri]) == 2
    assert "not a checkpoint directory (manifest.json is missing)" in capsys.readouterr().err
