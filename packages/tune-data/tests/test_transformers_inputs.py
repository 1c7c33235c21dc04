"""Packed batches in a transformers loop: logits and loss equal each document run alone."""

from __future__ import annotations

import itertools

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AttentionInterface,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.modeling_flash_attention_utils import (
    FlashAttentionKwargs,
    prepare_fa_kwargs_from_position_ids,
)

from tune.data import (
    IGNORE_INDEX,
    StreamingLoader,
    TextBuilder,
    block_causal_mask,
    collate_packed,
    collate_padded,
    concat_documents,
    document_positions,
    packed_seq_lens,
    remove_padding,
    shift_labels,
    transformers_inputs,
    transformers_labels,
)

VOCAB = 512
FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def _model(family: str, attn: str) -> PreTrainedModel:
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    config._attn_implementation = attn
    torch.manual_seed(0)
    return model_cls(config).eval()


def _documents() -> list[dict[str, list[int]]]:
    """Three documents of 5, 9 and 7 tokens; the first tokens of each are not trained (a prompt)."""
    gen = torch.Generator().manual_seed(1)
    docs = []
    for n, prompt in ((5, 2), (9, 4), (7, 1)):
        tokens = torch.randint(0, VOCAB, (n,), generator=gen).tolist()
        docs.append(
            {"tokens": tokens, "labels": shift_labels(tokens, [i >= prompt for i in range(n)])}
        )
    return docs


def _packed_batch(docs: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    # Row 0: documents 0 and 1 then 4 padding tokens; row 1: document 2 then 11 padding tokens.
    return collate_packed([concat_documents(docs[:2]), concat_documents(docs[2:])], 18, pad_id=0)


def _alone(model: PreTrainedModel, tokens: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([tokens])).logits[0]  # (n, V)


def _per_document(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The logits of each real document of a packed batch, in order (the padding tails dropped)."""
    out = []
    for row in range(batch["tokens"].shape[0]):
        ids = batch["document_ids"][row]
        for doc in ids.unique().tolist():
            where = ids == doc
            if (batch["labels"][row][where] != IGNORE_INDEX).any():  # not the padding tail
                out.append(logits[row][where])
    return out


def _max_diff(model: PreTrainedModel, logits: torch.Tensor, batch, docs) -> float:
    got = _per_document(logits, batch)
    assert [len(g) for g in got] == [len(d["tokens"]) for d in docs]
    return max(
        (g - _alone(model, d["tokens"])).abs().max().item() for g, d in zip(got, docs, strict=True)
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_mask_form_matches_each_document_alone(family: str, attn: str) -> None:
    model, docs = _model(family, attn), _documents()
    batch = _packed_batch(docs)
    out = model(**transformers_inputs(batch, attention="mask", dtype=torch.float32))
    assert _max_diff(model, out.logits, batch, docs) < 1e-5

    # transformers' own loss on the packed batch == the token mean of every document's own loss
    # (aligned labels scored directly against each document's logits alone).
    sums = [
        F.cross_entropy(_alone(model, d["tokens"]), torch.tensor(d["labels"]), reduction="sum")
        for d in docs
    ]
    count = sum(sum(label != IGNORE_INDEX for label in d["labels"]) for d in docs)
    assert count == 3 + 5 + 6
    assert abs(out.loss.item() - (sum(sums) / count).item()) < 1e-5

    if attn == "sdpa":  # a boolean mask gives sdpa the same
        boolean = model(**transformers_inputs(batch, dtype=torch.bool, labels=False)).logits
        assert (boolean - out.logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_position_ids_alone_let_documents_attend_to_each_other(family: str) -> None:
    model, docs = _model(family, "sdpa"), _documents()
    batch = _packed_batch(docs)
    naive = model(input_ids=batch["tokens"], position_ids=batch["positions"]).logits
    # transformers builds a cache in the forward (use_cache defaults to the config's True), and
    # then ignores the document boundaries in position_ids: later documents see earlier ones.
    assert _max_diff(model, naive, batch, docs) > 1e-2


@torch.no_grad()
def test_packing_loader_batch_through_the_helper(chatml_tokenizer) -> None:
    rows = datasets.Dataset.from_dict(
        {"text": [f"row {i} " + "walnut " * (i % 7) for i in range(24)]}
    )
    loader = StreamingLoader(
        rows, TextBuilder(chatml_tokenizer), batch_size=2, max_seq_len=48, packing="best_fit",
        buffer_size=8, shuffle=False,
    )  # fmt: skip
    assert chatml_tokenizer.vocab_size <= VOCAB
    batch = next(iter(loader))
    assert batch["document_ids"].max().item() >= 2  # several documents in a row
    kwargs = transformers_inputs(batch)
    assert torch.equal(kwargs["position_ids"], document_positions(batch["document_ids"]))
    model = _model("llama", "sdpa")
    logits = model(**kwargs).logits
    docs = []
    for row in range(2):
        ids = batch["document_ids"][row]
        for doc in ids.unique().tolist():
            where = ids == doc
            tokens = batch["tokens"][row][where].tolist()
            diff = (logits[row][where] - _alone(model, tokens)).abs().max().item()
            docs.append(diff)
    assert len(docs) >= 4
    assert max(docs) < 1e-5


@torch.no_grad()
def test_padding_free_batch_through_the_helper() -> None:
    model, docs = _model("llama", "eager"), _documents()
    flat = remove_padding(collate_padded(docs, pad_id=0))  # [1, 21]: three documents
    assert flat["document_ids"].tolist() == [[0] * 5 + [1] * 9 + [2] * 7]
    out = model(**transformers_inputs(flat))
    start = 0
    for doc in docs:
        n = len(doc["tokens"])
        assert (out.logits[0, start : start + n] - _alone(model, doc["tokens"])).abs().max() < 1e-5
        start += n


def test_flash_form_values() -> None:
    # The flash kernels need CUDA: here the values and names are checked, not a flash run.
    document_ids = torch.tensor([[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 1]])
    cu_seq_lens, longest = packed_seq_lens(document_ids)
    assert cu_seq_lens.dtype == torch.int32
    assert cu_seq_lens.tolist() == [0, 3, 5, 6, 10, 12]
    assert longest == 4
    assert isinstance(longest, int)
    positions = document_positions(document_ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    # transformers' own derivation from position_ids (its padding-free path) agrees.
    (cu_q, cu_k), (max_q, _) = prepare_fa_kwargs_from_position_ids(positions)
    assert torch.equal(cu_q, cu_seq_lens)
    assert torch.equal(cu_k, cu_seq_lens)
    assert int(max_q) == longest

    batch = {"tokens": torch.arange(12).view(2, 6), "document_ids": document_ids}
    kwargs = transformers_inputs(batch, attention="flash", labels=False)
    assert set(kwargs) == {
        "input_ids", "position_ids", "use_cache", "cu_seq_lens_q", "cu_seq_lens_k",
        "max_length_q", "max_length_k",
    }  # fmt: skip
    assert set(kwargs) - {"input_ids", "use_cache"} <= set(FlashAttentionKwargs.__annotations__) | {
        "position_ids"
    }
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12]
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == 4


def _varlen_reference(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """A CPU stand-in for a flash varlen kernel: causal sdpa per `cu_seq_lens_q` segment."""
    assert attention_mask is None
    cu = kw["cu_seq_lens_q"].tolist()  # KeyError if the keywords did not reach the attention
    b, h, t, d = query.shape  # (B, H, T, hd)
    q, k, v = (x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (query, key, value))
    out = torch.empty_like(q)  # (B * T, H, hd)
    for start, end in itertools.pairwise(cu):
        seg = [x[start:end].transpose(0, 1).unsqueeze(0) for x in (q, k, v)]  # (1, H, L, hd)
        att = F.scaled_dot_product_attention(*seg, is_causal=True, scale=scaling, enable_gqa=True)
        out[start:end] = att[0].transpose(0, 1)
    return out.view(b, t, h, d), None


@torch.no_grad()
def test_flash_keywords_reach_the_attention_and_match_each_document_alone() -> None:
    AttentionInterface.register("tune_varlen_reference", _varlen_reference)
    model, docs = _model("qwen2", "tune_varlen_reference"), _documents()
    batch = _packed_batch(docs)
    out = model(**transformers_inputs(batch, attention="flash", labels=False))
    reference = _model("qwen2", "sdpa")  # same seed, same weights
    assert _max_diff(reference, out.logits, batch, docs) < 1e-5


def test_labels_follow_the_transformers_convention() -> None:
    aligned = torch.tensor([[7, 8, IGNORE_INDEX, 9, IGNORE_INDEX]])
    assert transformers_labels(aligned).tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX, 9]]
    with pytest.raises(ValueError, match="row 0 trains its last position"):
        transformers_labels(torch.tensor([[7, 8]]))


def test_bad_batches_are_named() -> None:
    tokens = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"no 'document_ids'.*remove_padding"):
        transformers_inputs({"tokens": tokens, "labels": tokens, "attention_mask": tokens})
    with pytest.raises(ValueError, match="attention must be one of"):
        transformers_inputs({"tokens": tokens, "document_ids": tokens}, attention="flex")
    with pytest.raises(ValueError, match="row 0 goes from 1 to 0 at position 2"):
        transformers_inputs({"tokens": tokens, "document_ids": torch.tensor([[0, 1, 0, 0]])},
                            labels=False)  # fmt: skip
    crossing = {
        "tokens": tokens,
        "document_ids": torch.tensor([[0, 0, 1, 1]]),
        "labels": torch.tensor([[5, 6, 7, IGNORE_INDEX]]),  # 6 would be document 1's first token
    }
    with pytest.raises(ValueError, match=r"last token of a document \(row 0, position 1"):
        transformers_inputs(crossing)
    with pytest.raises(ValueError, match="'positions' has shape"):
        transformers_inputs(
            {"tokens": tokens, "document_ids": tokens, "positions": tokens[0]}, labels=False
        )
    with pytest.raises(ValueError, match=r"float dtype or torch\.bool"):
        block_causal_mask(tokens, torch.int64)
