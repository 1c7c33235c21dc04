"""Whether what a config needs is on this machine, checked before anything loads.

An optional package is looked up with ``importlib.util.find_spec`` (never imported: tensorboard or
lm_eval take seconds); a missing one is one issue naming the config key and the ``pip install``
that brings it. A data source that is not a local path must be a Hugging Face Hub id that is in the
local cache or that the Hub, reachable from here, can serve::

    require_package(c, "logging.loggers", TENSORBOARD, "the tensorboard logger")
    check_data_source(c, "data.source", cfg.data.source)

``check_hub_source`` takes a ``repo_type`` so that model ids are checked the same way.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tune.config import Checks
from tune.recipes.config.hub_ids import is_hub_model_id as is_hub_model_id  # checks use it

RepoType = Literal["dataset", "model"]
_TRUE = {"1", "ON", "YES", "TRUE"}  # how huggingface_hub and datasets read their switches
_PROBE_TIMEOUT_S = 3.0
_LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")


@dataclass(frozen=True)
class Package:
    """An optional package: the module ``find_spec`` looks for and the requirement that brings it."""

    module: str
    install: str


TENSORBOARD = Package("tensorboard", "tune-train[tensorboard]")
WANDB = Package("wandb", "tune-train[wandb]")
MLFLOW = Package("mlflow", "tune-train[mlflow]")
LM_EVAL = Package("lm_eval", "tune-recipes[eval]")
TORCHAO = Package("torchao", "torchao")  # a dependency of tune-quant
GGUF = Package("gguf", "tune-checkpoint[gguf]")
# The built-in ``tune.loggers`` names that need a package of their own.
LOGGER_PACKAGES = {"tensorboard": TENSORBOARD, "wandb": WANDB, "mlflow": MLFLOW}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a broken __spec__
        return False


def report_missing(c: Checks, key: str, message: str) -> bool:
    """Something this machine lacks: an error, or a warning when checking a template
    (``missing_paths="warn"``: a bundled config, meant for another machine), as a missing path."""
    if c.context.missing_paths == "warn":
        c.warn(key, message)
        return False
    return c.error(key, message)


def require_package(c: Checks, key: str, package: Package, needed_by: str) -> bool:
    """An issue on ``key`` unless ``package`` is installed: ``<needed_by> needs the <module>
    package, which is not installed: pip install '<requirement>'`` (see ``report_missing``)."""
    if installed(package.module):
        return True
    return report_missing(
        c,
        key,
        f"{needed_by} needs the {package.module} package, which is not installed: "
        f"pip install '{package.install}'",
    )


def looks_local(source: str) -> bool:
    """Whether a data source names a local path rather than a Hub dataset (``owner/name``)."""
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.lower().endswith(_LOCAL_DATA_SUFFIXES)
        or Path(source).expanduser().exists()
    )


def offline_setting(repo_type: RepoType = "dataset") -> str | None:
    """The environment variable that puts the Hub offline for ``repo_type`` (``NAME=value``), or
    None. ``HF_DATASETS_OFFLINE``, when set, decides for datasets, as in ``datasets``."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
    if repo_type == "dataset" and os.environ.get("HF_DATASETS_OFFLINE"):
        names = ["HF_DATASETS_OFFLINE"]
    for name in names:
        value = os.environ.get(name, "")
        if value:  # huggingface_hub reads the first one set
            return f"{name}={value}" if value.upper() in _TRUE else None
    return None


def _hf_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(os.environ.get("HF_HOME", str(default))).expanduser()


def _normalized(name: str) -> str:
    return re.sub(r"[_\-]", "", name.lower())


def in_hub_cache(repo_id: str, repo_type: RepoType = "dataset") -> bool:
    """Whether ``repo_id`` was downloaded here: in huggingface_hub's cache
    (``<HF_HUB_CACHE>/datasets--owner--name``) or, for a dataset, prepared in ``datasets``'
    (``<HF_DATASETS_CACHE>/owner___name``, its name snake-cased)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    hub_cache = Path(hub).expanduser() if hub else _hf_home() / "hub"
    if (hub_cache / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots").is_dir():
        return True
    if repo_type != "dataset":
        return False
    prepared = os.environ.get("HF_DATASETS_CACHE")
    datasets_cache = Path(prepared).expanduser() if prepared else _hf_home() / "datasets"
    if not datasets_cache.is_dir():
        return False
    wanted = _normalized(repo_id.replace("/", "___"))
    return any(_normalized(d.name) == wanted for d in datasets_cache.iterdir() if d.is_dir())


@functools.lru_cache(maxsize=4)
def _probe(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be reached (one request, once per process), or None."""
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:  # it answered
        return None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"no connection to {endpoint}: {reason}"


def hub_unreachable(repo_type: RepoType = "dataset") -> str | None:
    """Why the Hub cannot serve ``repo_type`` repos from here (offline mode, or no connection),
    or None when it answers."""
    offline = offline_setting(repo_type)
    if offline is not None:
        return f"offline: {offline}"
    return _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"))


def check_hub_source(c: Checks, key: str, value: str, repo_type: RepoType = "dataset") -> bool:
    """``value``, not a local path, is a Hub id that is cached here or that the Hub can serve."""
    from tune.checkpoint.hub import is_repo_id  # brings torch: only for a non-local value

    what = "a local file" if repo_type == "dataset" else "a local directory"
    if not is_repo_id(value):
        return report_missing(
            c, key, f"{value!r} is not {what} and not a Hugging Face Hub id (owner/name)"
        )
    if in_hub_cache(value, repo_type):
        return True
    reason = hub_unreachable(repo_type)
    if reason is None:
        return True
    return report_missing(
        c,
        key,
        f"{value!r} is not {what} and the Hugging Face Hub is unreachable ({reason}); it is "
        f"not in the local Hugging Face cache either: fetch it once with a connection, or set "
        f"{key} to {what}",
    )


def check_data_source(
    c: Checks, key: str, source: str, kind: Literal["file", "any"] = "any"
) -> bool:
    """A data source: a local path that exists, or a Hub dataset this machine can read."""
    if looks_local(source):
        return c.path_exists(key, source, kind)
    return check_hub_source(c, key, source, "dataset")
