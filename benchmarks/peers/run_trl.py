"""TRL side of the peer benchmark: ``SFTTrainer`` on the fixture's saved batches.

The same inputs as ``run_hf.py`` (one saved batch per dataset item, a collator that unwraps it,
sequential sampling, labels as ``shift_labels``), through TRL's trainer: ``SFTConfig`` with the
dataset preparation skipped (the batches are already tokenized), its own ``compute_loss`` (which
also computes the entropy and token-accuracy metrics it logs). ``--flat`` gives the padding-free
layout, as for ``run_hf.py``. A step is timed from ``on_step_begin`` to ``on_step_end``.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import torch
from run_hf import to_hf_inputs, train_and_record
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
)


def main() -> None:
    args = runner_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    saved = load_batches(args.fixture, args.packed, args.steps)
    model = AutoModelForCausalLM.from_pretrained(
        args.fixture / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    peft_config = None
    if args.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=LORA_TARGETS_HF,
            task_type="CAUSAL_LM",
        )  # fmt: skip
    if args.flat and args.packed:
        raise SystemExit("--flat applies to unpacked batches only")
    batches = saved["batches"]
    # TRL wants a datasets.Dataset; its rows only index the saved batches.
    dataset = Dataset.from_dict({"index": list(range(len(batches)))})
    digests: list[str] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        (feature,) = features  # one saved batch per dataset item
        batch = batches[int(feature["index"])]
        digests.append(batch_digest(batch))
        return to_hf_inputs(flatten_batch(batch) if args.flat else batch)

    train_and_record(
        SFTTrainer,
        args,
        digests,
        library="trl",
        versions=f"trl {version('trl')}, transformers {version('transformers')}",
        notes="SFTTrainer, sdpa, adamw_torch",
        model=model,
        args=SFTConfig(
            **trainer_arguments(args),
            dataset_kwargs={"skip_prepare_dataset": True},
            bf16=False,
        ),
        train_dataset=dataset,
        data_collator=collate,
        peft_config=peft_config,
    )


if __name__ == "__main__":
    main()
