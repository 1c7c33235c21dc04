"""PEFT's `adapter_config.json` vocabulary <-> `LoraConfig`, with errors naming file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune.peft.config import (
    ALL_LINEAR,
    BIAS_MODES,
    LoraConfig,
    check_alpha,
    check_dropout,
    check_flag,
    check_rank,
    check_scaling,
)
from tune.peft.module_patterns import REGEX_PREFIX

_GLOB_CHARS = frozenset("*?[")
# PEFT settings we cannot represent; loading refuses anything but these values.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "modules_to_save": None,
    "lora_bias": False,
    "fan_in_fan_out": False,
    "use_qalora": False,
    "trainable_token_indices": None,
    "layer_replication": None,
}


def _peft_alpha(alpha: float) -> int | float:
    return int(alpha) if float(alpha).is_integer() else float(alpha)


def to_peft_config(
    config: LoraConfig,
    target_modules: list[str] | str | None = None,
    *,
    task_type: str | None = "CAUSAL_LM",
    base_model_name_or_path: str | None = None,
    target_parameters: list[str] | None = None,
) -> dict[str, Any]:
    """`config` in PEFT's `adapter_config.json` vocabulary.

    Args:
        config: The adapter's settings.
        target_modules: PEFT's `target_modules` (HF names); default derived from `config.targets`
            (plain names as they are, `"all-linear"`, or one `re:` regex), which must then not
            contain globs. `export_peft_adapter` passes the exact set it adapted.
        task_type: PEFT task type (`"CAUSAL_LM"`), or None.
        base_model_name_or_path: Recorded for PEFT's loader; may be None.
        target_parameters: PEFT's `target_parameters` (HF parameter names or suffixes); default
            `config.target_parameters` (which must then be plain names).
    """
    if target_parameters is None and config.target_parameters:
        if any(
            p.startswith(REGEX_PREFIX) or _GLOB_CHARS.intersection(p)
            for p in config.target_parameters
        ):
            raise ValueError(
                f"LoraConfig.target_parameters {list(config.target_parameters)} contain globs or "
                "regexes, which PEFT cannot read; pass target_parameters (export_peft_adapter "
                "computes it)"
            )
        target_parameters = list(config.target_parameters)
    exclude: list[str] | str | None = None
    if target_modules is None and not config.targets and config.target_parameters:
        target_modules = []
    if target_modules is None:
        patterns = [] if config.targets == ALL_LINEAR else list(config.targets)
        if any(_GLOB_CHARS.intersection(p) for p in [*patterns, *config.exclude]):
            raise ValueError(
                f"LoraConfig targets/exclude {patterns + list(config.exclude)} contain globs, which "
                "PEFT cannot read; pass target_modules (export_peft_adapter computes it)"
            )
        regexes = [p for p in patterns if p.startswith(REGEX_PREFIX)]
        if config.targets == ALL_LINEAR:
            target_modules = ALL_LINEAR
        elif regexes:
            if len(patterns) > 1:
                raise ValueError(f"PEFT takes one regex or a list of names, got {patterns}")
            target_modules = regexes[0][len(REGEX_PREFIX) :]
        else:
            target_modules = patterns
        if config.exclude:
            exclude = list(config.exclude)
    init: bool | str = "gaussian" if config.init == "gaussian" else True
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "r": config.r,
        "lora_alpha": _peft_alpha(config.alpha),
        "lora_dropout": float(config.dropout),
        "target_modules": target_modules,
        "exclude_modules": exclude,
        "target_parameters": target_parameters or None,
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        # PiSSA adapters are saved as plain LoRA factors over the residual base they were trained on.
        "init_lora_weights": init,
        "inference_mode": True,
        "layers_pattern": None,
        **_UNSUPPORTED_DEFAULTS,
    }


AdapterConfigLike = dict[str, Any] | str | Path


def read_adapter_config(path: str | Path) -> dict[str, Any]:
    """The parsed `adapter_config.json` of a PEFT directory (or the file itself), as a dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON, or not a JSON object (the message names the file).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "adapter_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no PEFT adapter config at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _config_and_source(
    adapter_config: AdapterConfigLike, source: str | None
) -> tuple[dict[str, Any], str]:
    if isinstance(adapter_config, (str, Path)):
        path = Path(adapter_config)
        data = read_adapter_config(path)
        return data, source or str(path / "adapter_config.json" if path.is_dir() else path)
    if not isinstance(adapter_config, dict):
        raise ValueError(
            f"{source or 'adapter_config.json'}: expected a JSON object, got "
            f"{type(adapter_config).__name__}"
        )
    return adapter_config, source or "adapter_config.json"


def _value(config: dict[str, Any], key: str, default: Any) -> Any:
    """``config[key]``, or ``default`` when absent or null (PEFT writes null for defaults)."""
    value = config.get(key)
    return default if value is None else value


def _peft_patterns(value: Any, where: str) -> tuple[str, ...] | str:
    if value is None:
        return ()
    if isinstance(value, str) and value:
        return ALL_LINEAR if value == ALL_LINEAR else (REGEX_PREFIX + value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(sorted(value))
    raise ValueError(
        f"{where}: expected a non-empty string, a list of non-empty strings or null, got {value!r}"
    )


def from_peft_config(adapter_config: AdapterConfigLike, *, source: str | None = None) -> LoraConfig:
    """A `LoraConfig` from PEFT's `adapter_config.json` (its parsed contents, the file or its dir).

    Target patterns keep PEFT's meaning (a list: names matched as dot-suffixes; a string: a full
    regex, here `re:<regex>`). Settings tune.peft cannot represent (rank/alpha patterns,
    `modules_to_save`, `lora_bias`, ...) raise, and so do values of the wrong type or range:
    `r` a positive int, `lora_alpha` a finite number > 0 with `alpha / r` (rsLoRA:
    `alpha / sqrt(r)`) at most `MAX_SCALING`, `lora_dropout` in [0, 1), booleans as booleans.

    Args:
        adapter_config: The parsed JSON, or a path to `adapter_config.json` or its directory.
        source: Name of the file for error messages (default: the path, or
            `"adapter_config.json"` for a dict).

    Raises:
        ValueError: `<source>: <key>: expected ..., got <value>` (or a setting not supported).
    """
    config, where = _config_and_source(adapter_config, source)
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(f"{where}: peft_type: expected 'LORA', got {peft_type!r}")
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        value = config.get(key, default)
        if value is not None and value != default and not (isinstance(default, dict) and not value):
            raise ValueError(
                f"{where}: {key}: {value!r} is not supported by tune.peft (expected {default!r})"
            )
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise ValueError(f"{where}: {key}: required but missing")
    r = check_rank(f"{where}: r", config["r"])
    alpha = check_alpha(f"{where}: lora_alpha", config["lora_alpha"])
    use_rslora = check_flag(f"{where}: use_rslora", _value(config, "use_rslora", False))
    check_scaling(f"{where}: lora_alpha", r, alpha, use_rslora)
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.startswith("pissa"):
        init_name = "pissa"
    elif init == "gaussian":
        init_name = "gaussian"
    elif init is True or init is False:
        init_name = "default"
    else:
        raise ValueError(f"{where}: init_lora_weights: {init!r} is not supported")
    bias = _value(config, "bias", "none")
    if bias not in BIAS_MODES:
        raise ValueError(f"{where}: bias: expected one of {list(BIAS_MODES)}, got {bias!r}")
    targets = _peft_patterns(config.get("target_modules"), f"{where}: target_modules")
    exclude = _peft_patterns(config.get("exclude_modules"), f"{where}: exclude_modules")
    if exclude == ALL_LINEAR:
        raise ValueError(f"{where}: exclude_modules: cannot be 'all-linear'")
    params = config.get("target_parameters")
    if params is not None and (
        not isinstance(params, list) or not all(isinstance(p, str) and p for p in params)
    ):
        raise ValueError(
            f"{where}: target_parameters: expected a list of non-empty strings or null, got "
            f"{params!r}"
        )
    if params and config.get("target_modules") in (None, []):
        targets = ()  # experts only: PEFT adapts no linear layer then
    elif not targets:
        targets = ALL_LINEAR
    dropout = check_dropout(f"{where}: lora_dropout", _value(config, "lora_dropout", 0.0))
    use_dora = check_flag(f"{where}: use_dora", _value(config, "use_dora", False))
    try:
        return LoraConfig(
            r=r,
            alpha=config["lora_alpha"],
            dropout=dropout,
            targets=targets,
            exclude=exclude,
            target_parameters=tuple(params or ()),
            use_rslora=use_rslora,
            use_dora=use_dora,
            init=init_name,  # type: ignore[arg-type]
            bias=bias,
        )
    except ValueError as e:  # settings valid alone but not together (e.g. dropout with experts)
        raise ValueError(f"{where}: {e}") from e
