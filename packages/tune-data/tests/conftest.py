"""Shared fixtures: tiny tokenizer directories trained offline, one per bundled template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tune.data import Tokenizer
from tune.data.synthetic import save_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: template name (+ pad_token) -> a saved tokenizer directory (cached)."""
    cache: dict[tuple[str, str | None], Path] = {}

    def make(template: str = "chatml", pad_token: str | None = "default") -> Path:
        key = (template, pad_token)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"tok-{template.replace('.', '_')}")
            cache[key] = save_tiny_tokenizer(path, template, pad_token=pad_token)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def chatml_tokenizer(tokenizer_dir: Callable[..., Path]) -> Tokenizer:
    return Tokenizer.from_dir(tokenizer_dir("chatml"))
