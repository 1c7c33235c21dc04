"""Where rollouts come from: sampling settings, the generation-backend protocol, and a backend
that decodes with the live policy through a ``generate`` function passed in.

An RL loop only calls ``backend.generate(prompts, sampling, seed)`` and, after each optimizer
step, ``backend.sync_weights(model)``. ``PolicyGenerationBackend`` decodes with the policy itself
(tune-models' ``generate`` fits ``GenerateFunction``; any function of that signature does); an
inference engine (vLLM) can implement the same two methods instead.

    backend = PolicyGenerationBackend(model, generate, pad_id=tokenizer.pad_id)
    completions = backend.generate(prompts, SamplingSettings(64, stop_tokens=(eos,)), seed=0)

``DecodeCopyBackend`` decodes with a copy of the policy made by a ``prepare`` function (adapters
merged and weights quantized for decoding, say), remade at every ``sync_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled.

    Args:
        max_new_tokens: most tokens per completion (> 0).
        temperature: 0 for greedy decoding.
        top_p: nucleus threshold in (0, 1] (None: off).
        top_k: keep the k most likely tokens (None: off).
        stop_tokens: ids that end a completion (kept as its last token).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            ("max_new_tokens", self.max_new_tokens > 0, "> 0"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", self.top_p is None or 0 < self.top_p <= 1, "in (0, 1] or None"),
            ("top_k", self.top_k is None or self.top_k > 0, "> 0 or None"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"SamplingSettings.{name} must be {expected}, got {getattr(self, name)!r}"
                )


@runtime_checkable
class GenerationBackend(Protocol):
    """What an RL loop needs from a generator."""

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings, seed: int
    ) -> list[list[int]]:
        """New token ids of each prompt (ending at the first stop token when one is produced).

        Args:
            prompts: token ids per row (rows may repeat a prompt for a group).
            sampling: the sampling settings.
            seed: seeds this call's sampling (the same seed gives the same completions).
        """
        ...

    def sync_weights(self, model: nn.Module) -> None:
        """Make the next ``generate`` use ``model``'s current weights."""
        ...


class GenerateFunction(Protocol):
    """Batched decoding with a model (the signature of tune-models' ``generate``).

    Returns the new token ids of each prompt, a row ending after its first stop token.
    """

    def __call__(
        self,
        model: nn.Module,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        stop_tokens: Sequence[int],
        pad_id: int,
        generator: torch.Generator | None,
    ) -> list[list[int]]: ...


class PolicyGenerationBackend:
    """Decoding with the policy itself: nothing to sync, the live weights are used.

    Args:
        model: the policy (plain or FSDP-sharded); the generator is made on its device.
        generate: the decoding function (e.g. ``tune.models.generate``), called under
            ``torch.no_grad``. With ``lockstep`` it must not enter ``torch.inference_mode``:
            FSDP2 keeps its all-gather buffers between calls, and buffers made under inference
            mode cannot be written by the next training forward.
        pad_id: id used for padding rows.
        lockstep: decode exactly ``max_new_tokens`` steps and cut at the stop token afterwards.
            Needed when the model is sharded: every rank must run the same number of forward
            passes (each gathers parameters), whatever its own rows produce.
        batch_size: rows decoded together (None: all rows of a call at once).
    """

    def __init__(
        self,
        model: nn.Module,
        generate: GenerateFunction,
        *,
        pad_id: int = 0,
        lockstep: bool = False,
        batch_size: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.model = model
        self.pad_id = pad_id
        self.lockstep = lockstep
        self.batch_size = batch_size
        self._generate = generate

    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingSettings, seed: int
    ) -> list[list[int]]:
        """See ``GenerationBackend.generate``."""
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        stops = () if self.lockstep else sampling.stop_tokens
        size = self.batch_size or len(prompts)
        out: list[list[int]] = []
        for start in range(0, len(prompts), size):
            with torch.no_grad():
                rows = self._generate(
                    self.model,
                    prompts[start : start + size],
                    max_new_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    top_k=sampling.top_k,
                    top_p=sampling.top_p,
                    stop_tokens=stops,
                    pad_id=self.pad_id,
                    generator=generator,
                )
            out.extend(rows)
        return [cut_at_stop(row, sampling.stop_tokens) for row in out]

    def sync_weights(self, model: nn.Module) -> None:
        """Decode with ``model`` from now on (the live policy: no copy)."""
        self.model = model


class DecodeCopyBackend(PolicyGenerationBackend):
    """Decoding with ``prepare(policy)``, a copy made for decoding (e.g. adapters merged, int8
    weights), remade after every update by ``sync_weights``; the policy itself is untouched.

    The copy samples from (almost) the policy's distribution; the loss still takes its
    log-probs from the policy, as with any inference engine.

    Args:
        model: the policy (one process: the copy is whole).
        generate: the decoding function, as for ``PolicyGenerationBackend``.
        prepare: ``policy -> decoding model`` (must not modify the policy).
        pad_id: id used for padding rows.
        batch_size: rows decoded together (None: all rows of a call at once).
    """

    def __init__(
        self,
        model: nn.Module,
        generate: GenerateFunction,
        prepare: Callable[[nn.Module], nn.Module],
        *,
        pad_id: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(prepare(model), generate, pad_id=pad_id, batch_size=batch_size)
        self._prepare = prepare

    def sync_weights(self, model: nn.Module) -> None:
        """Remake the decoding copy from the updated policy."""
        self.model = None  # type: ignore[assignment]  # release the old copy first
        self.model = self._prepare(model)


def cut_at_stop(tokens: Sequence[int], stop_tokens: Sequence[int]) -> list[int]:
    """``tokens`` up to and including the first stop token."""
    stops = set(stop_tokens)
    for i, token in enumerate(tokens):
        if token in stops:
            return list(tokens[: i + 1])
    return list(tokens)
