"""The installed distribution is a PEP 420 portion of `tune` with a consistent version."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import tune
import tune.quant


def test_version_matches_distribution_metadata() -> None:
    assert tune.quant.__version__ == importlib.metadata.version("tune-quant")


def test_tune_is_a_namespace_package() -> None:
    # A regular package would have a file; a PEP 420 namespace has only a search path.
    assert getattr(tune, "__file__", None) is None
    assert (Path(tune.quant.__file__).parent / "py.typed").is_file()
