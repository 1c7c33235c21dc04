"""tune.train.evaluation on a toy causal LM: every score equals its hand computation."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.train.evaluation import dataset_perplexity, rolling_loglikelihood, score_continuations

V, D = 23, 16


class CausalToyLM(nn.Module):
    """Embedding, one causal attention layer, LM head: context matters, right padding is inert."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, D)
        self.qkv = nn.Linear(D, 3 * D)
        self.output = nn.Linear(D, V, bias=False)

    def forward(self, tokens: torch.Tensor, return_hidden: bool = False, **_: Any) -> torch.Tensor:
        x = self.embed(tokens)  # [B, T, D]
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)  # [B, 1, T, D] each
        h = x + F.scaled_dot_product_attention(q, k, v, is_causal=True).squeeze(1)
        return h if return_hidden else self.output(h)


@pytest.fixture(scope="module")
def model() -> CausalToyLM:
    return CausalToyLM().eval()


def _logprobs(model: nn.Module, ids: list[int]) -> torch.Tensor:
    """log p(ids[t + 1] | ids[: t + 1]) for every t, one unpadded row."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()  # [T, V]
    return F.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_continuation_scores_equal_hand_computation(model: CausalToyLM) -> None:
    g = torch.Generator().manual_seed(1)
    pairs = [
        (torch.randint(0, V, (n,), generator=g).tolist(), torch.randint(0, V, (m,), generator=g).tolist())
        for n, m in [(5, 3), (1, 1), (12, 6), (30, 4), (7, 16)]
    ]  # fmt: skip
    max_length = 20  # (30, 4) and (7, 16) are cut from the left
    got = score_continuations(model, pairs, max_length=max_length, batch_size=2)
    for (context, continuation), (logprob, _) in zip(pairs, got, strict=True):
        whole = [*context, *continuation][-(max_length + 1) :]
        expected = float(_logprobs(model, whole)[-len(continuation) :].sum())
        assert logprob == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # is_greedy: true exactly for the model's own argmax continuation.
    context = pairs[2][0]
    with torch.no_grad():
        greedy = int(model(torch.tensor([context]))[0, -1].argmax())
    lambda_model = lambda tokens: model(tokens)  # noqa: E731 - a plain callable, no parameters
    (_, yes), (_, no) = score_continuations(
        lambda_model, [(context, [greedy]), (context, [(greedy + 1) % V])], max_length=max_length
    )
    assert yes
    assert not no
    with pytest.raises(ValueError, match="request 1: context and continuation must be non-empty"):
        score_continuations(model, [([1], [2]), ([], [3])], max_length=4)
    with pytest.raises(ValueError, match="request 0: continuation of 5 tokens > max_length=4"):
        score_continuations(model, [([1], [2, 3, 4, 5, 6])], max_length=4)


def test_rolling_loglikelihood_uses_lm_eval_windows(model: CausalToyLM) -> None:
    tokens = torch.randint(0, V, (10,), generator=torch.Generator().manual_seed(2)).tolist()
    prefix = 5
    full = [prefix, *tokens]
    # lm_eval's documented windows for 10 tokens and max length 4: inputs [P 0 1 2] -> 0..3,
    # [3 4 5 6] -> 4..7, [5 6 7 8] -> 8 9 (the last window keeps full context).
    expected = float(_logprobs(model, full[0:5]).sum())
    expected += float(_logprobs(model, full[4:9]).sum())
    expected += float(_logprobs(model, full[6:11])[-2:].sum())
    got = rolling_loglikelihood(model, tokens, prefix_token=prefix, max_length=4)
    assert got == pytest.approx(expected, rel=1e-5)
    whole = rolling_loglikelihood(model, tokens, prefix_token=prefix, max_length=64)
    assert whole == pytest.approx(float(_logprobs(model, full).sum()), rel=1e-5)
    assert rolling_loglikelihood(model, [], prefix_token=prefix, max_length=4) == 0.0


@pytest.mark.parametrize("fused", [False, True])
def test_dataset_perplexity_equals_hand_computation(model: CausalToyLM, fused: bool) -> None:
    g = torch.Generator().manual_seed(3)
    lengths = [[9, 4], [7, 7], [12, 3]]  # three right-padded batches of two rows
    batches, nll, count = [], 0.0, 0
    for pair in lengths:
        width = max(pair)
        tokens = torch.zeros(len(pair), width, dtype=torch.long)
        labels = torch.full((len(pair), width), -100)
        for r, n in enumerate(pair):
            ids = torch.randint(0, V, (n,), generator=g).tolist()
            tokens[r, :n] = torch.tensor(ids)
            labels[r, : n - 1] = torch.tensor(ids[1:])
            labels[r, :2] = -100  # a prompt: not scored
            nll -= float(_logprobs(model, ids)[2:].sum())
            count += n - 3
        batches.append({"tokens": tokens, "labels": labels})
    seen: list[int] = []

    def prepare(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(batch["tokens"].shape[0])
        return batch

    result = dataset_perplexity(model, batches, fused=fused, prepare=prepare)
    assert (result.tokens, result.sequences, result.batches) == (count, 6, 3)
    assert result.loss == pytest.approx(nll / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert seen == [2, 2, 2]
    first = dataset_perplexity(model, batches, fused=fused, max_batches=1)
    assert (first.batches, first.sequences) == (1, 2)
    unscored = [
        {"tokens": b["tokens"], "labels": torch.full_like(b["labels"], -100)} for b in batches
    ]
    with pytest.raises(ValueError, match="perplexity: no scored token in 3 batches"):
        dataset_perplexity(model, unscored, fused=fused)


def test_lm_eval_adapter_scores_and_generates(model: CausalToyLM) -> None:
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from tune.train.evaluation.lm_eval_adapter import LMEvalAdapter

    class CharTokenizer:
        """One token per letter a..t; 20 is EOS (decodes to '|'); no BOS."""

        add_bos = False
        bos_id = None
        eos_id = 20
        pad_id = 0
        vocab_size = V

        def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None):
            return [ord(c) - ord("a") for c in text]

        def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
            return "".join("|" if i == 20 else chr(ord("a") + i) for i in ids)

    calls: list[dict[str, Any]] = []

    def generate(m: Any, prompts: list[list[int]], **kw: Any) -> list[list[int]]:
        calls.append(kw)
        return [[1, 2, 3, 20] for _ in prompts]  # "bcd" then EOS

    lm = LMEvalAdapter(model, CharTokenizer(), generate=generate, max_length=8, batch_size=2)
    requests = [Instance("loglikelihood", {}, (c, x), i) for i, (c, x) in enumerate(
        [("abc", "d"), ("hello", "fg")])]  # fmt: skip
    got = lm.loglikelihood(requests)
    assert [s for s, _ in got] == pytest.approx(
        [float(_logprobs(model, [0, 1, 2, 3])[-1:].sum()),
         float(_logprobs(model, [7, 4, 11, 11, 14, 5, 6])[-2:].sum())], rel=1e-5
    )  # fmt: skip
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("abcab",), 0)])
    assert rolling == pytest.approx(float(_logprobs(model, [20, 0, 1, 2, 0, 1]).sum()), rel=1e-5)
    texts = lm.generate_until(
        [Instance("generate_until", {}, ("ab", {"until": ["c"], "max_gen_toks": 3}), 0),
         Instance("generate_until", {}, ("ab", {"until": ["z"], "max_gen_toks": 4}), 1)]
    )  # fmt: skip
    assert texts == ["b", "bcd"]  # cut at "c"; cut at the EOS text "|"
    assert calls == [{"max_new_tokens": 4, "stop_tokens": [20], "pad_id": 0}]
    with pytest.raises(NotImplementedError, match="without generate="):
        LMEvalAdapter(model, CharTokenizer(), max_length=8).generate_until(
            [Instance("generate_until", {}, ("ab", {"until": ["c"]}), 0)]
        )


def test_lm_eval_adapter_from_model_args(model: CausalToyLM) -> None:
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from tune.train.evaluation.lm_eval_adapter import LMEvalAdapter

    tokenizer = SimpleNamespace(add_bos=True, bos_id=1, eos_id=2, pad_id=0, vocab_size=V)

    class Toy(LMEvalAdapter):
        @classmethod
        def load_model(cls, args: dict[str, Any]) -> tuple[Any, Any, int]:
            assert args.pop("name") == "toy"
            return model, tokenizer, 16

    lm = Toy.create_from_arg_string("name=toy,batch_size=3,add_bos=false", {"device": None})
    assert (lm.max_length, lm.batch_size, lm.max_gen_tokens, lm.add_bos) == (16, 3, 256, False)
    assert Toy.create_from_arg_obj({"name": "toy", "max_length": "8"}).add_bos is True
    with pytest.raises(ValueError, match=r"model_args for Toy: unknown keys \['colour'\]"):
        Toy.create_from_arg_obj({"name": "toy", "colour": "red"})
    with pytest.raises(NotImplementedError, match="LMEvalAdapter cannot be created"):
        LMEvalAdapter.create_from_arg_obj({})
