"""Reading HF ``config.json`` fields with errors that name the file, the field and what is allowed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.models.rotary import SUPPORTED_ROPE_TYPES, RopeSpec

_MISSING = object()


class UnsupportedConfigError(ValueError):
    """A ``config.json`` names a model type or field value that tune.models cannot build."""


def load_hf_config(config: dict[str, Any] | str | Path) -> tuple[dict[str, Any], str]:
    """Return (config dict, source description) from a dict, a config.json path or a directory."""
    if isinstance(config, dict):
        return config, "config dict"
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no HF config at {path}")
    with path.open(encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data, str(path)


@dataclass
class ConfigFields:
    """A config dict with typed, checked access.

    Args:
        data: the parsed ``config.json``.
        source: where it came from, for error messages.
    """

    data: dict[str, Any]
    source: str = "config dict"

    @property
    def model_type(self) -> str:
        """The config's ``model_type``."""
        return str(self.data.get("model_type"))

    def _where(self, key: str) -> str:
        return f"{self.source}: field {key!r} (model_type {self.model_type!r})"

    def get(self, key: str, default: Any = _MISSING) -> Any:
        """The value of ``key``; its default when absent or null; an error when required."""
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise UnsupportedConfigError(f"{self._where(key)} is required but missing")
            return default
        return value

    def integer(self, key: str, default: Any = _MISSING) -> Any:
        """``get`` that also checks the value is an integer."""
        value = self.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UnsupportedConfigError(f"{self._where(key)} must be an integer, got {value!r}")
        return value

    def number(self, key: str, default: Any = _MISSING) -> Any:
        """``get`` that also checks the value is a number (returned as float)."""
        value = self.get(key, default)
        if value is not None and not isinstance(value, (int, float)):
            raise UnsupportedConfigError(f"{self._where(key)} must be a number, got {value!r}")
        return None if value is None else float(value)

    def expect(self, key: str, supported: tuple[Any, ...], default: Any) -> Any:
        """The value of ``key`` (default when absent), which must be one of ``supported``."""
        value = self.get(key, default)
        if value not in supported:
            raise UnsupportedConfigError(
                f"{self._where(key)} = {value!r} is not supported; supported: {list(supported)}"
            )
        return value

    def rope(self, layer_type: str | None = None, default_theta: float = 10000.0) -> RopeSpec:
        """The rotary recipe from ``rope_parameters`` (transformers 5) or ``rope_scaling`` +
        ``rope_theta`` (transformers 4); ``layer_type`` selects a per-layer-type entry (Gemma 3).
        """
        params = self.data.get("rope_parameters")
        if params is not None and layer_type is not None and layer_type in params:
            params = params[layer_type]
        if params is None:
            params = dict(self.data.get("rope_scaling") or {})
            params.setdefault("rope_theta", self.data.get("rope_theta", default_theta))
        if not isinstance(params, dict):
            raise UnsupportedConfigError(f"{self._where('rope_parameters')} must be an object")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedConfigError(
                f"{self._where('rope_parameters.rope_type')} = {rope_type!r} is not supported; "
                f"supported: {list(SUPPORTED_ROPE_TYPES)}"
            )

        def number(name: str) -> float | None:
            value = params.get(name)
            return None if value is None else float(value)

        original = params.get(
            "original_max_position_embeddings", self.data.get("original_max_position_embeddings")
        )
        short, long = params.get("short_factor"), params.get("long_factor")
        return RopeSpec(
            rope_type=rope_type,
            theta=float(params.get("rope_theta", default_theta)),
            factor=number("factor"),
            low_freq_factor=number("low_freq_factor"),
            high_freq_factor=number("high_freq_factor"),
            original_max_position_embeddings=None if original is None else int(original),
            beta_fast=number("beta_fast"),
            beta_slow=number("beta_slow"),
            attention_factor=number("attention_factor"),
            mscale=number("mscale"),
            mscale_all_dim=number("mscale_all_dim"),
            truncate=bool(params.get("truncate", True)),
            short_factor=None if short is None else tuple(float(x) for x in short),
            long_factor=None if long is None else tuple(float(x) for x in long),
        )

    def partial_rotary_factor(self) -> float:
        """Fraction of head_dim that rotates (Phi-4-mini: 0.75)."""
        params = self.data.get("rope_parameters") or {}
        value = params.get("partial_rotary_factor", self.data.get("partial_rotary_factor", 1.0))
        return float(value)
