"""The ``generate`` recipe: load a checkpoint (+ adapter), render prompts, decode, report.

Reads top to bottom: prompts (tune.data renders chat templates), the model (tune.models, with a
PEFT adapter through tune.checkpoint + tune.peft, optional tune.quant), batched KV-cache
decoding (``tune.models.generate``), then printing and a jsonl file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from tune.data import ChatTemplate, resolve_template
from tune.models import generate
from tune.recipes.common.data_loading import load_tokenizer
from tune.recipes.common.generation_model import load_generation_model
from tune.recipes.common.model_loading import check_vocab_fits
from tune.recipes.common.runtime import seed_everything, start_runtime, stop_runtime
from tune.recipes.config import ValidationContext, validate_config
from tune.recipes.generate.config import GenerateConfig
from tune.recipes.generate.prompts import (
    EncodedPrompt,
    PromptInputError,
    collect_prompts,
    encode_prompt,
)
from tune.recipes.generate.stopping import build_stop_rules, finish_completion

logger = logging.getLogger(__name__)


@dataclass
class GenerationRecord:
    """One prompt's result (a line of the output file, plus the raw ids).

    Args:
        where: the prompt's origin (``prompts.items.0``, ``file.jsonl:3``).
        prompt: the prompt as given (text or messages).
        prompt_text: the text the model saw (chat template applied).
        completion: the completion text.
        prompt_tokens: tokens of the rendered prompt.
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
    """Generate a completion for every prompt of ``config``.

    Args:
        config: a validated generate config.

    Returns:
        ``records`` (a ``GenerationRecord`` per prompt, in input order), ``generated_tokens``,
        ``seconds`` (decoding time), ``tokens_per_s``, ``output_file``, and the native names of
        the ``adapted_modules`` and ``quantized_modules``.
    """
    rt = start_runtime(config.device, config.model.dtype)
    try:
        if rt.dist.is_distributed:
            raise RuntimeError(
                "the generate recipe runs in one process; launch it without torchrun flags"
            )
        return _generate(config, rt)
    finally:
        stop_runtime()


def _chat_template(cfg: GenerateConfig, tokenizer: Any) -> ChatTemplate | None:
    if not cfg.prompts.chat:
        return None
    source = cfg.tokenizer.chat_template
    if source is not None and Path(source).expanduser().is_file():
        source = Path(source).expanduser().read_text(encoding="utf-8")
    try:
        return resolve_template(tokenizer, source)
    except ValueError as err:
        raise ValueError(
            f"tokenizer.chat_template: {err}; or set prompts.chat=false for raw text prompts"
        ) from err


def _check_lengths(encoded: list[EncodedPrompt], max_new_tokens: int, context: int) -> None:
    for e in encoded:
        if len(e.tokens) + max_new_tokens > context:
            raise PromptInputError(
                f"{e.source.where}: {len(e.tokens)} prompt tokens + sampling.max_new_tokens "
                f"{max_new_tokens} exceed the model's max_position_embeddings {context}"
            )


def _write_jsonl(records: list[GenerationRecord], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def _show(record: GenerationRecord, index: int, total: int, display: str, stream: TextIO) -> None:
    """Write one prompt and its completion to ``stream`` (the recipe's product on the terminal)."""
    stream.write(
        f"[{index}/{total}] {record.where}\n  prompt: {display}\n  → {record.completion}\n"
        f"  ({record.prompt_tokens} prompt tokens, {record.completion_tokens} generated, "
        f"stop: {record.stop_reason})\n"
    )
    stream.flush()


def _generate(cfg: GenerateConfig, rt: Any) -> dict[str, Any]:
    validate_config(cfg, ValidationContext(world_size=1))
    sampling = cfg.sampling
    seed_everything(sampling.seed)

    # ---- prompts: read, render, tokenize (before the model loads: bad input fails fast) --
    prompts = collect_prompts(cfg.prompts.items, cfg.prompts.file)
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
    template = _chat_template(cfg, tokenizer)
    encoded = [
        encode_prompt(
            p, tokenizer, template, system=cfg.prompts.system, add_bos=cfg.prompts.add_bos
        )
        for p in prompts
    ]

    # ---- model: checkpoint, adapter, quantization ----------------------------------------
    loaded = load_generation_model(
        cfg.model.checkpoint_dir,
        dtype=rt.dtype,
        device=rt.device,
        adapter_dir=cfg.model.adapter_dir,
        merge_adapter=cfg.model.merge_adapter,
        quantize=cfg.model.quantize,
    )
    check_vocab_fits(
        tokenizer.vocab_size, loaded.checkpoint.config.vocab_size,
        tokenizer_dir=cfg.tokenizer_dir, checkpoint_dir=cfg.model.checkpoint_dir,
    )  # fmt: skip
    model = loaded.checkpoint.model
    _check_lengths(
        encoded, sampling.max_new_tokens, loaded.checkpoint.config.max_position_embeddings
    )
    rules = build_stop_rules(
        tokenizer,
        cfg.model.checkpoint_dir,
        stop_at_eos=sampling.stop_at_eos,
        stop_token_ids=sampling.stop_token_ids,
        stop_strings=sampling.stop_strings,
    )
    generator = torch.Generator(device=rt.device).manual_seed(sampling.seed)

    # ---- decode, batch by batch, in input order --------------------------------------------
    records: list[GenerationRecord] = []
    seconds, generated_tokens = 0.0, 0
    for start in range(0, len(encoded), cfg.batch_size):
        batch = encoded[start : start + cfg.batch_size]
        began = time.perf_counter()
        rows = generate(
            model,
            [e.tokens for e in batch],
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            stop_tokens=rules.token_ids,
            pad_id=tokenizer.pad_id,
            generator=generator,
        )  # returns Python lists: the device work is done when it returns
        seconds += time.perf_counter() - began
        for e, row in zip(batch, rows, strict=True):
            generated_tokens += len(row)
            done = finish_completion(row, tokenizer, rules, cfg.output.skip_special_tokens)
            record = GenerationRecord(
                where=e.source.where,
                prompt=e.source.as_record(),
                prompt_text=e.text,
                completion=done.text,
                prompt_tokens=len(e.tokens),
                completion_tokens=done.num_tokens,
                stop_reason=done.stop_reason,
                completion_ids=row,
            )
            records.append(record)
            if cfg.output.print:
                _show(record, len(records), len(encoded), e.source.display(), sys.stdout)

    # ---- report -----------------------------------------------------------------------------
    tokens_per_s = generated_tokens / seconds if seconds > 0 else float("nan")
    output_file = None
    if cfg.output.file is not None:
        output_file = _write_jsonl(records, Path(cfg.output.file).expanduser())
    summary_line = (
        f"generated {generated_tokens} tokens for {len(records)} prompts in {seconds:.2f} s: "
        f"{tokens_per_s:.1f} tokens/s (batch size {cfg.batch_size})"
    )
    if output_file is not None:
        summary_line += f"; wrote {output_file}"
    if cfg.output.print:
        sys.stdout.write(summary_line + "\n")
    else:
        logger.info(summary_line)
    return {
        "records": records,
        "generated_tokens": generated_tokens,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "output_file": output_file,
        "adapted_modules": loaded.adapted_modules,
        "quantized_modules": loaded.quantized_modules,
    }
