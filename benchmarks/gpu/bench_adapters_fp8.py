"""LoRA and QLoRA at 8B shapes, and float8 training's speed-up, on one CUDA device.

Three measurements, each on random weights of a named size in bfloat16, with the sft recipe's
pieces: `prepare_for_method` (NF4 base weights for QLoRA, then LoRA), `parallelize_models`
(activation checkpointing, per-block compile), AdamW (fused) and `micro_batch_loss` (the fused
linear cross-entropy), on random tokens:

1. LoRA r=16 on every linear layer of a Qwen3-8B-shaped model: tokens/s (issue target:
   >= 3,300 on one H100).
2. QLoRA r=16 of a Llama-3.1-8B-shaped model, as the bundled `sft/llama3_1_8b_qlora` config
   trains it (micro batch 2 x 2,048 tokens, activation checkpointing, eager): peak CUDA memory of a
   step (issue target: <= 7 GiB) and tokens/s.
3. Full fine-tuning of a Llama-3.2-1B-shaped model, compiled, in bf16 and with torchao float8
   linears (tensorwise; the LM head stays bf16): tokens/s of each and their ratio.

Each case reports the median step time of its measured steps (after warm-up, compilation
included there), tokens/s, peak memory since the model was prepared, and the first and last loss.
Without CUDA it prints one SKIP line and exits 0 (`nox -s gpu` passes on the CPU).

    python benchmarks/gpu/bench_adapters_fp8.py [--seq 2048] [--steps 5] [--only lora qlora fp8]
    python benchmarks/gpu/bench_adapters_fp8.py --device cpu --tiny   # a smoke run of the code
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from types import SimpleNamespace
from typing import Any

import torch
from timed_training import train_random_tokens

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TINY = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
        "vocab_size": 2048}  # fmt: skip


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_case(
    name: str,
    size: str,
    method: str,
    args: argparse.Namespace,
    *,
    batch: int,
    checkpointing: bool,
    compile_model: bool = True,
    float8: bool = False,
) -> dict[str, Any]:
    """Build, prepare and train ``size`` with ``method`` for warm-up + measured steps."""
    from tune.dist import DataParallel
    from tune.models import build_from_hf_config, named_size_config
    from tune.recipes.common.config_sections import DistributedConfig
    from tune.recipes.common.finetune_method import prepare_for_method
    from tune.recipes.common.lora_settings import lora_config_from
    from tune.recipes.common.parallelism import parallelize_models

    device = torch.device(args.device)
    config = named_size_config(size)
    if args.tiny:
        config.update(TINY)
    torch.manual_seed(0)
    model = build_from_hf_config(config, device=device, dtype=torch.bfloat16)
    lora = None
    if method != "full":
        settings = SimpleNamespace(
            r=16, alpha=32.0, dropout=0.0, targets=LINEARS, exclude=(), target_parameters=(),
            use_rslora=False, init="default",
        )  # fmt: skip
        lora = lora_config_from(method, settings)
    prepare_for_method(model, method, lora)
    if float8:
        from tune.quant import apply_float8_training

        apply_float8_training(model)  # before compile, as the recipe orders it
    compile_blocks = compile_model and device.type == "cuda" and not args.no_compile
    parallelize_models([model], DataParallel(), DistributedConfig(), model_config=model.config,
                       activation_checkpointing=checkpointing, compile=compile_blocks)  # fmt: skip
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    if device.type == "cuda":  # what the step itself needs, not the bf16 build before NF4
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seq = args.seq
    times, losses = train_random_tokens(
        model, optimizer, vocab=config["vocab_size"], batch=batch, seq=seq, warmup=args.warmup,
        steps=args.steps, device=device,
    )  # fmt: skip
    step_s = statistics.median(times)
    result = {
        "case": name, "size": size + (" (tiny)" if args.tiny else ""), "method": method,
        "float8": float8, "batch": batch, "seq": seq, "activation_checkpointing": checkpointing,
        "compile": compile_blocks, "step_s_median": step_s,
        "tokens_per_s": batch * seq / step_s, "peak_memory_gib": _peak_gib(device),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "loss_first_last": [losses[0], losses[-1]],
    }  # fmt: skip
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _line(r: dict[str, Any]) -> str:
    memory = "" if r["peak_memory_gib"] is None else f", peak {r['peak_memory_gib']:.2f} GiB"
    return (
        f"{r['case']}: {r['size']} {r['method']}{' float8' if r['float8'] else ''}, "
        f"{r['batch']} x {r['seq']} tokens: {r['step_s_median'] * 1e3:.1f} ms/step, "
        f"{r['tokens_per_s']:,.0f} tokens/s{memory}, loss {r['loss_first_last'][0]:.3f} -> "
        f"{r['loss_first_last'][1]:.3f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--only", nargs="+", choices=("lora", "qlora", "fp8"),
                        default=["lora", "qlora", "fp8"])  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="2 narrow layers (a CPU smoke run)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("SKIP bench_adapters_fp8: no CUDA device; run it where a GPU is present")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}")
    results = []
    if "lora" in args.only:
        results.append(run_case("LoRA r=16", "qwen3-8b", "lora", args, batch=2,
                                checkpointing=True))  # fmt: skip
        print(_line(results[-1]) + "  (target >= 3,300 tokens/s on one H100)")
    if "qlora" in args.only:
        # as the bundled config trains it: NF4 weights in eager mode
        results.append(run_case("QLoRA r=16", "llama3.1-8b", "qlora", args, batch=2,
                                checkpointing=True, compile_model=False))  # fmt: skip
        print(_line(results[-1]) + "  (target <= 7 GiB)")
    if "fp8" in args.only:
        if device.type != "cuda":
            print("float8: skipped (torchao's float8 training needs a CUDA device)")
        else:
            bf16 = run_case("full bf16", "llama3.2-1b", "full", args, batch=4, checkpointing=False)
            fp8 = run_case("full float8", "llama3.2-1b", "full", args, batch=4,
                           checkpointing=False, float8=True)  # fmt: skip
            results += [bf16, fp8]
            print(_line(bf16))
            print(_line(fp8))
            print(f"float8 / bf16 tokens/s: {fp8['tokens_per_s'] / bf16['tokens_per_s']:.2f}x")
    print(json.dumps({"device": name, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
