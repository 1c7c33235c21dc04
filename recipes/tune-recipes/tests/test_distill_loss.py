"""The distillation step equals CE + KL computed by hand on transformers' models of the checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tune.data import remove_padding
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.distill.setup import compared_vocab_size, load_teacher
from tune.train.steps.distillation import (
    DistillLossSettings,
    distill_micro_batch_loss,
    evaluate_distillation,
)
from tune_testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A student and a (wider, differently seeded) teacher sharing one tokenizer text."""
    root = tmp_path_factory.mktemp("kd_pair")
    text = ["add 12 and 30 gives 42", "reverse abc gives cba"] * 20
    student = make_tiny_checkpoint(root / "student", seed=1, vocab_size=300, tokenizer_text=text)
    teacher = make_tiny_checkpoint(
        root / "teacher", seed=2, vocab_size=300, tokenizer_text=text, hidden_size=96,
        num_heads=4, num_kv_heads=4, intermediate_size=160,
    )  # fmt: skip
    return student, teacher


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 250, (2, 12), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    labels[:, :4] = -100  # prompt
    labels[1, 9:] = -100  # padding
    positions = torch.arange(12).expand(2, 12)
    return {"tokens": tokens, "labels": labels, "positions": positions}


def _reference(student_dir: Path, teacher_dir: Path, batch: dict, kind: str, temp: float, mix: float,
               ce_weight: float) -> tuple[float, float, float]:  # fmt: skip
    from transformers import AutoModelForCausalLM

    s = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    t = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ls = s(batch["tokens"]).logits.double()
        lt = t(batch["tokens"]).logits.double()
    mask = batch["labels"] != -100
    ce = F.cross_entropy(ls[mask], batch["labels"][mask], reduction="sum")
    log_ps, log_pt = (F.log_softmax(x[mask] / temp, dim=-1) for x in (ls, lt))
    fwd = (log_pt.exp() * (log_pt - log_ps)).sum() * temp**2
    rev = (log_ps.exp() * (log_ps - log_pt)).sum() * temp**2
    kl = {"forward": fwd, "reverse": rev, "symmetric": mix * fwd + (1 - mix) * rev}[kind]
    return float(ce), float(kl), float(ce_weight * ce + (1 - ce_weight) * kl)


@pytest.mark.parametrize(
    ("kind", "temp", "chunk"), [("forward", 1.0, None), ("reverse", 2.0, 5), ("symmetric", 0.5, 7)]
)
def test_step_matches_transformers_reference(
    pair: tuple[Path, Path], kind: str, temp: float, chunk: int | None
) -> None:
    student_dir, teacher_dir = pair
    student = load_pretrained(student_dir, dtype=torch.float32, device=torch.device("cpu")).model
    teacher = load_teacher(teacher_dir, dtype=torch.float32, device=torch.device("cpu")).model
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    settings = DistillLossSettings(
        kind=kind, temperature=temp, symmetric_mix=0.3, ce_weight=0.25, chunk_size=chunk
    )
    batch = _batch()
    loss = distill_micro_batch_loss(student, teacher, batch, settings)
    ce, kl, total = _reference(student_dir, teacher_dir, batch, kind, temp, 0.3, 0.25)
    assert int(loss.total.num_tokens) == 8 + 5
    assert loss.ce_sum.item() == pytest.approx(ce, rel=1e-5)
    assert loss.kl_sum.item() == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert loss.total.loss_sum.item() == pytest.approx(total, rel=1e-5)
    # Gradients reach the student only.
    loss.total.loss_sum.backward()
    assert student.output.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # Evaluation reports the same values as token means.
    values = evaluate_distillation(student, teacher, [batch], settings)
    assert values["val_loss"] == pytest.approx(ce / 13, rel=1e-5)
    assert values["val_kl"] == pytest.approx(kl / 13, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("kind", ["forward", "reverse"])
def test_padding_free_batch_gives_the_padded_distillation_loss(
    pair: tuple[Path, Path], kind: str
) -> None:
    student_dir, teacher_dir = pair
    student = load_pretrained(student_dir, dtype=torch.float32, device=torch.device("cpu")).model
    teacher = load_teacher(teacher_dir, dtype=torch.float32, device=torch.device("cpu")).model
    settings = DistillLossSettings(kind=kind, temperature=2.0, ce_weight=0.5, chunk_size=5)
    batch = _batch()
    batch["attention_mask"] = (batch["labels"] != -100).long()
    batch["attention_mask"][:, :4] = 1  # the prompt is real, only row 1's tail is padding
    flat = remove_padding(batch)
    assert flat["tokens"].shape == (1, 21)
    padded_loss = distill_micro_batch_loss(student, teacher, batch, settings)
    flat_loss = distill_micro_batch_loss(student, teacher, flat, settings)
    for a, b in ((padded_loss.ce_sum, flat_loss.ce_sum), (padded_loss.kl_sum, flat_loss.kl_sum)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert int(flat_loss.total.num_tokens) == int(padded_loss.total.num_tokens) == 13


def _head(vocab: int) -> nn.Module:
    module = nn.Module()
    module.output = nn.Linear(8, vocab, bias=False)
    return module


def test_padded_vocabularies_compare_the_shared_rows() -> None:
    assert compared_vocab_size(_head(320), _head(320), 300, teacher_dir="t") is None
    assert compared_vocab_size(_head(320), _head(384), 300, teacher_dir="t") == 320
    with pytest.raises(ValueError, match=r"teacher\.checkpoint_dir t: vocabulary sizes differ "
                       r"\(student 320, teacher 256\) and 256 < the tokenizer's 300"):  # fmt: skip
        compared_vocab_size(_head(320), _head(256), 300, teacher_dir="t")


def test_padded_teacher_logits_are_cut_to_the_student_vocabulary() -> None:
    torch.manual_seed(0)

    class Fixed(nn.Module):
        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = nn.Parameter(logits)

        def forward(self, tokens: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(tokens.shape[0], -1, -1)

    student, teacher = Fixed(torch.randn(1, 3, 6)), Fixed(torch.randn(1, 3, 8))
    batch = {"tokens": torch.zeros(1, 3, dtype=torch.long), "labels": torch.tensor([[1, 2, 3]])}
    settings = DistillLossSettings(ce_weight=0.0, vocab_size=6)
    loss = distill_micro_batch_loss(student, teacher, batch, settings)
    p_t = F.softmax(teacher.logits[0, :, :6], -1)
    expected = (p_t * (p_t.log() - F.log_softmax(student.logits[0], -1))).sum()
    assert loss.kl_sum.item() == pytest.approx(expected.item(), rel=1e-5)
