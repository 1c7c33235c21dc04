"""The installed distribution is a PEP 420 portion of `tune` with a consistent version."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import tune
import tune.dist


def test_version_matches_distribution_metadata() -> None:
    assert tune.dist.__version__ == importlib.metadata.version("tune-dist")


def test_tune_is_a_namespace_package() -> None:
    # A regular package would have a file; a PEP 420 namespace has only a search path.
    assert getattr(tune, "__file__", None) is None
    assert (Path(tune.dist.__file__).parent / "py.typed").is_file()
