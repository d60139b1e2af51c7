"""SCRATCH (deleted after use): the README tests against a README with the proposed streams block inserted."""
from pathlib import Path

import pytest

import tests.integration.test_serve_client as readme_tests

pytestmark = pytest.mark.ray


@pytest.fixture
def patched_root(tmp_path, monkeypatch):
    text = (readme_tests.REPO_ROOT / "README.md").read_text()
    block = Path("/tmp/rp/streams_block.md").read_text()
    marker = "\n\n**Limits.**"
    assert marker in text
    (tmp_path / "README.md").write_text(text.replace(marker, "\n\n" + block.rstrip("\n") + marker, 1))
    (tmp_path / "deployments").symlink_to(readme_tests.REPO_ROOT / "deployments")
    monkeypatch.setattr(readme_tests, "REPO_ROOT", tmp_path)
    return tmp_path


def test_missing_block_fails():
    with pytest.raises(AssertionError, match="no ```bash block"):
        readme_tests.readme_stream_commands(readme_tests.readme_http_api_section())


def test_streams(patched_root, serve_app, engine):
    assert len(readme_tests.readme_stream_commands(readme_tests.readme_http_api_section())) == 5
    readme_tests.test_readme_stream_examples_create_append_read_and_delete_a_stream(serve_app, engine)


def test_all(patched_root, serve_app):
    readme_tests.test_readme_curl_examples_work_against_the_live_server(serve_app)
