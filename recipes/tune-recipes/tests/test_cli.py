"""`tune ls / cp / cat` on the real command line; recipes and configs are discovered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tune.recipes
from tune.recipes.cli import main
from tune_testing import run_tune

CONFIG_DIR = Path(tune.recipes.__file__).parent / "configs"


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
    for command in ("ls", "cp", "cat", "validate", "run", "download"):
        assert command in out
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


def test_ls_lists_sft_and_every_bundled_config_by_scanning(
    echo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert any(ln.split()[:2] == ["sft", "tune-recipes"] for ln in out.splitlines())
    on_disk = sorted(f"sft/{p.stem}" for p in (CONFIG_DIR / "sft").glob("*.yaml"))
    assert len(on_disk) >= 10
    listed = [ln.split()[0] for ln in out.splitlines() if ln.startswith("sft/")]
    assert listed == on_disk
    # A third-party recipe's own config_dir is listed too.
    assert "echo/echo_default" in out


def test_cat_prints_the_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "sft/tiny_cpu_lora"]) == 0
    out = capsys.readouterr().out
    assert out == (CONFIG_DIR / "sft" / "tiny_cpu_lora.yaml").read_text()
    assert yaml.safe_load(out)["training"]["method"] == "lora"


def test_cat_bare_name_and_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cat", "tiny_cpu_qlora"]) == 0  # a bare name that only one recipe bundles
    assert "method: qlora" in capsys.readouterr().out
    assert main(["cat", "tiny_cpu_full"]) == 2  # bundled by sft and distill
    assert "ambiguous: distill/tiny_cpu_full, sft/tiny_cpu_full" in capsys.readouterr().err
    assert main(["cat", "tiny_cpu_lorra"]) == 2
    err = capsys.readouterr().err
    assert "no config file or bundled config named 'tiny_cpu_lorra'" in err
    assert "did you mean" in err
    assert "tiny_cpu_lora" in err


def test_cp_config_to_file_and_directory(tmp_path: Path) -> None:
    dest = tmp_path / "mine.yaml"
    result = run_tune("cp", "sft/tiny_cpu_qlora", str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_text() == (CONFIG_DIR / "sft" / "tiny_cpu_qlora.yaml").read_text()
    assert main(["cp", "tiny_cpu_dora", str(tmp_path)]) == 0
    assert (tmp_path / "tiny_cpu_dora.yaml").is_file()


def test_cp_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "mine.yaml"
    dest.write_text("keep me")
    assert main(["cp", "sft/tiny_cpu_lora", str(dest)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert dest.read_text() == "keep me"
    assert main(["cp", "sft/tiny_cpu_lora", str(dest), "--force"]) == 0
    assert "method: lora" in dest.read_text()


def test_cp_recipe_copies_its_source_file(tmp_path: Path) -> None:
    assert main(["cp", "sft", str(tmp_path / "my_sft.py")]) == 0
    source = Path(tune.recipes.__file__).parent / "sft" / "loop.py"
    assert (tmp_path / "my_sft.py").read_text() == source.read_text()
    assert "def run(" in (tmp_path / "my_sft.py").read_text()


def test_unknown_command_argument_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ls", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
