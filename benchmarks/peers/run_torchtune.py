"""torchtune 0.6.1 side of the peer benchmark: its Llama-3 builders, LoRA and loss on the saved batches.

Runs in a venv of its own (torchtune 0.6.1 needs torchao <= 0.15). The loop is what torchtune's
single-device recipes do per step, written out here so it can take the fixture's batches in order:
``llama3`` / ``lora_llama3`` built with the fixture's sizes, the HF checkpoint converted with
``convert_weights.hf_to_tune``, ``set_trainable_params(get_adapter_params(...))`` for LoRA,
``CEWithChunkedOutputLoss`` (8 chunks, as its configs use), ``torch.optim.AdamW(fused=True)`` as
its configs set, and ``clip_grad_norm_``. Packed batches pass a dense block-causal ``mask`` and
``input_pos`` (what its packed collate builds on a CPU). The saved labels are already aligned with
the tokens, so the recipe's label shift is not applied again. A checkpoint with a tied LM head
(SmolLM2, Qwen2.5-0.5B shapes) gets ``TiedLinear(tok_embeddings)`` as its output, as torchtune's
Llama-3.2 and Qwen2.5 builders do; RoPE stays the plain one of the ``llama3`` builder.
"""

from __future__ import annotations

import json
import time
from importlib.metadata import version

import torch
from runner_support import (
    BETAS,
    EPS,
    LORA_ALPHA,
    LORA_R,
    LR,
    MAX_GRAD_NORM,
    WEIGHT_DECAY,
    batch_digest,
    block_causal_mask,
    load_batches,
    runner_args,
    set_threads,
    write_result,
)

CHUNKS = 8


def main() -> None:
    args = runner_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    from safetensors.torch import load_file
    from torchtune.models.convert_weights import hf_to_tune
    from torchtune.models.llama3 import llama3, lora_llama3
    from torchtune.modules.loss import CEWithChunkedOutputLoss
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    saved = load_batches(args.fixture, args.packed, args.steps)
    cfg = json.loads((args.fixture / "model" / "config.json").read_text())
    rope = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
    sizes = {
        "vocab_size": cfg["vocab_size"],
        "num_layers": cfg["num_hidden_layers"],
        "num_heads": cfg["num_attention_heads"],
        "num_kv_heads": cfg["num_key_value_heads"],
        "embed_dim": cfg["hidden_size"],
        "intermediate_dim": cfg["intermediate_size"],
        "max_seq_len": cfg["max_position_embeddings"],
        "norm_eps": cfg["rms_norm_eps"],
        "rope_base": rope,
    }
    if args.method == "lora":
        model = lora_llama3(
            ["q_proj", "k_proj", "v_proj", "output_proj"], apply_lora_to_mlp=True,
            apply_lora_to_output=False, lora_rank=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
            **sizes,
        )  # fmt: skip
    else:
        model = llama3(**sizes)
    if cfg.get("tie_word_embeddings", False):
        from torchtune.modules import TiedLinear

        del model.output  # an nn.Linear submodule; TiedLinear is a plain callable
        model.output = TiedLinear(model.tok_embeddings)
    state = hf_to_tune(
        load_file(str(args.fixture / "model" / "model.safetensors")),
        num_heads=sizes["num_heads"], num_kv_heads=sizes["num_kv_heads"], dim=sizes["embed_dim"],
    )  # fmt: skip
    missing, unexpected = model.load_state_dict(state, strict=False)
    adapter_keys = [k for k in missing if "lora_" not in k]
    if unexpected or adapter_keys:
        raise RuntimeError(f"checkpoint mismatch: missing {adapter_keys}, unexpected {unexpected}")
    if args.method == "lora":
        set_trainable_params(model, get_adapter_params(model))
    model = model.float().train()
    loss_fn = CEWithChunkedOutputLoss(num_output_chunks=CHUNKS)
    model.set_num_output_chunks(loss_fn.num_output_chunks)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=True
    )

    losses: list[float] = []
    times: list[float] = []
    digests: list[str] = []
    for batch in saved["batches"]:
        start = time.perf_counter()
        inputs = {}
        if args.packed:
            inputs = {
                "mask": block_causal_mask(batch["document_ids"]),
                "input_pos": batch["positions"],
            }
        digests.append(batch_digest({"tokens": batch["tokens"], "labels": batch["labels"]}))
        logits = model(batch["tokens"], **inputs)
        loss = loss_fn(logits, batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_norm=MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - start)
    write_result(
        args.work_dir,
        library="torchtune",
        version=f"torchtune {version('torchtune')}, torchao {version('torchao')}",
        losses=losses,
        step_times=times,
        digests=digests,
        notes="own loop around torchtune components; CEWithChunkedOutputLoss, fused AdamW",
    )


if __name__ == "__main__":
    main()
