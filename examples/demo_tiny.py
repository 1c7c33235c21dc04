"""The fast path of the demo (``python examples/demo.py --tiny``): the bundled 0.85M model.

Phases, as printed:

1. The bundled base (examples/assets/demo-base, made by make_demo_base.py) is a 0.85M-parameter
   Llama pre-trained by tune on plain-text facts; it has never seen a chat turn. The instruction
   data is generated here (demo_tasks.py): every fact as a one-turn chat. The ``sft`` recipe holds
   out a fraction of it (``data.validation_fraction``); those held-out facts are the evaluation set.
2. Before: the base's answers to the held-out facts in plain text (what it knows) and in chat
   (greedy generation; exact match = the response before the end-of-turn token equals the answer).
3. LoRA fine-tuning through the real recipe (tqdm progress bar; validation loss every 10 steps).
4. After: the same chat evaluation on the merged model the recipe wrote.
5. Outputs: loss-curve PNG, HF (merged) and PEFT adapter directories, ``summary.json``; then the
   before/after table (exact match, and held-out loss = the recipe's validation loss at step 0
   and at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from demo_eval import Answer, Answerer, exact_match
from demo_report import banner, before_after_table, plot_losses
from demo_tasks import as_chat, facts

from tune.data import split_source
from tune.recipes.config import load_config
from tune.recipes.sft.config import SFTConfig
from tune.recipes.sft.loop import run
from tune.train.loggers import read_jsonl_metrics

HERE = Path(__file__).resolve().parent
BASE = HERE / "assets" / "demo-base"
CONFIG = HERE / "configs" / "demo_lora.yaml"


def write_chat_data(path: Path) -> int:
    """Write every fact as a one-turn chat (JSON lines); returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [as_chat(r) for r in facts()]
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return len(rows)


def show_answers(answers: list[Answer], kinds: list[str], count: int) -> None:
    """Print ``count`` answers (prompt, expected, got), one per task kind first."""
    firsts: dict[str, Answer] = {}
    for answer, kind in zip(answers, kinds, strict=True):
        firsts.setdefault(kind, answer)
    picked = list(firsts.values())
    picked = (picked + [a for a in answers if a not in picked])[:count]
    print(f"  {'prompt':<38} {'expected':<10} got")
    for a in picked:
        got = a.response if a.ended else a.response + "..."
        got = repr(got) if len(repr(got)) <= 24 else repr(got)[:21] + "..."
        print(f"  {a.question:<38} {a.expected:<10} {got:<24} {'ok' if a.correct else 'wrong'}")


def main(args: argparse.Namespace) -> int:
    """Run the tiny demo (``args``: demo.py's options; base and config default to the bundled)."""
    base_dir: Path = args.base or BASE
    config_path: Path = args.config or CONFIG
    start = time.perf_counter()
    out: Path = args.output_dir.resolve()
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time (resume=never)

    banner("1. bundled base model and data")
    data_path = out / "data" / "facts_chat.jsonl"
    num_rows = write_chat_data(data_path)
    overrides = [
        f"model.checkpoint_dir={base_dir}",
        f"data.source={data_path}",
        f"checkpointing.output_dir={run_dir}",
    ]
    if args.max_steps is not None:
        overrides += [
            f"training.max_steps={args.max_steps}",
            f"training.lr_schedule.warmup_steps={args.max_steps // 10}",
            f"eval.every_n_steps={max(1, args.max_steps // 4)}",
        ]
    config: SFTConfig = load_config(config_path, SFTConfig, overrides, recipe="sft")
    d = config.data
    _, held_out_ds = split_source(d.source, d.split, None, d.validation_fraction, d.seed)
    assert held_out_ds is not None
    held_out = [
        {"question": m[0]["content"], "answer": m[1]["content"], "kind": kind}
        for m, kind in zip(held_out_ds["messages"], held_out_ds["kind"], strict=True)
    ]
    if args.eval_examples is not None:
        held_out = held_out[: args.eval_examples]
        micro = config.training.micro_batch_size
        config.eval.max_batches = math.ceil(len(held_out) / micro)
    kinds = [r["kind"] for r in held_out]
    print(f"base model:  {base_dir}")
    print(
        f"data:        {num_rows} facts as one-turn chats ({data_path});\n"
        f"             the recipe holds out {len(held_out_ds)} "
        f"({d.validation_fraction:.0%}); {len(held_out)} are evaluated"
    )

    banner("2. before fine-tuning: the base on the held-out facts")
    base = Answerer(base_dir)
    known = exact_match(base.plain_text(held_out))
    before = base.chat(held_out)
    print(f"plain text ('Question: ...\\nAnswer:'), the pre-training format: {known:.1%} correct")
    print(
        f"chat (the format we fine-tune for), exact match:              {exact_match(before):.1%}"
    )
    show_answers(before, kinds, 3)

    banner(f"3. LoRA fine-tuning with the sft recipe ({config.training.max_steps} steps)")
    summary = run(config)
    train_curve, val_curve = (
        sorted(read_jsonl_metrics(run_dir / "metrics.jsonl", key).items())
        for key in ("loss", "val_loss")
    )

    banner("4. after fine-tuning: the merged model on the held-out facts")
    model_dir, adapter_dir = Path(summary["model_dir"]), Path(summary["adapter_dir"])
    after = Answerer(model_dir).chat(held_out)
    print(f"chat, exact match: {exact_match(after):.1%}")
    show_answers(after, kinds, 8)

    banner("5. outputs")
    curve = plot_losses(
        train_curve, val_curve, out / "loss_curve.png",
        "LoRA fine-tuning of the bundled tiny model (tune sft)",
    )  # fmt: skip
    if val_curve[0][0] != 0:
        raise RuntimeError(
            f"{config_path}: expected a validation loss at step 0 (eval.before_training)"
        )
    loss_before, loss_after = val_curve[0][1], val_curve[-1][1]
    em_before, em_after = exact_match(before), exact_match(after)
    result = {
        "held_out_examples": len(held_out),
        "train_examples": num_rows - len(held_out_ds),
        "steps": summary["step"],
        "base_plain_text_accuracy": known,
        "before": {"exact_match": em_before, "loss": loss_before},
        "after": {"exact_match": em_after, "loss": loss_after},
        "final_training_loss": summary["loss"],
        "model_dir": str(model_dir),
        "adapter_dir": str(adapter_dir),
        "loss_curve": str(curve),
        "generations": [
            {**asdict(a), "kind": kind, "correct": a.correct}
            for a, kind in zip(after, kinds, strict=True)
        ],
        "seconds": round(time.perf_counter() - start, 1),
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"HF model (LoRA merged): {model_dir}")
    print(f"PEFT adapter:           {adapter_dir}")
    print(f"loss curve:             {curve}")
    print(f"metrics:                {run_dir / 'metrics.jsonl'}")
    print(f"summary:                {summary_path}")

    before_after_table(
        "before / after fine-tuning, held-out facts",
        (sum(a.correct for a in before), sum(a.correct for a in after)), len(held_out),
        (loss_before, loss_after),
    )  # fmt: skip
    print(f"done in {result['seconds']:.0f} s")
    return 0
