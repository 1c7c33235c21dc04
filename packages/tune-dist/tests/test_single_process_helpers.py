"""Reductions, state dicts, signals, module matching and FSDP checks without a process group."""

from __future__ import annotations

import os
import re
import signal

import pytest
import torch
from dist_tiny_transformer import Block, build_model
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

import tune.dist as td
from tune.dist.tensor_parallel import resolve_style


def test_reductions_are_identity_in_one_process() -> None:
    assert td.all_reduce_sum(3).item() == 3
    t = torch.tensor([1.5, 2.0])
    out = td.all_reduce_sum(t)
    assert torch.equal(out, t)
    assert out is not t
    labels = torch.tensor([[-100, 4, 5], [-100, -100, 7]])
    assert td.count_target_tokens(labels).item() == 3
    assert td.any_rank(True) is True
    assert td.any_rank(False) is False


def test_state_dict_helpers_in_one_process() -> None:
    model = build_model(lora=True)
    full = td.gather_full_state_dict(model)
    assert full.keys() == model.state_dict().keys()
    adapters = td.gather_full_state_dict(model, trainable_only=True)
    assert sorted(adapters) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert all(".lora_" in k for k in adapters)
    other = build_model(seed=3, lora=True)
    td.load_full_state_dict(other, full)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in full.items())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        td.load_full_state_dict(other, {**full, "extra.weight": torch.zeros(1)})


def test_stop_signal_handler_sets_flag_and_restores() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with td.StopSignalHandler() as stop:
        assert not stop.requested
        assert not stop.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested
        assert stop.received == signal.SIGUSR1
        assert stop.should_stop()
    assert signal.getsignal(signal.SIGUSR1) == before


def test_find_modules_by_class_pattern_regex_and_predicate() -> None:
    model = build_model()
    blocks = ["layers.0", "layers.1"]
    assert [n for n, _ in td.find_modules(model, Block)] == blocks
    assert [n for n, _ in td.find_modules(model, "layers.*")] == blocks  # outermost only
    assert [n for n, _ in td.find_modules(model, "re:layers\\.\\d+")] == blocks
    assert len(td.find_modules(model, "layers.*", outermost_only=False)) > 10
    linears = td.find_modules(model, lambda n, m: isinstance(m, nn.Linear) and "mlp" in n)
    assert len(linears) == 6
    with pytest.raises(TypeError, match="module selector"):
        td.find_modules(model, 3)  # type: ignore[arg-type]


def test_tp_plan_matching() -> None:
    model = build_model()
    plan = {"layers.*.attn.[qkv]_proj": "colwise", "re:layers\\.\\d+\\.attn\\.o_proj": "rowwise"}
    matched = td.match_plan(model, plan)
    assert [(n, p) for n, _, p in matched][:4] == [
        ("layers.0.attn.q_proj", "layers.*.attn.[qkv]_proj"),
        ("layers.0.attn.k_proj", "layers.*.attn.[qkv]_proj"),
        ("layers.0.attn.v_proj", "layers.*.attn.[qkv]_proj"),
        ("layers.0.attn.o_proj", "re:layers\\.\\d+\\.attn\\.o_proj"),
    ]
    assert len(matched) == 8
    with pytest.raises(ValueError, match=re.escape("'layers.*.attention.wq' matches no module")):
        td.match_plan(model, {"layers.*.attention.wq": "colwise"})
    with pytest.raises(ValueError, match="matched by two plan patterns"):
        td.match_plan(model, {"layers.0.attn.q_proj": "colwise", "layers.*.q_proj": "colwise"})


def test_tp_style_names_translate_to_torch_styles() -> None:
    assert type(resolve_style("colwise")) is ColwiseParallel
    assert type(resolve_style("rowwise")) is RowwiseParallel
    assert type(resolve_style("sequence_parallel")) is SequenceParallel
    rep = resolve_style("colwise_rep")
    assert rep.output_layouts == (Replicate(),)
    seq = resolve_style("rowwise_seq")
    assert seq.output_layouts == (Shard(1),)
    heads = resolve_style("head_sharded")
    assert type(heads) is SequenceParallel
    assert heads.sequence_sharding == (Shard(2),)
    emb = resolve_style("embedding_rowwise")
    assert emb.input_layouts == (Replicate(),)
    custom = ColwiseParallel(use_local_output=False)
    assert resolve_style(custom) is custom
    with pytest.raises(ValueError, match="unknown style 'diagonal'"):
        resolve_style("diagonal", "output")


def test_fsdp_refuses_bad_block_selection_before_sharding() -> None:
    with pytest.raises(ValueError, match="matched no submodule"):
        td.apply_fsdp(build_model(), block_match="blocks.*")
    tied = build_model(tie_embeddings=True)
    with pytest.raises(ValueError, match="tied parameters"):
        td.apply_fsdp(tied, block_match=("output"))
    assert not hasattr(tied.output, "reshard")  # nothing was sharded
    model = build_model()
    with pytest.raises(ValueError, match=r"must be frozen.*'layers\.1\.attn\.q_proj\.weight'"):
        td.apply_fsdp(
            model,
            block_match=Block,
            ignored_params=[model.get_parameter("layers.1.attn.q_proj.weight")],
        )
