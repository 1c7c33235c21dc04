"""The adversarial suite: attacks and bad inputs, each with the exact refusal expected.

Each case runs the real ``tune`` command line in this process (``tune.recipes.cli.main``) or a
library loader, and checks four things:
- it is refused clearly: exit status 2 (or the library's exception), a message naming what is
  wrong (file and row, key, tensor or path), no traceback;
- no code ran (sentinel files that an injected command would create stay absent);
- nothing was lost (inputs and committed checkpoints keep their sha256);
- no secret was echoed.

``TUNE_ADVERSARIAL_REPORT=results.jsonl`` writes one line per case (class, case, outcome); the
table in docs/security.md is made from such a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tune.data.synthetic import write_jsonl, write_preference_data
from tune.recipes.cli import main
from tune_testing import (
    TinyAssets,
    make_arithmetic_assets,
    make_tiny_assets,
    tiny_overrides,
)

QUIET = ["logging.progress_bar=false", "logging.loggers=[jsonl]"]
# One optimizer step of the sft-shaped recipes, no merged export.
SHORT = (
    "training.max_steps=1",
    "training.lr_schedule.warmup_steps=0",
    "checkpointing.save_merged=false",
    "eval.before_training=false",
)


@dataclass
class Outcome:
    """One case of the suite, as the report counts it."""

    klass: str
    case: str
    refused: bool
    silent: bool
    damage: bool
    message: str


def tree_digest(path: Path) -> str:
    """sha256 over every file below ``path`` (names and bytes), or of the file itself."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(path.parent)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def tune_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``tune <argv>`` in this process; returns (exit status, what it printed on stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        status = main(argv)
    return status, err.getvalue()


@pytest.fixture(scope="session")
def ledger() -> Iterator[list[Outcome]]:
    """Every case's outcome; written to ``TUNE_ADVERSARIAL_REPORT`` at the end."""
    rows: list[Outcome] = []
    yield rows
    target = os.environ.get("TUNE_ADVERSARIAL_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(asdict(row)) + "\n")


@dataclass
class Expect:
    """Assertions shared by every case; each call records one outcome."""

    ledger: list[Outcome]
    case: str

    def refused(
        self,
        klass: str,
        argv: list[str],
        *needles: str,
        sentinel: Path | None = None,
        intact: tuple[Path, ...] = (),
        secrets: tuple[str, ...] = (),
    ) -> str:
        """``tune <argv>`` exits 2 with one error line holding every needle; returns stderr."""
        before = {p: tree_digest(p) for p in intact}
        status, err = tune_cli(argv)
        # Warnings logged on the way may precede it; the error itself is one line.
        lines = [line for line in err.splitlines() if line.startswith(f"tune {argv[0]}: error: ")]
        clear = (
            status == 2
            and "Traceback" not in err
            and len(lines) == 1
            and all(n in lines[0] for n in needles)
        )
        damage = self._damage(sentinel, before) or any(s in err for s in secrets)
        self._record(klass, clear, status == 0, damage, lines[0] if lines else "")
        assert clear, f"exit {status}, expected 2 with {needles} in one line:\n{err[-3000:]}"
        assert not damage, f"damage: sentinel, changed inputs or an echoed secret:\n{err}"
        return lines[0]

    def raises(
        self,
        klass: str,
        call: Callable[[], Any],
        error: type[BaseException] | tuple[type[BaseException], ...],
        *needles: str,
        intact: tuple[Path, ...] = (),
    ) -> str:
        """``call()`` raises ``error`` whose message holds every needle; returns the message."""
        before = {p: tree_digest(p) for p in intact}
        try:
            call()
        except error as exc:
            message = str(exc)
        else:
            self._record(klass, False, True, self._damage(None, before), "")
            raise AssertionError(f"{self.case}: no {error} raised")
        clear = all(n in message for n in needles)
        damage = self._damage(None, before)
        self._record(klass, clear, False, damage, message.splitlines()[0] if message else "")
        assert clear, f"expected {needles} in: {message}"
        assert not damage
        return message

    def _damage(self, sentinel: Path | None, before: dict[Path, str]) -> bool:
        ran = sentinel is not None and sentinel.exists()
        return ran or any(tree_digest(p) != d for p, d in before.items())

    def _record(
        self,
        klass: str,
        refused: bool,
        silent: bool,
        damage: bool,
        message: str,
        case: str | None = None,
    ) -> None:
        row = Outcome(klass, case or self.case, refused, silent, damage, message[:300])
        self.ledger.append(row)


@pytest.fixture
def expect(ledger: list[Outcome], request: pytest.FixtureRequest) -> Expect:
    """Check one adversarial case (see ``Expect``)."""
    return Expect(ledger, request.node.nodeid.split("::", 1)[-1])


@dataclass(frozen=True)
class Assets:
    """Tiny inputs every recipe can train on."""

    sft: TinyAssets
    paired: Path
    arithmetic: TinyAssets

    @property
    def base(self) -> Path:
        return self.sft.checkpoint_dir

    def argv(self, recipe: str, out: Path, *extra: str, base: Path | None = None) -> list[str]:
        """``run <recipe> --config <tiny config> <overrides>`` writing to ``out``."""
        ckpt = base or self.base
        if recipe == "sft":
            config, overrides = "sft/tiny_cpu_lora", tiny_overrides(self.sft, out)
            overrides = [*overrides, f"model.checkpoint_dir={ckpt}"]
        elif recipe == "preference":
            config = "preference/tiny_cpu_dpo_lora"
            overrides = tiny_overrides(TinyAssets(ckpt, self.paired), out)
        elif recipe == "distill":
            config, overrides = "distill/tiny_cpu_lora", tiny_overrides(self.sft, out)
            overrides = [*overrides, f"model.checkpoint_dir={ckpt}"]
            overrides.append(f"teacher.checkpoint_dir={self.base}")
        elif recipe == "grpo":
            config = "grpo/tiny_cpu"
            overrides = tiny_overrides(replace(self.arithmetic, checkpoint_dir=ckpt), out)
        else:
            raise ValueError(recipe)
        return ["run", recipe, "--config", config, *overrides, *QUIET, *extra]


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    root = tmp_path_factory.mktemp("adversarial_assets")
    sft = make_tiny_assets(root, num_rows=96)
    paired = write_preference_data(root, num_rows=64)["paired"]
    arithmetic = make_arithmetic_assets(root / "arith", num_rows=64, held_out_rows=8)
    return Assets(sft, paired, arithmetic)


@pytest.fixture
def base_copy(assets: Assets, tmp_path: Path) -> Callable[[str], Path]:
    """``base_copy(name)``: a private copy of the tiny base checkpoint to corrupt."""

    def copy(name: str = "base") -> Path:
        return Path(shutil.copytree(assets.base, tmp_path / name))

    return copy


def write_rows(path: Path, rows: list[Any]) -> Path:
    """A JSONL file of ``rows``."""
    return write_jsonl(rows, path)
