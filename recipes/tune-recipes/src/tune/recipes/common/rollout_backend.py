"""The generation-backend interface of RL recipes, and the built-in KV-cache backend.

A recipe only calls ``backend.generate(prompts, sampling, seed)`` and, after each optimizer step,
``backend.sync_weights(model)``. The built-in backend decodes with the live policy through
``tune.models.generate``; an inference engine (vLLM on GPU) can implement the same two methods
and be named in the config (``rollout.backend``) through the ``tune.generation_backends``
entry-point group, without touching the recipe.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from tune.models import generate
from tune.recipes.config.registries import Registry


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled.

    Args:
        max_new_tokens: most tokens per completion.
        temperature: 0 for greedy decoding.
        top_p: nucleus threshold (None: off).
        top_k: keep the k most likely tokens (None: off).
        stop_tokens: ids that end a completion (kept as its last token).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop_tokens: tuple[int, ...] = ()


@runtime_checkable
class GenerationBackend(Protocol):
    """What an RL recipe needs from a generator."""

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


class BuiltinGenerationBackend:
    """Batched KV-cache decoding with the policy itself (``tune.models.generate``).

    Args:
        model: the policy (plain or FSDP-sharded).
        pad_id: id used for padding rows.
        lockstep: decode exactly ``max_new_tokens`` steps and cut at the stop token afterwards.
            Needed when the model is sharded: every rank must run the same number of forward
            passes (each gathers parameters), whatever its own rows produce.
        batch_size: rows decoded together (None: all rows of a call at once).
    """

    def __init__(
        self,
        model: nn.Module,
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
        # ``generate`` runs under inference mode. FSDP2 keeps its all-gather buffers between
        # calls, and buffers made under inference mode cannot be written by the next training
        # forward: a sharded model decodes under plain no_grad instead.
        self._generate = inspect.unwrap(generate) if lockstep else generate

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
        """Nothing to do: the backend decodes with the live policy."""
        self.model = model


def cut_at_stop(tokens: Sequence[int], stop_tokens: Sequence[int]) -> list[int]:
    """``tokens`` up to and including the first stop token."""
    stops = set(stop_tokens)
    for i, token in enumerate(tokens):
        if token in stops:
            return list(tokens[: i + 1])
    return list(tokens)


GENERATION_BACKENDS = Registry(
    "tune.generation_backends",
    "generation backend",
    {"builtin": "tune.recipes.common.rollout_backend:BuiltinGenerationBackend"},
)


def build_generation_backend(
    name: str,
    model: nn.Module,
    *,
    pad_id: int,
    distributed: bool,
    options: Mapping[str, Any] | None = None,
    allow_imports: Sequence[str] = (),
) -> GenerationBackend:
    """The backend ``name`` called as ``factory(model, pad_id=, lockstep=, **options)``.

    Raises:
        TypeError: the object built does not implement ``GenerationBackend``.
    """
    factory = GENERATION_BACKENDS.load(name, allow_imports)
    backend = factory(model, pad_id=pad_id, lockstep=distributed, **dict(options or {}))
    if not isinstance(backend, GenerationBackend):
        raise TypeError(
            f"rollout.backend {name!r} built {type(backend).__name__}, which lacks "
            "generate(prompts, sampling, seed) and sync_weights(model)"
        )
    return backend
