"""The Transformer runs as pipeline stages: modules of other stages set to None, as
tune.dist.pipeline_stages cuts it (done by hand here; tune-models does not import tune-dist)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tune.models import build_from_hf_config
from tune.models.llama import tiny_llama_config


def _stage(model: nn.Module, layers: list[str], *, first: bool, last: bool) -> nn.Module:
    stage = copy.deepcopy(model)
    stage.layers = nn.ModuleDict({k: stage.layers[k] for k in layers})
    if not first:
        stage.tok_embeddings = None
    if not last:
        stage.norm, stage.output = None, None
    return stage


def test_stages_chain_to_the_whole_model_with_packed_documents() -> None:
    torch.manual_seed(0)
    model = build_from_hf_config(tiny_llama_config(256, hidden_size=32, num_layers=4))
    model.init_weights()
    stages = [
        _stage(model, ["0"], first=True, last=False),
        _stage(model, ["1", "2"], first=False, last=False),
        _stage(model, ["3"], first=False, last=True),
    ]
    tokens = torch.randint(0, 256, (2, 12))
    kwargs = {  # two packed documents per row, positions restarting at each
        "document_ids": torch.tensor([[0] * 5 + [1] * 7, [0] * 9 + [1] * 3]),
        "positions": torch.tensor([list(range(5)) + list(range(7)), [*range(9), 0, 1, 2]]),
    }
    with torch.no_grad():
        h = tokens
        for stage in stages:
            h = stage(h, **kwargs)
        whole = model(tokens, **kwargs)
        hidden = stages[1](stages[0](tokens, **kwargs), **kwargs)
    assert hidden.shape == (2, 12, 32)  # a middle stage returns hidden states
    assert torch.equal(h, whole)
    with pytest.raises(ValueError, match=r"tokens must be \[batch, seq, dim\] hidden states"):
        stages[1](tokens)
    with pytest.raises(ValueError, match=r"positions shape \(2, 11\) must equal tokens shape"):
        stages[2](hidden, positions=kwargs["positions"][:, :11])


def test_tied_stage_without_embedding_loads_and_inits() -> None:
    model = build_from_hf_config(
        tiny_llama_config(256, hidden_size=32, num_layers=2, tie_word_embeddings=True)
    )
    last = _stage(model, ["1"], first=False, last=True)
    last.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("tok_embeddings")},
        strict=False,
    )  # the re-tie hook must not touch the missing embedding
    last.init_buffers()
    assert last.output is not None
    assert torch.equal(last.output.weight, model.tok_embeddings.weight)
