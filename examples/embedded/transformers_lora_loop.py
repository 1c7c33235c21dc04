"""LoRA fine-tuning of a `transformers` model in a plain PyTorch loop, with four tune libraries.

    pip install tune-peft tune-data tune-train tune-checkpoint transformers
    python examples/embedded/transformers_lora_loop.py --output-dir outputs/embedded --steps 40

No recipe, no tune model: the model is a stock `LlamaForCausalLM` and the loop below is yours to
change. Each library does one job and knows nothing of the others:

- tune.data: tokenizer, chat-formatted instruction samples with assistant-only labels, batches;
- tune.peft: LoRA injected by module name (`q_proj`, ... as transformers names them), PEFT export;
- tune.train: token-normalised accumulation, loss, clipping, schedule, NaN guard, loggers, meter;
- tune.checkpoint: a resumable training state and the PEFT adapter directory.

Run it again with a larger --steps and it resumes from its last state. Outputs in --output-dir:
`base/` (a tiny random Llama + tokenizer, made here: no hub), `adapter/` (loads in
`peft.PeftModel.from_pretrained`), `state/`, `heldout.jsonl`, `metrics.jsonl`, `summary.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers

from tune.checkpoint import CheckpointManager, save_peft_adapter
from tune.data import InstructionBuilder, StreamingLoader, Tokenizer
from tune.data.synthetic import save_tiny_tokenizer, synthetic_instruction_rows, write_jsonl
from tune.peft import (
    LoraConfig,
    adapter_state_dict,
    apply_lora,
    count_parameters,
    export_peft_adapter,
    load_adapter_state_dict,
    mark_only_adapters_trainable,
)
from tune.train import (
    GradientAccumulator,
    JsonlLogger,
    MultiLogger,
    NonFiniteGuard,
    StdoutLogger,
    ThroughputMeter,
    TokenLoss,
    clip_grad_norm,
    cosine_schedule_with_warmup,
    count_nonpadding_tokens,
    count_trained_tokens,
    cross_entropy,
)

MICRO_BATCHES, BATCH_SIZE, MAX_SEQ_LEN = 2, 4, 128  # 8 samples per optimizer step
LORA = LoraConfig(r=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])


def make_base(directory: Path) -> Path:
    """A tiny random Llama and its tokenizer, saved as an ordinary HF directory (no hub here)."""
    if not (directory / "config.json").is_file():
        save_tiny_tokenizer(directory, template="chatml", vocab_size=512)
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_SEQ_LEN,
        )  # fmt: skip
        transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def forward_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> TokenLoss:
    """Summed token loss of a batch. tune.data's labels are already aligned with the tokens
    (labels[t] is the target at position t), so the logits go to the loss without a shift."""
    logits = model(input_ids=batch["tokens"], attention_mask=batch["attention_mask"]).logits
    return cross_entropy(logits, batch["labels"])


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, builder: InstructionBuilder, path: Path) -> float:
    """Token-mean loss over every held-out row, in file order."""
    loader = StreamingLoader(
        path, builder, batch_size=BATCH_SIZE, max_seq_len=MAX_SEQ_LEN, shuffle=False,
        drop_last=False,
    )  # fmt: skip
    total, count = 0.0, 0
    for batch in loader:
        loss_sum, num_tokens = forward_loss(model, batch)
        total, count = total + float(loss_sum), count + int(num_tokens)
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40, help="total optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument(
        "--save-every", type=int, default=0, help="also save the state every n steps"
    )
    args = parser.parse_args()
    out: Path = args.output_dir

    # 1. Base model and data: any HF checkpoint directory with a tokenizer works here.
    base_dir = make_base(out / "base")
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    builder = InstructionBuilder(Tokenizer.from_dir(base_dir))  # the tokenizer's chat template
    train_file = write_jsonl(synthetic_instruction_rows(2000, seed=0), out / "train.jsonl")
    heldout_file = write_jsonl(synthetic_instruction_rows(32, seed=1234), out / "heldout.jsonl")
    loader = StreamingLoader(
        train_file, builder, batch_size=BATCH_SIZE, max_seq_len=MAX_SEQ_LEN, epochs=None, seed=0
    )

    # 2. LoRA on the HF module names; only the adapter trains.
    torch.manual_seed(0)
    adapted = apply_lora(model, LORA, freeze_base=False)
    mark_only_adapters_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"LoRA on {len(adapted)} layers, {count_parameters(model).trainable:,} trainable params")
    base_loss = heldout_loss(model, builder, heldout_file)  # B = 0: still the base model
    print(f"held-out loss before: {base_loss:.4f}")

    # 3. Optimizer, schedule and the tune.train helpers.
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    scheduler = cosine_schedule_with_warmup(
        optimizer, warmup_steps=max(1, args.steps // 10), total_steps=args.steps
    )
    accumulator, guard, meter = GradientAccumulator(), NonFiniteGuard("skip"), ThroughputMeter()
    metrics = MultiLogger([StdoutLogger(), JsonlLogger(out / "metrics.jsonl")])

    # 4. Resume if an earlier run left a state (adapter, optimizer, schedule, data cursor, RNG).
    manager = CheckpointManager(out / "state", keep_last_n=2)

    def save_state(step: int) -> None:
        manager.save(
            step,
            model_state=adapter_state_dict(model),  # the adapter only: the base never changes
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            data_state=loader.state_dict(),
            extra={"guard": guard.state_dict()},
        )

    step = 0  # optimizer steps taken
    if manager.latest() is not None:
        state = manager.load()
        load_adapter_state_dict(model, state.model_state)
        optimizer.load_state_dict(state.optimizer_state)
        scheduler.load_state_dict(state.scheduler_state)
        loader.load_state_dict(state.data_state)
        guard.load_state_dict(state.extra["guard"])
        step = state.step
        print(f"resumed from {state.path} at step {step}")

    # 5. The loop: count the step's trained tokens first, so every micro-batch's summed loss is
    #    divided by the same total (token-mean over the whole step, however the padding falls).
    model.train()
    batches = iter(loader)
    while step < args.steps:
        meter.start()
        micro = [next(batches) for _ in range(MICRO_BATCHES)]
        accumulator.start_step([count_trained_tokens(mb["labels"]) for mb in micro])
        for mb in micro:
            accumulator.scale(forward_loss(model, mb)).backward()
        result = accumulator.finish_step()
        grad_norm = clip_grad_norm(params, max_norm=1.0)
        lr = scheduler.get_last_lr()[0]
        guard.step(
            optimizer, step=step, loss=result["loss"], grad_norm=grad_norm, scheduler=scheduler
        )
        step += 1
        real_tokens = sum(
            count_nonpadding_tokens(mb["tokens"], mb["attention_mask"]) for mb in micro
        )
        speed = meter.stop(real_tokens)
        metrics.log(
            {**result, "grad_norm": grad_norm, "lr": lr, "tokens_per_s": speed["tokens_per_s"]},
            step,
        )
        if args.save_every and step % args.save_every == 0 and step < args.steps:
            save_state(step)

    # 6. Save the final state, then the adapter as a PEFT directory. The names are already
    #    transformers' own, so no key map is needed.
    save_state(step)
    tensors, adapter_config = export_peft_adapter(model, base_model_name_or_path=str(base_dir))
    adapter_dir = save_peft_adapter(out / "adapter", tensors, adapter_config, prefix="")
    metrics.close()

    model.eval()
    after_loss = heldout_loss(model, builder, heldout_file)
    print(f"held-out loss after {step} steps: {after_loss:.4f} (before: {base_loss:.4f})")
    print(f"PEFT adapter saved to {adapter_dir} (base model: {base_dir})")
    summary = {
        "steps": step,
        "heldout_loss_before": base_loss,
        "heldout_loss_after": after_loss,
        "base_dir": str(base_dir),
        "adapter_dir": str(adapter_dir),
        "heldout_file": str(heldout_file),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
