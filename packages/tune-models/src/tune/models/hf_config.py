"""Reading HF ``config.json`` fields with errors that name the file, the field and what is allowed.

Every structural value is checked when it is read, so a bad ``config.json`` fails before any
module is built, with ``<config.json path>: <key>: expected <what>, got <value>``, rather than
later as a checkpoint shape mismatch or a NaN in the first forward.
"""

from __future__ import annotations

import json
import math
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


def _got(value: Any) -> str:
    # The type matters when the repr alone hides it: '8' (str) vs 8, true (bool) vs 1.
    if isinstance(value, (str, bool, list, dict)):
        return f"{value!r} ({type(value).__name__})"
    return repr(value)


def check_integer(source: str, key: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (bools and floats refused), at least ``minimum``.

    Raises:
        UnsupportedConfigError: ``<source>: <key>: expected a positive integer, got 0``.
    """
    if minimum == 1:
        what = "a positive integer"
    elif minimum is not None:
        what = f"an integer >= {minimum}"
    else:
        what = "an integer"
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnsupportedConfigError(f"{source}: {key}: expected {what}, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise UnsupportedConfigError(f"{source}: {key}: expected {what}, got {value!r}")
    return value


def check_number(
    source: str,
    key: str,
    value: Any,
    *,
    positive: bool = False,
    maximum: float | None = None,
) -> float:
    """``value`` as a finite float (bools and strings refused); > 0 if ``positive``.

    Args:
        source: where the value came from (the ``config.json`` path).
        key: the field, dotted for nested ones (``rope_parameters.factor``).
        value: the raw JSON value.
        positive: require a value > 0.
        maximum: inclusive upper bound, if any.

    Raises:
        UnsupportedConfigError: ``<source>: <key>: expected a finite number > 0, got -1.0``.
    """
    what = "a finite number" + (" > 0" if positive else "")
    if maximum is not None:
        what += f" and <= {maximum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnsupportedConfigError(f"{source}: {key}: expected {what}, got {_got(value)}")
    number = float(value)
    if (
        not math.isfinite(number)
        or (positive and number <= 0)
        or (maximum is not None and number > maximum)
    ):
        raise UnsupportedConfigError(f"{source}: {key}: expected {what}, got {value!r}")
    return number


def check_boolean(source: str, key: str, value: Any) -> bool:
    """``value`` if it is a JSON boolean; ``"false"`` or ``0`` are refused, not guessed at."""
    if not isinstance(value, bool):
        raise UnsupportedConfigError(f"{source}: {key}: expected true or false, got {_got(value)}")
    return value


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

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int | None = None) -> Any:
        """``get`` that also checks the value is an integer (at least ``minimum`` if given)."""
        value = self.get(key, default)
        if value is None:
            return None
        return check_integer(self.source, key, value, minimum)

    def positive_int(self, key: str, default: Any = _MISSING) -> Any:
        """``get`` that checks for an integer >= 1 (sizes, counts)."""
        return self.integer(key, default, minimum=1)

    def number(self, key: str, default: Any = _MISSING, *, positive: bool = False) -> Any:
        """``get`` that also checks the value is a finite number (returned as float)."""
        value = self.get(key, default)
        if value is None:
            return None
        return check_number(self.source, key, value, positive=positive)

    def boolean(self, key: str, default: bool) -> bool:
        """``get`` that also checks the value is a JSON boolean."""
        return check_boolean(self.source, key, self.get(key, default))

    def expect(self, key: str, supported: tuple[Any, ...], default: Any) -> Any:
        """The value of ``key`` (default when absent), which must be one of ``supported``."""
        value = self.get(key, default)
        if value not in supported or isinstance(value, bool) != isinstance(supported[0], bool):
            raise UnsupportedConfigError(
                f"{self._where(key)} = {value!r} is not supported; supported: {list(supported)}"
            )
        return value

    def rope(self, layer_type: str | None = None, default_theta: float = 10000.0) -> RopeSpec:
        """The rotary recipe from ``rope_parameters`` (transformers 5) or ``rope_scaling`` +
        ``rope_theta`` (transformers 4); ``layer_type`` selects a per-layer-type entry (Gemma 3).
        """
        params = self.data.get("rope_parameters")
        prefix = "rope_parameters"
        if isinstance(params, dict) and layer_type is not None and layer_type in params:
            params, prefix = params[layer_type], f"rope_parameters.{layer_type}"
        theta_key = f"{prefix}.rope_theta"
        if params is None:
            prefix = "rope_scaling"
            params = self.data.get("rope_scaling") or {}
            if not isinstance(params, dict):
                raise UnsupportedConfigError(
                    f"{self.source}: rope_scaling: expected an object or null, got {_got(params)}"
                )
            params = dict(params)
            if params.get("rope_theta") is None:
                theta_key = "rope_theta"
                params["rope_theta"] = self.data.get("rope_theta")
            else:
                theta_key = "rope_scaling.rope_theta"
        if not isinstance(params, dict):
            raise UnsupportedConfigError(
                f"{self.source}: {prefix}: expected an object, got {_got(params)}"
            )
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedConfigError(
                f"{self._where('rope_parameters.rope_type')} = {rope_type!r} is not supported; "
                f"supported: {list(SUPPORTED_ROPE_TYPES)}"
            )

        def number(name: str, positive: bool = True) -> float | None:
            value = params.get(name)
            if value is None:
                return None
            return check_number(self.source, f"{prefix}.{name}", value, positive=positive)

        def factors(name: str) -> tuple[float, ...] | None:
            value = params.get(name)
            if value is None:
                return None
            if not isinstance(value, list):
                raise UnsupportedConfigError(
                    f"{self.source}: {prefix}.{name}: expected a list of numbers, got {_got(value)}"
                )
            key = f"{prefix}.{name}"
            return tuple(
                check_number(self.source, f"{key}[{i}]", x, positive=True)
                for i, x in enumerate(value)
            )

        theta = params.get("rope_theta")
        original_key = f"{prefix}.original_max_position_embeddings"
        original = params.get("original_max_position_embeddings")
        if original is None:
            original_key = "original_max_position_embeddings"
            original = self.data.get(original_key)
        return RopeSpec(
            rope_type=rope_type,
            theta=default_theta
            if theta is None
            else check_number(self.source, theta_key, theta, positive=True),
            factor=number("factor"),
            low_freq_factor=number("low_freq_factor"),
            high_freq_factor=number("high_freq_factor"),
            original_max_position_embeddings=None
            if original is None
            else check_integer(self.source, original_key, original, minimum=1),
            beta_fast=number("beta_fast"),
            beta_slow=number("beta_slow"),
            attention_factor=number("attention_factor"),
            mscale=number("mscale", positive=False),
            mscale_all_dim=number("mscale_all_dim", positive=False),
            truncate=check_boolean(self.source, f"{prefix}.truncate", params.get("truncate", True)),
            short_factor=factors("short_factor"),
            long_factor=factors("long_factor"),
        )

    def partial_rotary_factor(self) -> float:
        """Fraction of head_dim that rotates (Phi-4-mini: 0.75), in (0, 1]."""
        params = self.data.get("rope_parameters") or {}
        if isinstance(params, dict) and params.get("partial_rotary_factor") is not None:
            key, value = "rope_parameters.partial_rotary_factor", params["partial_rotary_factor"]
        else:
            key, value = "partial_rotary_factor", self.data.get("partial_rotary_factor", 1.0)
        if value is None:
            return 1.0
        return check_number(self.source, key, value, positive=True, maximum=1.0)
