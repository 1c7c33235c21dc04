"""download_snapshot: arguments reach huggingface_hub; failures are one line without the token."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tune.checkpoint import (
    HubDownloadError,
    download_snapshot,
    is_repo_id,
    repo_id_of_snapshot,
    resolve_model_dir,
)

TOKEN = "hf_" + "Zz9" * 12


def _fake_hub(monkeypatch: pytest.MonkeyPatch, result: Any) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append((repo_id, kwargs))
        if isinstance(result, Exception):
            raise result
        return str(kwargs["local_dir"])

    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    return calls


@pytest.mark.parametrize("bad", ["../etc", "a/b/c", "-rf", "owner/", "has space", "a/..b"])
def test_repo_ids(bad: str) -> None:
    assert is_repo_id("meta-llama/Llama-3.2-1B")
    assert is_repo_id("gpt2")
    assert not is_repo_id(bad)
    with pytest.raises(ValueError, match="is not a Hub repo id"):
        download_snapshot(bad, "x")


def test_arguments_reach_snapshot_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _fake_hub(monkeypatch, None)
    out = download_snapshot(
        "org/m", tmp_path, revision="v1", token=TOKEN, ignore_patterns=["original/*"],
        allow_patterns=["*.json"],
    )  # fmt: skip
    assert out == tmp_path
    assert calls == [
        ("org/m", {"revision": "v1", "local_dir": tmp_path, "token": TOKEN,
                   "ignore_patterns": ["original/*"], "allow_patterns": ["*.json"]}),
    ]  # fmt: skip
    download_snapshot("gpt2", tmp_path, ignore_patterns=[])
    assert calls[1][1]["ignore_patterns"] is None
    assert "allow_patterns" not in calls[1][1]


class GatedRepoError(Exception):
    pass


def test_failure_is_one_line_with_a_hint_and_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_hub(monkeypatch, GatedRepoError(f"401 for token {TOKEN}\n  see " + "x" * 400))
    with pytest.raises(HubDownloadError) as err:
        download_snapshot("org/gated", "out", token=TOKEN)
    message = str(err.value)
    assert message.startswith(
        "cannot download org/gated (check the repo id; gated models need a token with access): "
        "GatedRepoError: 401 for token *** see xxx"
    )
    assert TOKEN not in message
    assert "\n" not in message
    assert message.endswith("...")


def test_missing_huggingface_hub_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError):
        download_snapshot("gpt2", "out")


def _cached_snapshot(cache: Path, repo_id: str, commit: str = "0" * 40) -> Path:
    """A snapshot laid out as huggingface_hub's cache holds one (refs/main -> the commit)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_resolve_model_dir_prefers_a_local_path_then_the_cache(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = _cached_snapshot(hub_cache, "owner/tiny-model")
    assert resolve_model_dir("owner/tiny-model") == snapshot  # offline: the cached snapshot
    assert repo_id_of_snapshot(snapshot) == "owner/tiny-model"
    local = tmp_path / "owner" / "tiny-model"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("owner/tiny-model") == Path("owner/tiny-model")  # a path wins
    assert repo_id_of_snapshot(local) is None


def test_resolve_model_dir_offline_and_uncached_is_one_line(hub_cache: Path) -> None:
    with pytest.raises(HubDownloadError) as info:
        resolve_model_dir("owner/never-downloaded")
    message = str(info.value)
    assert message.startswith("cannot download owner/never-downloaded (no connection to the Hub")
    assert "\n" not in message
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a Hub repo id"):
        resolve_model_dir("../no/such/dir")
