"""The ``eval`` recipe: load a checkpoint (+ adapter), score perplexity, run lm_eval tasks, report.

Reads top to bottom: the model loads as ``generate`` loads it (a base, merged, base + adapter,
or quantized directory); perplexity is the token-mean cross-entropy over a dataset split read by
tune.data (assistant tokens or all); lm-evaluation-harness tasks run through ``TuneLM``; the
results are printed and written as one JSON report.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from tune.quant import is_quantized_weight
from tune.recipes.common.data_loading import (
    build_sample_builder,
    load_tokenizer,
    make_loader,
    split_source,
)
from tune.recipes.common.generation_model import LoadedModel, load_generation_model
from tune.recipes.common.model_loading import check_vocab_fits
from tune.recipes.common.runtime import seed_everything, start_runtime, stop_runtime
from tune.recipes.config import ValidationContext, to_container, validate_config
from tune.recipes.config.redaction import redact
from tune.recipes.eval.config import EvalConfig
from tune.recipes.eval.scoring import PerplexityResult, dataset_perplexity

logger = logging.getLogger(__name__)


def run(config: EvalConfig) -> dict[str, Any]:
    """Evaluate ``config.model``: perplexity and/or lm_eval tasks.

    Args:
        config: a validated eval config.

    Returns:
        The report: ``perplexity`` (``loss``, ``perplexity``, ``tokens``, ``sequences``,
        ``batches``; absent without ``perplexity.source``), ``lm_eval`` (task -> metric ->
        value; absent without tasks), ``model`` and ``config``.
    """
    rt = start_runtime(config.device, config.model.dtype)
    try:
        if rt.dist.is_distributed:
            raise RuntimeError("the eval recipe runs in one process; launch it without torchrun")
        return _evaluate(config, rt)
    finally:
        stop_runtime()


def _perplexity(cfg: EvalConfig, loaded: LoadedModel, tokenizer: Any) -> PerplexityResult:
    p = cfg.perplexity
    assert p.source is not None
    builder = build_sample_builder(
        tokenizer,
        p.format,
        column_map=p.column_map,
        chat_template=cfg.tokenizer.chat_template,
        train_on_input=p.tokens == "all",
    )
    dataset, _ = split_source(p.source, p.split, None, 0.0, cfg.seed)
    loader = make_loader(
        dataset,
        builder,
        batch_size=p.batch_size,
        max_seq_len=p.max_seq_len,
        packing=False,
        truncation=p.truncation,
        seed=cfg.seed,
        shuffle=False,
        rank=0,
        world_size=1,
        endless=False,
    )
    ckpt = loaded.checkpoint
    result = dataset_perplexity(
        ckpt.model,
        loader,
        fused=p.fused_ce and _output_dense(loaded),
        softcap=getattr(ckpt.config, "final_logit_softcapping", None),
        max_batches=p.max_batches,
        padding_free=p.padding_free,
    )
    if loader.stats.dropped_too_long:
        logger.warning(
            "perplexity: %d examples too long were dropped", loader.stats.dropped_too_long
        )
    return result


def _output_dense(loaded: LoadedModel) -> bool:
    """The fused CE reads ``output.weight`` as a dense matrix: only for a plain float layer
    (not quantized, no adapter on it)."""
    output = loaded.checkpoint.model.output
    return type(output) is nn.Linear and not is_quantized_weight(output.weight)


def _lm_eval(cfg: EvalConfig, loaded: LoadedModel, tokenizer: Any) -> dict[str, Any]:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            "lm_eval.tasks needs lm-evaluation-harness: pip install 'tune-recipes[eval]'"
        ) from err
    from tune.recipes.eval.lm_eval_adapter import TuneLM

    le = cfg.lm_eval
    lm = TuneLM(
        loaded.checkpoint.model,
        tokenizer,
        max_length=le.max_length or loaded.checkpoint.config.max_position_embeddings,
        batch_size=le.batch_size,
        max_gen_tokens=le.max_gen_tokens,
        add_bos=le.add_bos,
    )
    manager = TaskManager(include_path=le.include_path)
    limit: float | int | None = le.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(le.tasks),
        num_fewshot=le.num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        bootstrap_iters=0,
        random_seed=cfg.seed,
        numpy_random_seed=cfg.seed,
        torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed,
    )
    if out is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    return _plain(out["results"])


def _plain(value: Any) -> Any:
    """JSON-safe copy (lm_eval results hold numpy scalars and 'N/A' strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _write_json(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _evaluate(cfg: EvalConfig, rt: Any) -> dict[str, Any]:
    validate_config(cfg, ValidationContext(world_size=1))
    seed_everything(cfg.seed)

    # ---- model and tokenizer --------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.tokenizer_dir)
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
    report: dict[str, Any] = {
        "model": {
            "checkpoint_dir": cfg.model.checkpoint_dir,
            "adapter_dir": cfg.model.adapter_dir,
            "adapted_modules": len(loaded.adapted_modules),
            "quantized_modules": len(loaded.quantized_modules),
        }
    }
    lines = []

    # ---- perplexity -------------------------------------------------------------------------
    if cfg.perplexity.source is not None:
        ppl = _perplexity(cfg, loaded, tokenizer)
        report["perplexity"] = asdict(ppl)
        lines.append(
            f"perplexity {ppl.perplexity:.4f} (mean CE {ppl.loss:.6f} nats over {ppl.tokens} "
            f"{cfg.perplexity.tokens if cfg.perplexity.format != 'text' else 'all'} tokens, "
            f"{ppl.sequences} sequences of {cfg.perplexity.source})"
        )

    # ---- lm-evaluation-harness --------------------------------------------------------------
    if cfg.lm_eval.tasks:
        report["lm_eval"] = _lm_eval(cfg, loaded, tokenizer)
        for task, metrics in report["lm_eval"].items():
            shown = ", ".join(
                f"{k.removesuffix(',none')}={v:.4f}"
                for k, v in metrics.items()
                if isinstance(v, float) and "stderr" not in k
            )
            lines.append(f"{task}: {shown}")

    # ---- report -------------------------------------------------------------------------------
    report["config"] = redact(to_container(cfg))
    if cfg.output.file is not None:
        path = _write_json(report, Path(cfg.output.file).expanduser())
        lines.append(f"wrote {path}")
    for line in lines:
        if cfg.output.print:
            sys.stdout.write(line + "\n")
        else:
            logger.info(line)
    return report
