"""The ``generate`` recipe: prompts (tune.data), the model (+ adapter, quantization), batched
KV-cache decoding with stop rules (tune.models), then printing and a jsonl file."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch

from tune.data import PromptInputError, Tokenizer, collect_prompts, encode_prompt, resolve_template
from tune.dist import seed_everything
from tune.models import build_stop_rules, checkpoint_eos_ids, finish_completion, generate
from tune.quant import quantize_for_decode
from tune.recipes.common.generation_model import load_configured_model
from tune.recipes.common.outputs import write_report
from tune.recipes.common.recipe_run import run_in_one_process
from tune.recipes.generate.config import GenerateConfig


@dataclass
class GenerationRecord:
    """One prompt's result: a line of the output file (see the recipe's docs), plus the raw ids.

    Args:
        where: the prompt's origin (``prompts.items.0``, ``file.jsonl:3``).
        prompt: the prompt as given; ``prompt_text``: what the model saw (template applied).
        completion_tokens: generated tokens the completion used (stop token included).
        stop_reason: ``eos``, ``stop_token``, ``stop_string`` or ``length``.
        completion_ids: every token the decoder produced for this prompt.
    """

    where: str
    prompt: Any
    prompt_text: str
    completion: str
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str
    completion_ids: list[int]

    def to_json(self) -> dict[str, Any]:
        """The record without the raw ids."""
        record = asdict(self)
        record.pop("completion_ids")
        return record


def run(config: GenerateConfig) -> dict[str, Any]:
    """Generate a completion for every prompt of ``config`` (a validated generate config).

    Returns:
        ``records`` (a ``GenerationRecord`` per prompt, in input order), ``generated_tokens``,
        ``seconds`` (decoding time), ``tokens_per_s``, ``output_file``, and the native names of
        the ``adapted_modules`` and ``quantized_modules``.
    """
    return run_in_one_process("generate", config, _generate)


def _generate(cfg: GenerateConfig, rt: Any) -> dict[str, Any]:
    sampling = cfg.sampling
    seed_everything(sampling.seed)

    # ---- prompts: read, render, tokenize (before the model loads: bad input fails fast) --
    prompts = collect_prompts(cfg.prompts.items, cfg.prompts.file, key="prompts")
    tokenizer = Tokenizer.from_dir(cfg.tokenizer_dir)
    template = None
    if cfg.prompts.chat:
        try:
            template = resolve_template(tokenizer, cfg.tokenizer.chat_template)
        except ValueError as err:
            raise ValueError(
                f"tokenizer.chat_template: {err}; or set prompts.chat=false for raw text prompts"
            ) from err
    for p in prompts if template is None else []:
        if p.messages is not None:
            raise PromptInputError(
                f"{p.where}: chat messages need the chat template; set prompts.chat=true"
            )
    system, add_bos = cfg.prompts.system, cfg.prompts.add_bos
    encoded = [
        encode_prompt(p, tokenizer, template, system=system, add_bos=add_bos) for p in prompts
    ]

    # ---- model: checkpoint, adapter, quantization; stop rules --------------------------------
    loaded = load_configured_model(cfg, rt, tokenizer)
    if sampling.quantize != "none":  # int8 weights read 4x fewer bytes per decoded token
        quantize_for_decode(loaded.checkpoint.model, sampling.quantize)
    context = loaded.checkpoint.config.max_position_embeddings
    for e in encoded:
        if len(e.tokens) + sampling.max_new_tokens > context:
            raise PromptInputError(
                f"{e.source.where}: {len(e.tokens)} prompt tokens + sampling.max_new_tokens "
                f"{sampling.max_new_tokens} exceed the model's max_position_embeddings {context}"
            )
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    rules = build_stop_rules(
        eos_ids=[*eos, *checkpoint_eos_ids(cfg.model.checkpoint_dir)]
        if sampling.stop_at_eos
        else [],
        stop_token_ids=sampling.stop_token_ids,
        stop_strings=sampling.stop_strings,
        token_to_id=tokenizer.token_to_id,
    )
    decode = partial(tokenizer.decode, skip_special_tokens=cfg.output.skip_special_tokens)
    generator = torch.Generator(device=rt.device).manual_seed(sampling.seed)

    # ---- decode, batch by batch, in input order --------------------------------------------
    records: list[GenerationRecord] = []
    seconds, generated_tokens = 0.0, 0
    for start in range(0, len(encoded), cfg.batch_size):
        batch = encoded[start : start + cfg.batch_size]
        began = time.perf_counter()
        # Python lists come back: the device work is done when it returns.
        rows = generate(
            loaded.checkpoint.model, [e.tokens for e in batch], generator=generator,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, stop_tokens=rules.token_ids,
            pad_id=tokenizer.pad_id,
        )  # fmt: skip
        seconds += time.perf_counter() - began
        for e, row in zip(batch, rows, strict=True):
            generated_tokens += len(row)
            done = finish_completion(row, decode, rules)
            r = GenerationRecord(
                e.source.where, e.source.as_record(), e.text, done.text, len(e.tokens),
                done.num_tokens, done.stop_reason, row,
            )  # fmt: skip
            records.append(r)
            if cfg.output.print:  # the recipe's product on the terminal
                sys.stdout.write(
                    f"[{len(records)}/{len(encoded)}] {r.where}\n  prompt: {e.source.display()}\n"
                    f"  → {r.completion}\n  ({r.prompt_tokens} prompt tokens, "
                    f"{r.completion_tokens} generated, stop: {r.stop_reason})\n"
                )
                sys.stdout.flush()

    # ---- report -----------------------------------------------------------------------------
    tokens_per_s = generated_tokens / seconds if seconds > 0 else float("nan")
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    output_file = write_report(cfg.output, text, [
        f"generated {generated_tokens} tokens for {len(records)} prompts in {seconds:.2f} s: "
        f"{tokens_per_s:.1f} tokens/s (batch size {cfg.batch_size})"
    ])  # fmt: skip
    return {
        "records": records, "generated_tokens": generated_tokens, "seconds": seconds,
        "tokens_per_s": tokens_per_s, "output_file": output_file,
        "adapted_modules": loaded.adapted_modules, "quantized_modules": loaded.quantized_modules,
    }  # fmt: skip
