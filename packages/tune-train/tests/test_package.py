"""The installed distribution is a PEP 420 portion of `tune` with a consistent version."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tune
import tune.train


def test_version_matches_distribution_metadata() -> None:
    assert tune.train.__version__ == importlib.metadata.version("tune-train")


def test_tune_is_a_namespace_package() -> None:
    # A regular package would have a file; a PEP 420 namespace has only a search path.
    assert getattr(tune, "__file__", None) is None
    assert (Path(tune.train.__file__).parent / "py.typed").is_file()


def test_the_redaction_rule_imports_without_torch() -> None:
    # The CLI's error path (a bad config, exit 2) redacts its message and must stay fast.
    code = "import tune.train.loggers.redaction, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("package", ["tune.train", "tune.train.loggers"])
def test_every_public_name_imports_and_is_typed(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        namespace: dict[str, Any] = {}
        exec(f"from {package} import {name}", namespace)  # the statement users write
        assert namespace[name] is getattr(module, name), name
        assert name in dir(module)
    # mypy and the docs see the names through the `if TYPE_CHECKING:` imports: same set.
    tree = ast.parse(Path(module.__file__).read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for stmt in node.body
        if isinstance(stmt, ast.ImportFrom)
        for alias in stmt.names
    }
    assert typed == set(module.__all__) - {"__version__"}
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018
