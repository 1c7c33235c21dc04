"""Pipeline parallelism: stage cutting (one process) and every schedule against one process.

The distributed numbers come from the shared 2- and 4-rank launches (conftest.py): scenario
``pp`` (PP=2, every schedule) and ``pp_dp`` (PP=2 x DP=2 with FSDP2 over dp); ``pp_dp_tp``
(PP=2 x DP=2 x TP=2) has its own 8-rank launch, marked slow.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_launch import run_scenarios
from dist_pp_scenarios import SCHEDULES
from dist_tiny_transformer import IGNORE, build_model, make_batches, summed_loss
from torch import nn

import tune.dist as td

PARITY = 1e-5


def all_stages(model: nn.Module, pp: int, virtual: int, style: Any = "loop") -> list[nn.Module]:
    """Every rank's stages, in stage order."""
    by_id = {}
    for rank in range(pp):
        ids = td.stage_ids(rank, pp, virtual, style=style)
        stages = td.pipeline_stages(
            model, rank, pp, virtual_stages=virtual, style=style, tied_weights="copy"
        )
        by_id.update(zip(ids, stages, strict=True))
    return [by_id[i] for i in range(pp * virtual)]


def test_layer_ranges_and_stage_ids() -> None:
    assert td.layer_ranges(4, 2) == [range(0, 2), range(2, 4)]
    assert td.layer_ranges(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert td.layer_ranges(4, 2, [1, 3]) == [range(0, 1), range(1, 4)]
    with pytest.raises(ValueError, match="5 pipeline stages but the model has only 4 layers"):
        td.layer_ranges(4, 5)
    with pytest.raises(ValueError, match="must have 2 entries summing to the model's 4 layers"):
        td.layer_ranges(4, 2, [2, 1])
    assert [td.stage_ids(r, 2, 2) for r in (0, 1)] == [[0, 2], [1, 3]]
    assert [td.stage_ids(r, 2, 2, style="v") for r in (0, 1)] == [[0, 3], [1, 2]]
    assert td.stage_ids(3, 4) == [3]
    with pytest.raises(ValueError, match="V-style schedules hold 2 stages per rank, got 3"):
        td.stage_ids(0, 2, 3, style="v")
    assert {n: td.schedule_style(n) for n in ("1f1b", "zbv_zero_bubble")} == {
        "1f1b": "loop",
        "zbv_zero_bubble": "v",
    }
    with pytest.raises(ValueError, match="unknown pipeline schedule 'dualpipe'"):
        td.schedule_style("dualpipe")


@pytest.mark.parametrize(("virtual", "style"), [(1, "loop"), (2, "loop"), (2, "v")])
def test_stages_keep_names_share_weights_and_chain_to_the_model(virtual: int, style: str) -> None:
    model = build_model(n_layers=4)
    tokens = make_batches(1)[0]["tokens"]
    stages = all_stages(model, 2, virtual, style)
    per_stage = 4 // len(stages)
    for sid, stage in enumerate(stages):
        assert list(stage.layers) == [str(i) for i in range(sid * per_stage, (sid + 1) * per_stage)]
        assert (stage.tok_embeddings is not None) == (sid == 0)
        assert (stage.output is not None) == (stage.norm is not None) == (sid == len(stages) - 1)
        params = dict(model.named_parameters())
        for name, p in stage.named_parameters():  # original FQNs, the same tensors
            assert p is params[name], name
    keys = [k for stage in stages for k in stage.state_dict()]
    assert sorted(keys) == sorted(model.state_dict())  # each parameter on exactly one stage
    h = tokens
    for stage in stages:
        h = stage(h)
    assert torch.equal(h, model(tokens))
    assert len(model.layers) == 4  # the model itself is untouched
    assert model.norm is not None


class ListModel(nn.Module):
    """A model whose blocks are an nn.ModuleList iterated as a list."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings: nn.Module | None = nn.Embedding(10, 8)
        self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.norm: nn.Module | None = nn.LayerNorm(8)
        self.output: nn.Module | None = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(x) if self.tok_embeddings is not None else x
        for layer in self.layers:
            h = torch.tanh(layer(h))
        h = self.norm(h) if self.norm is not None else h
        return self.output(h) if self.output is not None else h


def test_module_list_layers_keep_their_indices() -> None:
    torch.manual_seed(0)
    model = ListModel()
    stages = all_stages(model, 2, 1)
    assert isinstance(stages[1].layers, td.StageLayers)
    layers = [f"layers.{i}.{p}" for i in (2, 3) for p in ("weight", "bias")]
    last = [f"{m}.{p}" for m in ("norm", "output") for p in ("weight", "bias")]
    assert sorted(stages[1].state_dict()) == sorted([*layers, *last])
    x = torch.tensor([[1, 2, 3]])
    assert torch.equal(stages[1](stages[0](x)), model(x))


def test_refusals() -> None:
    with pytest.raises(
        ValueError, match=r"tied weights \(output.weight is tok_embeddings.weight\)"
    ):
        td.pipeline_stages(build_model(tie_embeddings=True, n_layers=4), 0, 2)
    assert len(td.pipeline_stages(build_model(tie_embeddings=True), 0, 1)) == 1  # one stage: fine
    with pytest.raises(TypeError, match=r"model\.blocks is NoneType; expected an nn\.ModuleDict"):
        td.pipeline_stages(build_model(), 0, 2, layers_attr="blocks")
    with pytest.raises(AttributeError, match=r"model has no \['embed'\]"):
        td.pipeline_stages(build_model(), 0, 2, first_attrs=("embed",))


def test_tied_weights_copy_gives_the_last_stage_its_own_weight() -> None:
    model = build_model(tie_embeddings=True, n_layers=4)
    first, last = all_stages(model, 2, 1)
    assert first.get_parameter("tok_embeddings.weight") is model.tok_embeddings.weight
    copy_ = last.get_parameter("output.weight")
    assert copy_ is not model.output.weight
    assert torch.equal(copy_, model.output.weight)
    assert model.output.weight is model.tok_embeddings.weight  # the model stays tied


def test_token_normalised_loss_sums_to_the_step_mean() -> None:
    model = build_model()
    batch = make_batches(1, batch=4)[0]
    with torch.no_grad():
        logits = model(batch["tokens"])
    count = (batch["labels"] != IGNORE).sum()
    loss_fn = td.token_normalised_loss(summed_loss, count)
    micro = sum(
        loss_fn(lg, lb) for lg, lb in zip(logits.chunk(4), batch["labels"].chunk(4), strict=True)
    )
    assert torch.allclose(micro, summed_loss(logits, batch["labels"]) / count, atol=1e-6)
    with pytest.raises(ValueError, match="num_tokens=0: the step has no trained tokens"):
        td.token_normalised_loss(summed_loss, 0)(logits, batch["labels"])
    with pytest.raises(RuntimeError, match="num_tokens is unset"):
        td.token_normalised_loss(summed_loss)(logits, batch["labels"])


def _assert_schedules(result: dict[str, Any], names: list[str]) -> None:
    r0 = result["rank0"]
    for name in names:
        assert r0[name]["missing"] == [], name
        assert r0[name]["param_err"] < PARITY, (name, r0[name])
        # the losses come from the ranks that hold the last stage (both dp ranks under DP)
        holders = [r[name] for r in result["ranks"] if r[name]["losses"]]
        assert len(holders) == len(result["ranks"]) // 2, name
        for held in holders:
            assert held["loss_err"] < PARITY, (name, held)
            assert all(b < a for a, b in itertools.pairwise(held["losses"])), held


@pytest.mark.distributed
def test_pipeline_every_schedule_matches_one_process(two_rank: dict[str, Any]) -> None:
    # tied embeddings: stages 0 and 1 on two ranks (1F1B), stages 0 and 3 on rank 0 (ZBV)
    _assert_schedules(two_rank["pp"], [*SCHEDULES, "tied_1f1b", "tied_zbv_zero_bubble"])


@pytest.mark.distributed
def test_pipeline_with_fsdp_matches_one_process(four_rank: dict[str, Any]) -> None:
    names = [n for n in SCHEDULES if n != "looped_bfs"]
    _assert_schedules(four_rank["pp_dp"], [*names, "tied_1f1b"])


@pytest.mark.distributed
def test_dcp_checkpoint_at_pp2_dp2_resumes_at_dp4_and_pp4(four_rank: dict[str, Any]) -> None:
    """Model and (flattened) optimizer state saved by the stages at PP=2 x DP=2 after 2 steps;
    the third step resumed at DP=4 and at PP=4 equals one process's third step."""
    r0 = four_rank["pp_dcp"]["rank0"]
    third = r0["ref_losses"][2]
    assert abs(r0["dp4_loss"] - third) < PARITY, r0
    assert r0["dp4_param_err"] < PARITY, r0
    pp4 = [r["pp4_loss"] for r in four_rank["pp_dcp"]["ranks"]]
    assert pp4[:3] == [None, None, None]  # the loss is known on the last stage's rank
    assert abs(pp4[3] - third) < PARITY, pp4
    assert r0["pp4_missing"] == []
    assert r0["pp4_param_err"] < PARITY, r0


@pytest.mark.slow
@pytest.mark.distributed
def test_pipeline_with_fsdp_and_tp_on_eight_ranks(tmp_path: Path) -> None:
    """PP = 2 x DP = 2 x TP = 2: its own 8-rank launch (~35 s on 2 cores), so not in the CI run."""
    result = run_scenarios(tmp_path, 8, ["pp_dp_tp"])["pp_dp_tp"]
    _assert_schedules(result, [n for n in SCHEDULES if n != "looped_bfs"])
