"""`tune download`: argument handling, a clear one-line error offline, the token never echoed."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from tune.recipes.cli import main
from tune_testing import run_tune

TOKEN = "hf_" + "Zz9" * 12


@pytest.mark.parametrize("bad", ["../etc", "a/b/c", "-rf", "owner/", "has space"])
def test_bad_repo_ids_are_usage_errors(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["download", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "tune download: error:" in err


def test_arguments_reach_snapshot_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, dict]] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        calls.append((repo_id, kwargs))
        return str(kwargs["local_dir"])

    fake = types.ModuleType("huggingface_hub")
    fake.snapshot_download = fake_snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    monkeypatch.chdir(tmp_path)
    assert main(["download", "meta-llama/Llama-3.2-1B", "--hf-token", TOKEN]) == 0
    assert calls == [
        (
            "meta-llama/Llama-3.2-1B",
            {
                "revision": None,
                "local_dir": Path("checkpoints/Llama-3.2-1B"),
                "token": TOKEN,
                "ignore_patterns": ["original/*"],
            },
        )
    ]
    out = capsys.readouterr()
    assert out.out == "Downloaded meta-llama/Llama-3.2-1B to checkpoints/Llama-3.2-1B\n"
    assert TOKEN not in out.out + out.err
    main(["download", "gpt2", "--output-dir", "x", "--revision", "main", "--ignore-patterns"])
    assert calls[1][1]["local_dir"] == Path("x")
    assert calls[1][1]["revision"] == "main"
    assert calls[1][1]["ignore_patterns"] is None


@pytest.mark.parametrize(
    "env",
    [
        {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"},  # nothing listens there
        {"HF_HUB_OFFLINE": "1"},
    ],
)
def test_no_network_is_one_clear_line_without_the_token(env: dict, tmp_path: Path) -> None:
    result = run_tune(
        "download", "meta-llama/Llama-3.2-1B", "--output-dir", str(tmp_path / "m"),
        "--hf-token", TOKEN,
        env={**env, "HF_HOME": str(tmp_path / "hf")}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "tune download: error: cannot download meta-llama/Llama-3.2-1B "
        "(no connection to the Hub, or HF_HUB_OFFLINE=1 is set): LocalEntryNotFoundError:"
    )
    assert TOKEN not in result.stdout + result.stderr


def test_missing_huggingface_hub_is_explained(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    assert main(["download", "gpt2"]) == 2
    assert "pip install 'tune-recipes[download]'" in capsys.readouterr().err
