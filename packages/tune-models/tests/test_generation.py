"""Generation: greedy parity with transformers' generate, sampling controls, stop tokens."""

from __future__ import annotations

import pytest
import torch

from tune.models import generate, sample_next_token

PROMPTS = [[5, 17, 33, 9, 81, 4, 120], [44, 3, 250], [7, 7, 199, 12, 60]]


def _hf_greedy(hf, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    return out[:, L:].tolist()


def test_greedy_matches_transformers_generate(hf_and_native, family: str) -> None:
    hf, model = hf_and_native(family)
    expected = _hf_greedy(hf, PROMPTS, max_new_tokens=8)
    got = generate(model, PROMPTS, max_new_tokens=8, pad_id=0)
    assert got == expected
    assert not model.training  # left as found (eval)


def test_stop_tokens_end_each_row_independently(hf_and_native) -> None:
    _, model = hf_and_native("llama")
    free = generate(model, PROMPTS, max_new_tokens=8)
    stop = free[0][2]  # the third token of row 0 becomes a stop token
    stopped = generate(model, PROMPTS, max_new_tokens=8, stop_tokens=[stop])
    for row_free, row_stopped in zip(free, stopped, strict=True):
        cut = row_free.index(stop) + 1 if stop in row_free else len(row_free)
        assert row_stopped == row_free[:cut]
    assert stopped[0][-1] == stop


def test_sampling_is_seeded_and_top_k_1_is_greedy(hf_and_native) -> None:
    _, model = hf_and_native("qwen2")
    greedy = generate(model, PROMPTS, max_new_tokens=6)
    assert generate(model, PROMPTS, max_new_tokens=6, temperature=0.7, top_k=1, seed=3) == greedy
    a = generate(model, PROMPTS, max_new_tokens=6, temperature=1.5, seed=123)
    b = generate(model, PROMPTS, max_new_tokens=6, temperature=1.5, seed=123)
    c = generate(model, PROMPTS, max_new_tokens=6, temperature=1.5, seed=124)
    assert a == b
    assert a != c


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    # probabilities 0.5, 0.3, 0.15, 0.05 for tokens 3, 1, 0, 2
    logits = torch.log(torch.tensor([[0.15, 0.3, 0.05, 0.5]]))
    gen = torch.Generator().manual_seed(0)
    draws = lambda **kw: {  # noqa: E731
        int(sample_next_token(logits, temperature=1.0, generator=gen, **kw)) for _ in range(300)
    }
    assert draws(top_k=2) == {3, 1}
    assert draws(top_p=0.75) == {3, 1}  # 0.5 < 0.75 <= 0.8: the first two
    assert draws(top_p=0.5) == {3}
    assert draws() == {0, 1, 2, 3}
    assert int(sample_next_token(logits)) == 3


def test_bad_generation_arguments() -> None:
    logits = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="top_p must be in"):
        sample_next_token(logits, temperature=1.0, top_p=1.5)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        sample_next_token(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="no empty prompt"):
        generate(torch.nn.Linear(1, 1), [[1], []], max_new_tokens=1)
