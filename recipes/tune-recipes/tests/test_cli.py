"""The `tune` CLI answers --help and discovers recipes from the entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tune.recipes.cli import main


def _run_tune(*args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    code = "import sys; from tune.recipes.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "ls" in out
    assert "usage: tune" in out


def test_ls_discovers_a_recipe_from_another_distribution(tmp_path: Path) -> None:
    # A fake installed distribution that registers a recipe in the `tune.recipes` group.
    dist_info = tmp_path / "thirdparty_recipes-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: thirdparty-recipes\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[tune.recipes]\nmy_recipe = thirdparty_recipes.my:recipe\n"
    )
    result = _run_tune("ls", extra_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("my_recipe")]
    assert len(lines) == 1
    assert "thirdparty-recipes" in lines[0]
    assert "thirdparty_recipes.my:recipe" in lines[0]
