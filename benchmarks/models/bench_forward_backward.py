"""Forward+backward time and peak memory: tune.models vs transformers, same config, CPU, 1 thread.

Time: both models live in one process and are stepped alternately (A B A B ...); the table shows
the median step time of each and the ratio native / transformers. Memory: each model runs one
step in a fresh subprocess; the peak resident memory added by the step (weights already loaded)
is reported, with the same ratio.

    python benchmarks/models/bench_forward_backward.py [--rounds 6] [--seq 256] [--batch 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)

CONFIG = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}


def build_pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(transformers model, native model with the same weights), float32."""
    import transformers
    from safetensors.torch import load_file

    from tune.models import model_from_checkpoint_dir

    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    }
    config_cls, model_cls = classes[family]
    config = getattr(transformers, config_cls)(**CONFIG, head_dim=32)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(config).float()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        spec = model_from_checkpoint_dir(tmp)
        spec.model.load_state_dict(
            spec.hf_to_native(load_file(Path(tmp) / "model.safetensors")), assign=True
        )
        spec.model.init_buffers()
    return hf.train(), spec.model.train()


def step(
    model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor | None, native: bool
) -> float:
    """One forward+backward; returns seconds."""
    start = time.perf_counter()
    if native:
        logits = model(tokens, attention_mask=mask)
    else:
        logits = model(input_ids=tokens, attention_mask=mask).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def inputs(batch: int, seq: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    tokens = torch.randint(
        0, CONFIG["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1)
    )
    if not padded:
        return tokens, None
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1:, : seq // 4] = 0  # left padding on all rows but the first
    return tokens, mask


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def memory_child(family: str, which: str, batch: int, seq: int, padded: bool) -> None:
    """Subprocess body: load, then report the peak RSS added by one training step (KiB)."""
    hf, native = build_pair(family)
    model = native if which == "native" else hf
    del hf, native
    tokens, mask = inputs(batch, seq, padded)
    before = _rss_kib()
    step(model, tokens, mask, which == "native")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(max(peak - before, 0))


def measure_memory(family: str, which: str, batch: int, seq: int, padded: bool) -> float:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            family,
            which,
            str(batch),
            str(seq),
            str(int(padded)),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        family, which, batch, seq, padded = args.child
        memory_child(family, which, int(batch), int(seq), bool(int(padded)))
        return

    print(
        f"CPU, 1 thread, float32, batch {args.batch} x seq {args.seq}, {args.rounds} rounds A B A B"
    )
    print(f"config: {CONFIG}")
    header = f"{'family':8} {'inputs':7} {'native ms':>10} {'hf ms':>9} {'time ratio':>10} {'native MiB':>11} {'hf MiB':>8} {'mem ratio':>9}"
    print(header)
    print("-" * len(header))
    for family in ("llama", "qwen3"):
        hf, native = build_pair(family)
        for padded in (False, True):
            tokens, mask = inputs(args.batch, args.seq, padded)
            step(native, tokens, mask, True), step(hf, tokens, mask, False)  # warm-up
            times: dict[str, list[float]] = {"native": [], "hf": []}
            for _ in range(args.rounds):
                times["native"].append(step(native, tokens, mask, True))
                times["hf"].append(step(hf, tokens, mask, False))
            t_native, t_hf = (statistics.median(times[k]) * 1e3 for k in ("native", "hf"))
            m_native = measure_memory(family, "native", args.batch, args.seq, padded)
            m_hf = measure_memory(family, "hf", args.batch, args.seq, padded)
            kind = "padded" if padded else "plain"
            print(
                f"{family:8} {kind:7} {t_native:10.1f} {t_hf:9.1f} {t_native / t_hf:10.2f} "
                f"{m_native:11.1f} {m_hf:8.1f} {m_native / max(m_hf, 1e-9):9.2f}"
            )


if __name__ == "__main__":
    main()
