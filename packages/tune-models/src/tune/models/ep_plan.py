"""Expert-parallel plans as plain data: module-name pattern -> style name (applied elsewhere).

Every MoE family keeps its routed experts stacked at ``layers.<i>.mlp.experts``
(``GroupedExperts``: ``gate_up_proj`` [E, 2H, D], ``down_proj`` [E, D, H] and, for gpt-oss, their
biases [E, ...]), so one pattern names them all; layers a config keeps dense (``GatedMLP``) do
not match it. ``tune.dist.apply_ep`` shards the matched modules' stacked parameters over an
``ep`` mesh dimension (style ``"grouped_experts"``). Routers and shared experts are not in the
plan: they are data-parallel like attention.
"""

from __future__ import annotations

from tune.models.build import ConfigLike
from tune.models.tp_plan import experts_modules, plan_model

EP_STYLE = "grouped_experts"
EXPERTS_PATTERN = "layers.*.mlp.experts"


def ep_plan(model_or_config: ConfigLike) -> dict[str, str]:
    """The expert-parallel plan of a model: ``{"layers.*.mlp.experts": "grouped_experts"}`` for
    a mixture-of-experts model, ``{}`` for a dense one.

    Args:
        model_or_config: a native model, family config or HF config (dict, ``config.json`` or
            checkpoint directory; built on the meta device to read its module names).
    """
    return {EXPERTS_PATTERN: EP_STYLE} if experts_modules(plan_model(model_or_config)) else {}


def routed_expert_counts(model_or_config: ConfigLike) -> list[int]:
    """The distinct numbers of routed experts ``E`` of the MoE layers (``[]`` for a dense model);
    an expert-parallel degree must divide each.

    Args:
        model_or_config: as for ``ep_plan``.
    """
    model = plan_model(model_or_config)
    modules = dict(model.named_modules())
    return sorted({int(modules[name].num_experts) for name in experts_modules(model)})
