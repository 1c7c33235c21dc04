"""Measured peak memory of real training steps, for the ``tune plan`` accuracy test.

What is measured: the peak of bytes alive in CPU tensors during one training step (zero_grad,
forward, loss, backward, optimizer step) after a warm-up step has created the optimizer state.
It is the bytes alive when the step starts (parameters, buffers, optimizer state: summed over
distinct storages) plus the peak of torch's CPU allocator traffic during the step, read from
``torch.profiler.profile(profile_memory=True)``: its ``[memory]`` events are every allocation
(+bytes) and free (-bytes) of the c10 CPU allocator in time order, so their running sum is the
bytes allocated since the step started, temporaries and gloo buffers included. The process RSS
would add the allocator's caching and the Python heap; saved-tensor hooks alone would miss
gradients, the loss's chunks and transient backward tensors.

Also a torchrun worker (``python -m torch.distributed.run ... plan_memory_runs.py OUT CASES``):
each rank runs every case under FSDP2 and writes ``{case: peak bytes}`` of rank 0 to ``OUT``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Big enough that weights and activations dwarf allocator noise (about 20M parameters), small
# enough for a sub-second step. Every Linear is a multiple of 16,384 elements (NF4).
HF_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 8192,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Case:
    """One measured step: method, layout and shape."""

    name: str
    method: str = "full"
    seq_len: int = 256
    micro_batch_size: int = 2
    activation_checkpointing: bool = False
    fused_ce: bool = True
    optimizer: str = "adamw"
    sizes: tuple[tuple[str, Any], ...] = ()  # HF config fields replaced (another shape)
    tp_size: int = 1

    def hf_config(self) -> dict[str, Any]:
        """The case's model config."""
        return {**HF_CONFIG, **dict(self.sizes)}


# A second shape, not the one the constants were measured on: tied embeddings, 6 heads over
# 2 key/value heads, a wider vocabulary.
OTHER_SHAPE = (("hidden_size", 384), ("intermediate_size", 1024), ("num_attention_heads", 6),
               ("num_key_value_heads", 2), ("vocab_size", 16384), ("tie_word_embeddings", True),
               ("num_hidden_layers", 6))  # fmt: skip


@dataclass(frozen=True)
class _Lora:  # the ``training.lora`` section's fields
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    exclude: tuple[str, ...] = ()
    target_parameters: tuple[str, ...] = ()
    use_rslora: bool = False
    init: str = "default"


LORA = _Lora()


def live_bytes(*objects: Any) -> int:
    """Bytes of the distinct storages of the tensors in modules, optimizers and tensors."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        local = getattr(t, "_local_tensor", t)  # a DTensor's shard
        inner = [
            getattr(local, n) for n in getattr(local, "__tensor_flatten__", lambda: ([],))()[0]
        ]
        for x in inner or [local]:
            storage = x.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for obj in objects:
        if isinstance(obj, nn.Module):
            for t in [*obj.parameters(), *obj.buffers()]:
                add(t.data if isinstance(t, nn.Parameter) else t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        add(v)
    return sum(seen.values())


def step_peak_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, step: Any) -> int:
    """Peak bytes alive during one ``step()`` (after a warm-up step), as the module doc says."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up: the optimizer state exists from here on
    optimizer.zero_grad(set_to_none=True)
    start = live_bytes(model, optimizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[union-attr]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return start + peak


def build_case(
    case: Case, mesh: Any = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The model prepared for ``case.method``, its optimizer and a step closure (the sft step)."""
    from tune.dist import DataParallel
    from tune.models import build_from_hf_config
    from tune.recipes.common.config_sections import DistributedConfig
    from tune.recipes.common.finetune_method import prepare_for_method
    from tune.recipes.common.lora_settings import lora_config_from
    from tune.recipes.common.optimization import build_optimizer
    from tune.recipes.common.parallelism import parallelize_models
    from tune.train.steps.token import micro_batch_loss

    torch.manual_seed(0)
    model = build_from_hf_config(case.hf_config(), device=device, dtype=dtype)
    lora = lora_config_from(case.method, LORA) if case.method != "full" else None
    prepare_for_method(model, case.method, lora)
    dp = DataParallel() if mesh is None else mesh
    settings = DistributedConfig(tp_size=case.tp_size)
    parallelize_models([model], dp, settings, model_config=model.config,
                       activation_checkpointing=case.activation_checkpointing)  # fmt: skip
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], case.optimizer,
                                lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, kwargs={})  # fmt: skip
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(
        0, HF_CONFIG["vocab_size"], (case.micro_batch_size, case.seq_len), generator=g
    )
    batch = {"tokens": tokens.to(device), "labels": tokens.roll(-1, 1).to(device)}
    fused = case.fused_ce and mesh is None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        micro_batch_loss(model, batch, fused=fused).loss_sum.backward()
        optimizer.step()

    return model, optimizer, step


def measure(case: Case, mesh: Any = None) -> int:
    """Peak bytes of ``case``'s step on this rank."""
    model, optimizer, step = build_case(case, mesh)
    return step_peak_bytes(model, optimizer, step)


def _worker(out: Path, names: list[str]) -> None:
    from tune.dist import destroy_distributed, init_distributed, setup_data_parallel

    torch.set_num_threads(1)
    init_distributed(backend="gloo", device="cpu")
    meshes = {
        tp: setup_data_parallel(tp, device_type="cpu") for tp in {CASES[n].tp_size for n in names}
    }
    peaks = {name: measure(CASES[name], meshes[CASES[name].tp_size]) for name in names}
    if torch.distributed.get_rank() == 0:
        out.write_text(json.dumps(peaks))
    destroy_distributed()


CASES = {c.name: c for c in [
    Case("full"),
    Case("full_ckpt", activation_checkpointing=True),
    Case("full_unfused", fused_ce=False),
    Case("full_seq1024_b1", seq_len=1024, micro_batch_size=1),
    Case("full_sgd", optimizer="sgd"),
    Case("lora", method="lora"),
    Case("lora_ckpt", method="lora", activation_checkpointing=True),
    Case("lora_seq1024", method="lora", seq_len=1024, micro_batch_size=1),
    Case("lora_b4_unfused", method="lora", micro_batch_size=4, fused_ce=False),
    Case("dora", method="dora"),
    Case("qlora", method="qlora"),
    Case("qlora_ckpt_seq512", method="qlora", seq_len=512, activation_checkpointing=True),
    Case("other_full", sizes=OTHER_SHAPE, seq_len=384),
    Case("other_lora_unfused_ckpt", method="lora", sizes=OTHER_SHAPE, fused_ce=False,
         activation_checkpointing=True),
    Case("other_qlora", method="qlora", sizes=OTHER_SHAPE),
    Case("fsdp2_full", fused_ce=False),
    Case("fsdp2_lora_ckpt", method="lora", activation_checkpointing=True, fused_ce=False),
    Case("tp2_lora", method="lora", fused_ce=False, tp_size=2),
    Case("fsdp2_other_full", sizes=OTHER_SHAPE, fused_ce=False),
]}  # fmt: skip
FSDP_CASES = ("fsdp2_full", "fsdp2_lora_ckpt", "tp2_lora", "fsdp2_other_full")

if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2].split(","))
