"""Test helpers shipped with the package, in one place: a trivial recipe and a CLI runner here;
tiny checkpoints, data and launch/fault helpers per recipe in ``testing.sft``,
``testing.preference`` and ``testing.grpo``.

Used by this package's tests and the integration tests; nothing here is needed at run time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ECHO_MODULE = '''
"""A trivial recipe for tests: writes its config and its rank to a file."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tune.recipes.config import Checks
from tune.recipes.recipe import Recipe


@dataclass
class EchoConfig:
    out_dir: str
    message: str = "hello"
    batch: int = 4
    lr: float = 0.1
    tags: list[str] = field(default_factory=list)

    def validate(self, context):
        checks = Checks(context)
        checks.positive("lr", self.lr)
        checks.require(
            self.batch % context.world_size == 0,
            "batch",
            f"{self.batch} is not divisible by the world size {context.world_size}",
        )
        return checks.issues


def run(config: EchoConfig) -> None:
    rank = os.environ.get("RANK", "0")
    record = {"rank": int(rank), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    record["config"] = asdict(config)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    Path(config.out_dir, f"rank{rank}.json").write_text(json.dumps(record))


recipe = Recipe(
    name="echo",
    config_class=EchoConfig,
    run=run,
    description="test recipe",
    config_dir=Path(__file__).parent / "echo_configs",
)
'''


def install_echo_recipe(root: Path) -> Path:
    """Write the `echo` recipe module and a dist-info registering it; returns the path to add."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "echo_recipes.py").write_text(ECHO_MODULE)
    configs = root / "echo_configs"
    configs.mkdir()
    (configs / "echo_default.yaml").write_text("recipe: echo\nout_dir: echo_out\n")
    dist = root / "echo_recipes-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-recipes\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [tune.recipes]
            echo = echo_recipes:recipe

            [tune.optimizers]
            echo_sgd = torch.optim:SGD
            """
        )
    )
    return root


def run_tune(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m tune.recipes <args>` (the `tune` command) and capture its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tune.recipes", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
