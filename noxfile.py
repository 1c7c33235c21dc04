"""Developer and CI sessions for the tune monorepo.

`nox -s tests` is what guards main: every package's tests in isolation (each built as a wheel and
installed alone with only its declared dependencies), then lint and the integration tests.
Sessions use the interpreter that runs nox; torch is pinned through ci/constraints.txt.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests"]
nox.options.error_on_external_run = True

ROOT = Path(__file__).parent.resolve()
CONSTRAINTS = str(ROOT / "ci" / "constraints.txt")
LIBRARIES = ["models", "peft", "data", "dist", "quant", "checkpoint", "train"]
PACKAGE_DIRS: dict[str, Path] = {name: ROOT / "packages" / f"tune-{name}" for name in LIBRARIES}
PACKAGE_DIRS["recipes"] = ROOT / "recipes" / "tune-recipes"
PACKAGE_DIRS["all"] = ROOT / "packages" / "tune-all"
TESTED_PACKAGES = [*LIBRARIES, "recipes"]

# Byte-compiling torch on install costs ~20 s per venv; modules compile lazily on import instead.
# Benchmarks and tests pick their own thread counts; keep BLAS from oversubscribing two cores.
SESSION_ENV = {"PIP_NO_COMPILE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

ISOLATION_CHECK = """
import importlib.metadata as md
import importlib.util
import sys

own, others = sys.argv[1], sys.argv[2].split(",")
assert importlib.util.find_spec(f"tune.{own}") is not None, f"tune.{own} is not importable"
leaked = [f"tune.{o}" for o in others if importlib.util.find_spec(f"tune.{o}") is not None]
dists = sorted({d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("tune")})
assert not leaked, f"tune-{own} sees other tune portions: {leaked}"
assert dists == [f"tune-{own}"], f"expected only tune-{own} installed, found {dists}"
print(f"isolated: only tune.{own} is importable; installed tune distributions: {dists}")
"""


def _build_wheels(session: nox.Session, names: list[str]) -> dict[str, str]:
    """Build wheels of the named packages into the session's tmp dir; returns name -> wheel path."""
    wheel_dir = Path(session.create_tmp()) / "wheels"
    shutil.rmtree(wheel_dir, ignore_errors=True)
    wheel_dir.mkdir(parents=True)
    session.run(
        "python", "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheel_dir),
        *[str(PACKAGE_DIRS[n]) for n in names],
        env=SESSION_ENV,
    )  # fmt: skip
    wheels: dict[str, str] = {}
    for name in names:
        dist = f"tune_{name}-"
        matches = sorted(wheel_dir.glob(f"{dist}*.whl"))
        if len(matches) != 1:
            session.error(f"expected one wheel for tune-{name} in {wheel_dir}, found {matches}")
        wheels[name] = str(matches[0])
    return wheels


def _install(session: nox.Session, *requirements: str) -> None:
    session.install("-c", CONSTRAINTS, *requirements, env=SESSION_ENV)


def _pytest_args(session: nox.Session, default: list[str]) -> list[str]:
    return list(session.posargs) if session.posargs else default


@nox.session
@nox.parametrize("package", TESTED_PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package alone: build its wheel, install it with its declared deps only, run its tests."""
    # CI's per-package jobs run lint and integration as jobs of their own.
    if not os.environ.get("TUNE_NOX_PACKAGE_ONLY"):
        session.notify("lint")
        session.notify("integration")
    if package == "recipes":
        # The assembly package depends on every library: install them all from local wheels.
        wheels = _build_wheels(session, [*LIBRARIES, "recipes"])
        _install(session, *[w for n, w in wheels.items() if n != "recipes"])
        _install(session, f"{wheels['recipes']}[test]")
    else:
        wheels = _build_wheels(session, [package])
        _install(session, f"{wheels[package]}[test]")
        others = ",".join(n for n in [*LIBRARIES, "recipes"] if n != package)
        session.run("python", "-c", ISOLATION_CHECK, package, others)
    tests_dir = PACKAGE_DIRS[package] / "tests"
    session.run(
        "python", "-m", "pytest", str(tests_dir), "-p", "no:cacheprovider",
        *_pytest_args(session, ["-m", "not slow and not gpu", "-q"]),
        env={"OMP_NUM_THREADS": "2"},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check), the PEP 420 guard, and the import-linter contracts."""
    session.install(
        "ruff>=0.6", "import-linter>=2.1", "hatchling>=1.24", "editables", env=SESSION_ENV
    )
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    stray = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("*/*/src/tune/__init__.py"))
    if stray:
        session.error(
            f"PEP 420 namespace broken: remove {stray} (no src/tune/__init__.py anywhere)"
        )
    # Editable installs without dependencies: import-linter only parses the sources.
    for name in [*LIBRARIES, "recipes"]:
        session.install("--no-deps", "--no-build-isolation", "-e", str(PACKAGE_DIRS[name]))
    session.run("lint-imports", "--config", str(ROOT / "pyproject.toml"))


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every package's sources."""
    _install(
        session,
        "mypy>=1.11",
        "torch",
        "torchao",
        "safetensors",
        "tokenizers",
        "jinja2",
        "omegaconf",
        "tqdm",
    )
    packages = [arg for name in [*LIBRARIES, "recipes"] for arg in ("-p", f"tune.{name}")]
    session.run("mypy", *packages)


@nox.session
def integration(session: nox.Session) -> None:
    """Everything installed together (tune-all): end-to-end runs through the CLI and interop tests."""
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(session, *[f"{w}[test]" for n, w in wheels.items() if n != "all"], wheels["all"])
    session.run(
        "python", "-m", "pytest", str(ROOT / "integration_tests"), "-p", "no:cacheprovider",
        *_pytest_args(session, ["-m", "not slow and not gpu", "-q"]),
    )  # fmt: skip


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (any warning fails)."""
    session.install(
        "mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26", env=SESSION_ENV
    )
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site")
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: fine-tune the bundled tiny model on bundled data on the CPU, evaluate, generate."""
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(session, *wheels.values(), "matplotlib>=3.8")
    out = Path(os.environ.get("TUNE_DEMO_OUT", ROOT / "outputs" / "demo"))
    session.run(
        "python", str(ROOT / "examples" / "demo.py"), "--output-dir", str(out), *session.posargs
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput and memory benchmarks (ratios, not pass/fail); results land in bench_results/."""
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(session, *[f"{w}[test]" for n, w in wheels.items() if n != "all"], "matplotlib>=3.8")
    session.run("python", str(ROOT / "benchmarks" / "run_all.py"), *session.posargs)
