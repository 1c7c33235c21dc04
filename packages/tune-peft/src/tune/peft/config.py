"""LoRA / DoRA adapter settings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

ALL_LINEAR = "all-linear"
INITS = ("default", "gaussian", "pissa")
BIAS_MODES = ("none", "all", "lora_only")

Init = Literal["default", "gaussian", "pissa"]
BiasMode = Literal["none", "all", "lora_only"]

# Largest rank accepted: wider than any projection of the supported model families (Llama 3.1
# 405B's MLP is 53248 wide), so a larger value is a typo, not a choice.
MAX_RANK = 65536
# Largest LoRA scaling (alpha / r, or alpha / sqrt(r) with rsLoRA) accepted. The update is
# `scaling * B(A(x))` and the gradients reaching A and B carry the same factor: beyond 1e4 the
# adapter term outweighs the base output by orders of magnitude once B leaves zero, an adapter
# output of 6.6 already overflows fp16 (max 65504), and the fp32 sums in the backward lose the base
# gradient entirely. Published recipes use 0.25-4 (rsLoRA up to ~64), so 1e4 is far above any
# real setting and catches mistakes like `alpha: 1e30` or an alpha typed in place of lr.
MAX_SCALING = 1e4


def _got(value: object) -> str:
    if isinstance(value, (str, bool)):
        return f"{value!r} ({type(value).__name__})"
    return repr(value)


def check_rank(where: str, value: object) -> int:
    """``value`` as a rank: an int (not bool) in [1, MAX_RANK]; ``where`` prefixes the error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise ValueError(f"{where}: expected a positive integer <= {MAX_RANK}, got {_got(value)}")
    return value


def check_alpha(where: str, value: object) -> float:
    """``value`` as a LoRA alpha: a finite number > 0 (bools, strings and NaN refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where}: expected a finite number > 0, got {_got(value)}")
    return float(value)


def check_scaling(where: str, r: int, alpha: float, use_rslora: bool) -> float:
    """The LoRA scaling for (r, alpha), which must lie in (0, MAX_SCALING]."""
    scaling = alpha / (math.sqrt(r) if use_rslora else r)
    if not 0 < scaling <= MAX_SCALING:
        rule = "alpha / sqrt(r)" if use_rslora else "alpha / r"
        raise ValueError(
            f"{where}: scaling {rule} = {scaling:.6g} (alpha={alpha:g}, r={r}) is outside "
            f"(0, {MAX_SCALING:g}]; an update scaled this much overflows activations and "
            "gradients. Lower alpha or raise r."
        )
    return scaling


def check_dropout(where: str, value: object) -> float:
    """``value`` as a dropout probability: a number in [0, 1) (bools, strings and NaN refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0.0 <= float(value) < 1.0
    ):
        raise ValueError(f"{where}: expected a number in [0, 1), got {_got(value)}")
    return float(value)


def check_flag(where: str, value: object) -> bool:
    """``value`` if it is a bool; ``"false"`` or ``0`` are refused, not guessed at."""
    if not isinstance(value, bool):
        raise ValueError(f"{where}: expected True or False, got {_got(value)}")
    return value


def _names(where: str, value: object) -> tuple[str, ...]:
    """A tuple of non-empty strings from a string or a sequence of strings."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise ValueError(f"{where}: expected a string or a list of strings, got {_got(value)}")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{where}: patterns must be non-empty strings, got {_got(item)}")
    return tuple(items)


def _check_parameter_lora(config: LoraConfig) -> None:
    # The update is added to the weight, where input dropout has no place; PEFT refuses the same.
    unsupported = {
        "dropout": config.dropout != 0,
        "use_dora": config.use_dora,
        "init": config.init == "pissa",
    }
    for key, bad in unsupported.items():
        if bad:
            raise ValueError(
                f"LoraConfig.{key}: {getattr(config, key)!r} is not supported with target_parameters "
                "(LoRA on stacked expert weights); expected dropout=0, use_dora=False, init other "
                "than 'pissa'"
            )


@dataclass(frozen=True)
class LoraConfig:
    """Settings of one LoRA (or DoRA) adapter, checked on construction.

    Raises `ValueError` naming the field, what was expected and the value, e.g.
    `LoraConfig.r: expected a positive integer <= 65536, got 0`.

    Args:
        r: Rank of the update `B @ A` (A is [r, in], B is [out, r]); 1 to `MAX_RANK`.
        alpha: Scale numerator: the update is multiplied by `alpha / r` (`alpha / sqrt(r)` with
            rsLoRA). Must be finite and > 0, and the scaling at most `MAX_SCALING` (1e4).
        dropout: Dropout probability applied to the adapter's input only.
        targets: Module-name patterns of the `nn.Linear` layers to adapt, or `"all-linear"` for
            every `nn.Linear` except the output head. A pattern is a plain name (`"q_proj"`,
            `"attn.q_proj"`: matches a full name or a dot-suffix of it), a glob (`"layers.*.mlp.*"`,
            matched against the full name and each dot-suffix) or a regex written `"re:<regex>"`
            (full match against the full name).
        exclude: Patterns (same syntax) of modules never to adapt.
        use_rslora: Scale by `alpha / sqrt(r)` instead of `alpha / r` (rank-stabilised LoRA).
        use_dora: Weight-decomposed LoRA: adds a trainable magnitude vector per output row.
        init: `"default"` (A Kaiming-uniform, B zero: the adapter starts as a no-op), `"gaussian"`
            (A normal with std 1/r, B zero) or `"pissa"` (A, B from the top-r singular vectors of
            the base weight, which is replaced by the residual; see the guide).
        bias: Which base biases train with the adapter: `"none"`, `"all"` (every bias in the model)
            or `"lora_only"` (biases of adapted layers). Trained biases are part of the adapter
            state.
        head_names: Names (dot-suffix match) of the output head that `"all-linear"` leaves out.
        target_parameters: Parameter-name patterns (same syntax) of stacked 3-D weights
            `[E, out, in]` (mixture-of-experts `experts.gate_up_proj`, `experts.down_proj`) to
            adapt with per-expert factors (PEFT's `target_parameters`). `targets` may then be
            empty. Needs `dropout=0`, no DoRA and no PiSSA (as PEFT).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: Sequence[str] | str = ALL_LINEAR
    exclude: Sequence[str] = ()
    use_rslora: bool = False
    use_dora: bool = False
    init: Init = "default"
    bias: BiasMode = "none"
    head_names: Sequence[str] = field(default=("output", "lm_head"))
    target_parameters: Sequence[str] = ()

    def __post_init__(self) -> None:
        check_rank("LoraConfig.r", self.r)
        check_alpha("LoraConfig.alpha", self.alpha)
        check_flag("LoraConfig.use_rslora", self.use_rslora)
        check_flag("LoraConfig.use_dora", self.use_dora)
        check_scaling("LoraConfig.alpha", self.r, self.alpha, self.use_rslora)
        check_dropout("LoraConfig.dropout", self.dropout)
        if self.init not in INITS:
            raise ValueError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"LoraConfig.bias must be one of {BIAS_MODES}, got {self.bias!r}")
        params = _names("LoraConfig.target_parameters", self.target_parameters)
        object.__setattr__(self, "target_parameters", params)
        if params:
            _check_parameter_lora(self)
        targets: tuple[str, ...] | str
        if self.targets == ALL_LINEAR:
            targets = ALL_LINEAR
        else:
            targets = _names("LoraConfig.targets", self.targets)
            if not targets and not params:
                raise ValueError("LoraConfig.targets is empty: give module-name patterns")
            if ALL_LINEAR in targets and len(targets) > 1:
                raise ValueError(
                    f"LoraConfig.targets mixes {ALL_LINEAR!r} with other patterns: {targets}; "
                    f"use {ALL_LINEAR!r} alone and `exclude` to leave modules out"
                )
            if targets == (ALL_LINEAR,):
                targets = ALL_LINEAR
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "exclude", _names("LoraConfig.exclude", self.exclude))
        object.__setattr__(self, "head_names", _names("LoraConfig.head_names", self.head_names))

    @property
    def scaling(self) -> float:
        """Multiplier of the low-rank update: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
