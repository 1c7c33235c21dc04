"""MoE router losses, expert-load metrics, the routing-bias update and their place in the steps."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from tune.train import GradientAccumulator
from tune.train.expert_load import expert_load_metrics, layer_label, update_routing_bias
from tune.train.losses.router import (
    load_balancing_loss,
    router_stats_of,
    router_z_loss,
    sequence_load_balancing_loss,
)
from tune.train.steps.preference import PreferenceObjective, micro_batch_preference
from tune.train.steps.router import RouterObjective
from tune.train.steps.token import micro_batch_loss


class Stats(NamedTuple):
    logits: Tensor
    scores: Tensor
    selected_experts: Tensor
    tokens_per_expert: Tensor


class TinyMoE(nn.Module):
    """A duck-typed MoE block: softmax router, top-k, one [D, D] matrix per expert."""

    def __init__(self, dim: int, num_experts: int, top_k: int, routing_bias: bool = False):
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = nn.Parameter(torch.randn(num_experts, dim, dim) * 0.3)
        self.routing_bias: Tensor | None
        if routing_bias:
            self.register_buffer("routing_bias", torch.zeros(num_experts))
        else:
            self.routing_bias = None
        self.router_stats: Stats | None = None
        self.captured: Stats | None = None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [N, D]
        logits = self.router(flat)  # [N, E]
        scores = torch.softmax(logits.float(), dim=-1)
        choose_by = scores if self.routing_bias is None else scores + self.routing_bias
        chosen = torch.topk(choose_by, self.top_k, dim=-1).indices  # [N, k]
        weights = scores.gather(-1, chosen)  # [N, k]
        y = torch.einsum("nd,nkod->nko", flat, self.experts[chosen])  # [N, k, D]
        out = (y * weights.unsqueeze(-1)).sum(dim=1)
        counts = torch.bincount(chosen.reshape(-1), minlength=self.experts.shape[0])
        self.router_stats = self.captured = Stats(logits, scores, chosen, counts)
        return x + out.view_as(x)


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 13, dim: int = 8, experts: int = 4, top_k: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(
            [TinyMoE(dim, experts, top_k, routing_bias=True), TinyMoE(dim, experts, top_k)]
        )
        self.output = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor, **_: Any) -> Tensor:
        h = self.embed(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(h)  # type: ignore[no-any-return]

    def router_stats(self) -> dict[str, Any]:  # like tune.models' Transformer: not a block
        return {"method": True}


def _batch(seed: int, rows: int = 2, seq: int = 6) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 13, (rows, seq), generator=g)
    mask = torch.ones(rows, seq, dtype=torch.long)
    mask[-1, -2:] = 0  # the last row is padded
    labels = tokens.clone()
    labels[mask == 0] = -100
    labels[:, 0] = -100  # a prompt token
    return {"tokens": tokens, "labels": labels, "attention_mask": mask}


def _captured(model: TinyLM) -> list[Stats]:
    return [layer.captured for layer in model.layers]  # type: ignore[misc]


def test_load_balancing_and_z_loss_match_transformers() -> None:
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    switch = pytest.importorskip(
        "transformers.models.switch_transformers.modeling_switch_transformers"
    )
    torch.manual_seed(0)
    b, t, e, k = 3, 7, 8, 2
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, :2] = 0
    for attention_mask in (None, mask):
        ours_in = [(torch.randn(b * t, e) * 2).requires_grad_() for _ in range(3)]
        theirs_in = [x.detach().clone().requires_grad_() for x in ours_in]
        ours = load_balancing_loss(ours_in, k, attention_mask)
        theirs = mixtral.load_balancing_loss_func(tuple(theirs_in), e, k, attention_mask)
        assert abs(float(ours.detach()) - float(theirs.detach())) <= 1e-6
        ours.backward()
        theirs.backward()
        for a, c in zip(ours_in, theirs_in, strict=True):
            torch.testing.assert_close(a.grad, c.grad, atol=1e-6, rtol=0)
    logits = torch.randn(2, 5, e) * 3
    expected = switch.router_z_loss_func(logits)
    assert abs(float(router_z_loss(logits.reshape(-1, e))) - float(expected)) <= 1e-5
    # Layers pooled = the tokens of all layers concatenated.
    two = [logits.reshape(-1, e), logits.reshape(-1, e) * 0.5]
    pooled = switch.router_z_loss_func(torch.cat([x.view(2, 5, e) for x in two], dim=1))
    assert abs(float(router_z_loss(two)) - float(pooled)) <= 1e-5


def test_router_z_loss_values() -> None:
    assert float(router_z_loss(torch.zeros(5, 4))) == pytest.approx(math.log(4.0) ** 2)
    logits = torch.tensor([[0.0, 10.0, 0.0, 0.0]])
    assert float(router_z_loss(logits)) == pytest.approx((10.0 + 3 * 4.5399e-5) ** 2, rel=1e-4)


def test_load_balancing_loss_by_hand() -> None:
    ln3 = math.log(3.0)
    balanced = torch.tensor([[ln3, 0.0], [0.0, ln3], [5.0, 0.0]])  # p = .75/.25, .25/.75, pad
    mask = torch.tensor([[1, 1, 0]])
    # f = [.5, .5], P = [.5, .5]: E * sum f P = 2 * .5 = 1 = k.
    assert float(load_balancing_loss(balanced, 1, mask)) == pytest.approx(1.0, abs=1e-6)
    skewed = torch.tensor([[ln3, 0.0], [ln3, 0.0]])  # f = [1, 0], P = [.75, .25]
    assert float(load_balancing_loss(skewed, 1)) == pytest.approx(1.5, abs=1e-6)
    z = router_z_loss(balanced, mask)  # logsumexp = ln 4 for both real tokens
    assert float(z) == pytest.approx(math.log(4.0) ** 2, abs=1e-6)
    with pytest.raises(ValueError, match=r"attention_mask of shape \(1, 2\)"):
        load_balancing_loss(balanced, 1, torch.ones(1, 2))


def _sequence_loss_loop(scores: list[Tensor], chosen: list[Tensor], mask: Tensor) -> float:
    b, t = mask.shape
    total = 0.0
    for s, c in zip(scores, chosen, strict=True):
        e, k = s.shape[-1], c.shape[-1]
        per_row = []
        for row in range(b):
            keep = [row * t + j for j in range(t) if mask[row, j]]
            count = [0.0] * e
            for n in keep:
                for expert in c[n].tolist():
                    count[expert] += 1
            p = s[keep] / s[keep].sum(dim=-1, keepdim=True)
            f = [e / (k * len(keep)) * count[i] for i in range(e)]
            per_row.append(sum(f[i] * float(p[:, i].mean()) for i in range(e)))
        total += sum(per_row) / b
    return total


def test_sequence_load_balancing_loss() -> None:
    torch.manual_seed(1)
    b, t, e, k = 2, 5, 6, 2
    scores = [torch.sigmoid(torch.randn(b * t, e)) for _ in range(2)]
    chosen = [torch.topk(s + torch.randn(e) * 0.1, k).indices for s in scores]  # a biased choice
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 3:] = 0
    ours = sequence_load_balancing_loss(scores, chosen, b, mask)
    assert float(ours) == pytest.approx(_sequence_loss_loop(scores, chosen, mask), abs=1e-6)
    # Balanced: every expert chosen equally often, uniform scores -> 1 per layer.
    uniform = torch.full((4, 4), 0.3)
    one_each = torch.tensor([[0], [1], [2], [3]])
    assert float(sequence_load_balancing_loss(uniform, one_each, 1)) == pytest.approx(1.0)


def test_expert_load_metrics_by_hand() -> None:
    loads = {
        "layers.3.mlp": torch.tensor([6, 2, 0, 0]),
        "blocks.7.moe": torch.tensor([2.0, 2.0, 2.0, 2.0]),
        "idle.moe": torch.zeros(4),
    }
    m = expert_load_metrics(loads, per_expert=True)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(4)
    assert m["moe/layer3/max_over_mean"] == pytest.approx(3.0)
    assert m["moe/layer3/entropy"] == pytest.approx(entropy)
    assert m["moe/layer3/tokens"] == 8.0
    assert m["moe/layer3/expert0"] == 6.0
    assert m["moe/layer3/expert3"] == 0.0
    assert m["moe/layer7/max_over_mean"] == pytest.approx(1.0)
    assert m["moe/layer7/entropy"] == pytest.approx(1.0)
    assert m["moe/max_over_mean"] == pytest.approx(2.0)
    assert m["moe/entropy"] == pytest.approx((entropy + 1.0) / 2)
    assert not any(k.startswith("moe/layer2") for k in m)  # no tokens: left out
    assert layer_label("moe", 5) == "layer5"


def test_routing_bias_update_direction_and_reduction() -> None:
    model = TinyLM()
    calls = []

    def fake_reduce(t: Tensor) -> Tensor:  # the other rank's loads are [5, 0, 1, 2] and [0]*4
        calls.append(t.clone())
        return t + torch.tensor([5.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0], dtype=t.dtype)

    local = {"layers.0": torch.tensor([1, 3, 2, 2]), "layers.1": torch.tensor([1, 1, 1, 5])}
    assert update_routing_bias(model, local, rate=0.01, reduce=fake_reduce) == 1
    assert len(calls) == 1  # one all-reduce for all layers
    # Global [6, 3, 3, 4], mean 4: expert 0 over-loaded (down), 1 and 2 under (up), 3 level.
    bias = model.layers[0].routing_bias
    assert bias is not None
    torch.testing.assert_close(bias, torch.tensor([-0.01, 0.01, 0.01, 0.0]))
    update_routing_bias(model, local, rate=0.01)  # this rank alone: mean 2 -> [+, -, 0, 0]
    torch.testing.assert_close(bias, torch.tensor([0.0, 0.0, 0.01, 0.0]))
    with pytest.raises(ValueError, match="no module 'nope'"):
        update_routing_bias(model, {"nope": torch.ones(4)}, rate=0.01)


def test_token_step_adds_the_router_penalty_and_its_gradient() -> None:
    torch.manual_seed(0)
    model, batch = TinyLM(), _batch(0)
    assert [name for name, _ in router_stats_of(model)] == []
    plain = micro_batch_loss(model, batch, fused=False)
    assert [name for name, _ in router_stats_of(model)] == ["layers.0", "layers.1"]
    router = RouterObjective(aux_loss_coef=0.1, z_loss_coef=0.01)
    with_router = micro_batch_loss(model, batch, fused=False, router=router)
    assert [name for name, _ in router_stats_of(model)] == []  # cleared by the step
    assert callable(model.router_stats)  # the model's own method is left alone
    stats, mask, n = _captured(model), batch["attention_mask"], plain.num_tokens
    aux = load_balancing_loss([s.logits for s in stats], 2, mask)
    z = router_z_loss([s.logits for s in stats], mask)
    expected = plain.loss_sum + (0.1 * aux + 0.01 * z) * n
    assert float(with_router.loss_sum.detach()) == pytest.approx(float(expected.detach()), abs=1e-5)
    assert int(with_router.num_tokens) == int(n) == 8

    routers = [m.router.weight for m in model.modules() if isinstance(m, TinyMoE)]
    # with_router and the recomputed penalty share the second forward's graph.
    got = torch.autograd.grad(with_router.loss_sum, routers, retain_graph=True)
    want = torch.autograd.grad(expected, routers, retain_graph=True)
    only_penalty = torch.autograd.grad((0.1 * aux + 0.01 * z) * n, routers)
    for g, w, p in zip(got, want, only_penalty, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
        assert float(p.abs().max()) > 1e-4  # the penalty itself reaches every router

    # A dense model: nothing to add, nothing to log.
    dense = RouterObjective(aux_loss_coef=0.1)
    assert dense.penalty(nn.Linear(2, 2), units=3, batch_size=1) is None
    assert dense.finish_step(nn.Linear(2, 2)) == {}


def test_accumulated_step_weights_penalties_by_tokens_and_reduces_metrics() -> None:
    torch.manual_seed(0)
    model, mbs = TinyLM(), [_batch(1), _batch(2, rows=1, seq=5)]
    coef, rate = 0.05, 0.001
    expected_ce, auxes, counts, real_tokens = [], [], [], 0
    with torch.no_grad():
        for mb in mbs:
            loss = micro_batch_loss(model, mb, fused=False)
            stats = _captured(model)
            expected_ce.append(float(loss.loss_sum))
            auxes.append(
                float(load_balancing_loss([s.logits for s in stats], 2, mb["attention_mask"]))
            )
            counts.append(int(loss.num_tokens))
            real_tokens += int(mb["attention_mask"].sum())
    router = RouterObjective(aux_loss_coef=coef, bias_update_rate=rate, per_expert_metrics=True)
    acc = GradientAccumulator()
    acc.start_step([(mb["labels"] != -100).sum() for mb in mbs])
    for mb in mbs:
        acc.scale(micro_batch_loss(model, mb, fused=False, router=router)).backward()
    step = acc.finish_step()
    total = sum(counts)
    weighted_aux = sum(a * c for a, c in zip(auxes, counts, strict=True)) / total
    assert step["loss"] == pytest.approx(sum(expected_ce) / total + coef * weighted_aux, abs=1e-5)

    calls = []

    def two_ranks(t: Tensor) -> Tensor:  # a second rank with identical values
        calls.append(t.shape)
        return t * 2

    metrics = router.finish_step(model, two_ranks)
    assert len(calls) == 1
    assert metrics["moe/aux_loss"] == pytest.approx(weighted_aux, abs=1e-6)
    assert metrics["moe/z_loss"] > 0
    for i in (0, 1):  # padding left out of the loads: k * real tokens, on two ranks
        assert metrics[f"moe/layer{i}/tokens"] == 2 * 2 * real_tokens
    loads = torch.tensor([metrics[f"moe/layer0/expert{j}"] for j in range(4)])
    bias = model.layers[0].routing_bias
    assert bias is not None
    torch.testing.assert_close(bias, rate * torch.sign(loads.mean() - loads).float())
    assert router.finish_step(model) == {}  # reset for the next step


def test_a_skipped_step_reports_loads_but_keeps_the_routing_bias() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    router = RouterObjective(bias_update_rate=0.01)
    micro_batch_loss(model, _batch(1), fused=False, router=router).loss_sum.backward()
    bias = model.layers[0].routing_bias
    assert bias is not None
    metrics = router.finish_step(model, update_bias=False)
    assert metrics["moe/layer0/tokens"] > 0
    assert torch.equal(bias, torch.zeros(4))
    micro_batch_loss(model, _batch(1), fused=False, router=router)
    router.finish_step(model)  # an applied step moves it
    assert bias.abs().sum() > 0


def test_preference_step_adds_the_penalty_to_every_pair() -> None:
    torch.manual_seed(0)
    model, batch = TinyLM(), _batch(3, rows=4)
    objective = PreferenceObjective("simpo")
    plain = micro_batch_preference(model, batch, objective, reference=None, fused=False)
    router = RouterObjective(aux_loss_coef=0.2)
    result = micro_batch_preference(
        model, batch, objective, reference=None, fused=False, router=router
    )
    aux = load_balancing_loss([s.logits for s in _captured(model)], 2, batch["attention_mask"])
    torch.testing.assert_close(result.losses, plain.losses + 0.2 * aux, atol=1e-6, rtol=0)
    assert router.finish_step(model)["moe/aux_loss"] == pytest.approx(float(aux.detach()), abs=1e-6)


def test_router_objective_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="aux_loss_coef=-1"):
        RouterObjective(aux_loss_coef=-1)
    with pytest.raises(ValueError, match="aux_loss='local'"):
        RouterObjective(aux_loss="local")  # type: ignore[arg-type]


def test_real_token_mask_of_padded_and_packed_batches() -> None:
    from tune.train.steps.router import real_token_mask

    padded = {"attention_mask": torch.tensor([[1, 1, 0]])}
    packed = {"padding_mask": torch.tensor([[False, False, True]])}
    both = {**padded, "padding_mask": torch.tensor([[False, True, False]])}
    assert real_token_mask(padded).tolist() == [[True, True, False]]  # type: ignore[union-attr]
    assert real_token_mask(packed).tolist() == [[True, True, False]]  # type: ignore[union-attr]
    assert real_token_mask(both).tolist() == [[True, False, False]]  # type: ignore[union-attr]
    assert real_token_mask({"tokens": torch.zeros(1, 3)}) is None
