"""transformers + peft side of the peer benchmark: ``Trainer`` on the fixture's saved batches.

Each dataset item is one whole saved batch (``per_device_train_batch_size=1``, a collator that
unwraps it, sequential sampling), so the Trainer trains on the saved batches in their order.
Labels go in as ``shift_labels`` (the saved labels are already aligned with the tokens). Packed
batches pass ``position_ids`` that restart per document, which transformers turns into a
block-causal mask (its padding-free path). With ``--flat`` (unpacked rows) each padded batch goes
in as one row of its real tokens with restarting ``position_ids``: the layout of
``DataCollatorWithFlattening``, transformers' padding-free path. A step is timed from ``on_step_begin`` to
``on_step_end`` (forward, backward, clipping, optimizer and scheduler step).
"""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

import torch
from runner_support import (
    LORA_ALPHA,
    LORA_R,
    LORA_TARGETS_HF,
    batch_digest,
    flatten_batch,
    load_batches,
    runner_args,
    set_threads,
    trainer_arguments,
    write_result,
)


def to_hf_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved batch as LlamaForCausalLM keyword arguments."""
    inputs = {
        "input_ids": batch["tokens"],
        "labels": batch["labels"],
        "shift_labels": batch["labels"],
        "position_ids": batch["positions"],
    }
    if "attention_mask" in batch:
        inputs["attention_mask"] = batch["attention_mask"]
    return inputs


def main() -> None:
    args = runner_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    saved = load_batches(args.fixture, args.packed, args.steps)
    model = AutoModelForCausalLM.from_pretrained(
        args.fixture / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS_HF,
            task_type="CAUSAL_LM",
        )  # fmt: skip
        model = get_peft_model(model, config)

    if args.flat and args.packed:
        raise SystemExit("--flat applies to unpacked batches only")
    items = [(b, to_hf_inputs(flatten_batch(b) if args.flat else b)) for b in saved["batches"]]
    digests: list[str] = []

    def collate(
        features: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
    ) -> dict[str, torch.Tensor]:
        ((batch, inputs),) = features  # one saved batch per dataset item
        digests.append(batch_digest(batch))  # the saved (padded) batch this step trains on
        return inputs

    train_and_record(
        Trainer,
        args,
        digests,
        library="transformers+peft",
        versions=f"transformers {version('transformers')}",
        notes="Trainer, sdpa, adamw_torch",
        model=model,
        args=TrainingArguments(**trainer_arguments(args)),
        train_dataset=items,
        data_collator=collate,
    )


def train_and_record(
    trainer_class: type,
    run: Any,
    digests: list[str],
    *,
    library: str,
    versions: str,
    notes: str,
    **trainer_kwargs: Any,
) -> None:
    """Train ``trainer_class(**trainer_kwargs)`` (a transformers ``Trainer`` or a subclass such as
    TRL's ``SFTTrainer``), recording each step's loss and time (``on_step_begin`` to
    ``on_step_end``), check the step count and write result.json."""
    from transformers import TrainerCallback

    losses: list[float] = []
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            times.append(time.perf_counter() - self.start)

    class RecordingTrainer(trainer_class):
        def training_step(self, *a: Any, **kw: Any) -> torch.Tensor:
            loss = super().training_step(*a, **kw)
            losses.append(float(loss))
            return loss

    RecordingTrainer(callbacks=[StepTimer()], **trainer_kwargs).train()
    if len(losses) != run.steps:
        raise RuntimeError(
            f"{trainer_class.__name__} ran {len(losses)} steps, expected {run.steps}"
        )
    if run.method == "lora":
        versions += f", peft {version('peft')}"
    write_result(
        run.work_dir,
        library=library,
        version=versions,
        losses=losses,
        step_times=times,
        digests=digests,
        notes=notes + (", padding-free rows" if run.flat else ""),
    )


if __name__ == "__main__":
    main()
