"""The installed distribution is a PEP 420 portion of `tune` with a consistent version."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import tune
import tune.config


def test_version_matches_distribution_metadata() -> None:
    assert tune.config.__version__ == importlib.metadata.version("tune-config")


def test_tune_is_a_namespace_package() -> None:
    # A regular package would have a file; a PEP 420 namespace has only a search path.
    assert getattr(tune, "__file__", None) is None
    assert (Path(tune.config.__file__).parent / "py.typed").is_file()


def test_loading_a_config_imports_no_training_stack() -> None:
    code = "import sys, tune.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
