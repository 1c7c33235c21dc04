"""HF checkpoint layouts of routed experts <-> the stacked layout, and the MoE key maps.

Published Qwen3-MoE, Qwen2-MoE and OLMoE checkpoints store one tensor per expert
(``model.layers.{l}.mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight``) and Mixtral's
``model.layers.{l}.block_sparse_moe.experts.{e}.{w1,w3,w2}.weight`` (w1 = gate, w3 = up,
w2 = down) with its router at ``block_sparse_moe.gate.weight``. transformers 5 keeps them stacked
in memory (``mlp.experts.gate_up_proj`` [E, 2I, D], ``mlp.experts.down_proj`` [E, D, I],
``mlp.gate.weight``) but still writes the per-expert keys in ``save_pretrained``, which is also
what transformers 4 and vLLM read.

``stack_experts`` turns either layout into the stacked HF layout, which the family's ``KeyMap``
renames one-to-one to native keys; ``unstack_experts`` writes the per-expert layout back.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from tune.models.key_map import LLAMA_KEY_MAP, KeyMap

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ExpertKeyLayout:
    """How a checkpoint names one layer's routed experts on disk.

    Args:
        module: the MoE module under ``model.layers.{l}`` ("mlp" or Mixtral's "block_sparse_moe").
        gate: per-expert gate projection name.
        up: per-expert up projection name.
        down: per-expert down projection name.
    """

    module: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"


QWEN_EXPERT_KEYS = ExpertKeyLayout()
MIXTRAL_EXPERT_KEYS = ExpertKeyLayout("block_sparse_moe", "w1", "w3", "w2")

_STACKED = re.compile(r"(model\.layers\.\d+\.)mlp\.experts\.gate_up_proj")


def _per_expert_pattern(layout: ExpertKeyLayout) -> re.Pattern[str]:
    names = "|".join(re.escape(n) for n in (layout.gate, layout.up, layout.down))
    module = re.escape(layout.module)
    return re.compile(
        rf"(?P<prefix>model\.layers\.\d+\.){module}\.experts\.(?P<e>\d+)\.(?P<p>{names})\.weight"
    )


def stack_experts(state_dict: StateDict, layout: ExpertKeyLayout, num_experts: int) -> StateDict:
    """Per-expert HF keys -> stacked ``mlp.experts.gate_up_proj``/``down_proj`` (and the router
    at ``mlp.gate.weight``); keys already stacked pass through.

    Args:
        state_dict: HF keys -> tensors (a whole checkpoint: every expert of a layer must be in it).
        layout: the per-expert key names.
        num_experts: ``E``; each MoE layer must hold experts ``0 .. E-1``, no more.

    Raises:
        ValueError: a layer misses experts or projections (named), or gate and up differ in shape.
    """
    pattern = _per_expert_pattern(layout)
    router = f".{layout.module}.gate.weight"
    # prefix -> projection -> expert -> tensor
    found: dict[str, dict[str, dict[int, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    out: StateDict = {}
    for key, value in state_dict.items():
        m = pattern.fullmatch(key)
        if m:
            found[m["prefix"]][m["p"]][int(m["e"])] = value
        elif layout.module != "mlp" and key.startswith("model.layers.") and key.endswith(router):
            out[key[: -len(router)] + ".mlp.gate.weight"] = value
        else:
            out[key] = value
    for prefix, projections in found.items():
        experts = []
        for name in (layout.gate, layout.up, layout.down):
            have = projections.get(name, {})
            if sorted(have) != list(range(num_experts)):
                missing = sorted(set(range(num_experts)) - set(have))
                extra = sorted(set(have) - set(range(num_experts)))
                raise ValueError(
                    f"{prefix}{layout.module}.experts.*.{name}.weight: expected experts "
                    f"0..{num_experts - 1}, missing {missing}, unexpected {extra}"
                )
            experts.append([have[e] for e in range(num_experts)])
        gates, ups, downs = experts
        if gates[0].shape != ups[0].shape:
            raise ValueError(
                f"{prefix}{layout.module}.experts.0: {layout.gate} {tuple(gates[0].shape)} and "
                f"{layout.up} {tuple(ups[0].shape)} must have one shape"
            )
        gate_up = torch.stack([torch.cat(pair, dim=0) for pair in zip(gates, ups, strict=True)])
        out[prefix + "mlp.experts.gate_up_proj"] = gate_up  # [E, 2I, D]
        out[prefix + "mlp.experts.down_proj"] = torch.stack(downs)  # [E, D, I]
    return out


def unstack_experts(state_dict: StateDict, layout: ExpertKeyLayout) -> StateDict:
    """Inverse of ``stack_experts``: stacked HF keys -> per-expert keys (views, no copies)."""
    out: StateDict = {}
    router = ".mlp.gate.weight"
    for key, value in state_dict.items():
        m = _STACKED.fullmatch(key)
        if m:
            prefix = m[1] + layout.module + ".experts."
            gate, up = value.chunk(2, dim=1)  # [E, I, D] each
            down = state_dict[m[1] + "mlp.experts.down_proj"]
            for e in range(value.shape[0]):
                out[f"{prefix}{e}.{layout.gate}.weight"] = gate[e]
                out[f"{prefix}{e}.{layout.up}.weight"] = up[e]
                out[f"{prefix}{e}.{layout.down}.weight"] = down[e]
        elif key.endswith(".mlp.experts.down_proj"):
            continue
        elif layout.module != "mlp" and key.startswith("model.layers.") and key.endswith(router):
            out[key[: -len(router)] + f".{layout.module}.gate.weight"] = value
        else:
            out[key] = value
    return out


def moe_key_map(base: KeyMap = LLAMA_KEY_MAP) -> KeyMap:
    """``base`` plus the stacked-expert, router and shared-expert rules (HF in-memory names)."""
    prefix = "model.layers.{layer}.mlp"
    return KeyMap(
        [
            *base.rules,
            (f"{prefix}.experts.{{p:gate_up_proj|down_proj}}", "layers.{layer}.mlp.experts.{p}"),
            (f"{prefix}.gate.weight", "layers.{layer}.mlp.router.weight"),
            (
                f"{prefix}.shared_expert.{{s:gate_proj|up_proj|down_proj}}.weight",
                "layers.{layer}.mlp.shared_expert.{s}.weight",
            ),
            (f"{prefix}.shared_expert_gate.weight", "layers.{layer}.mlp.shared_expert_gate.weight"),
        ]
    )


MOE_KEY_MAP = moe_key_map()


def expert_hooks(layout: ExpertKeyLayout) -> dict[str, Any]:
    """``split_fused``/``fuse_split`` keyword arguments of a ``ModelFamily`` for ``layout``."""

    def to_stacked(state_dict: StateDict, cfg: Any) -> StateDict:
        return stack_experts(state_dict, layout, cfg.num_experts)

    def to_per_expert(state_dict: StateDict, cfg: Any) -> StateDict:
        return unstack_experts(state_dict, layout)

    return {"split_fused": to_stacked, "fuse_split": to_per_expert}
