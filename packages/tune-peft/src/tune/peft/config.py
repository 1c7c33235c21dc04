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


@dataclass(frozen=True)
class LoraConfig:
    """Settings of one LoRA (or DoRA) adapter.

    Args:
        r: Rank of the update `B @ A` (A is [r, in], B is [out, r]).
        alpha: Scale numerator: the update is multiplied by `alpha / r` (`alpha / sqrt(r)` with
            rsLoRA).
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

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoraConfig.r must be a positive int, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"LoraConfig.alpha must be a positive number, got {self.alpha!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"LoraConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ValueError(f"LoraConfig.init must be one of {INITS}, got {self.init!r}")
        if self.bias not in BIAS_MODES:
            raise ValueError(f"LoraConfig.bias must be one of {BIAS_MODES}, got {self.bias!r}")
        targets: tuple[str, ...] | str
        if isinstance(self.targets, str):
            targets = ALL_LINEAR if self.targets == ALL_LINEAR else (self.targets,)
        else:
            targets = tuple(self.targets)
            if not targets:
                raise ValueError("LoraConfig.targets is empty: give module-name patterns")
            if ALL_LINEAR in targets and len(targets) > 1:
                raise ValueError(
                    f"LoraConfig.targets mixes {ALL_LINEAR!r} with other patterns: {targets}; "
                    f"use {ALL_LINEAR!r} alone and `exclude` to leave modules out"
                )
            if targets == (ALL_LINEAR,):
                targets = ALL_LINEAR
        for pattern in (*([] if targets == ALL_LINEAR else targets), *self.exclude):
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"LoraConfig patterns must be non-empty strings, got {pattern!r}")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "head_names", tuple(self.head_names))

    @property
    def scaling(self) -> float:
        """Multiplier of the low-rank update: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)
