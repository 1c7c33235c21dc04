"""The ``eval`` recipe: the model as ``generate`` loads it, perplexity over a dataset split
(``tune.train.evaluation``), lm-evaluation-harness tasks (``TuneLM``), one JSON report."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from functools import partial
from typing import Any

from torch import nn

from tune.config import to_container
from tune.data import (
    Tokenizer,
    build_sample_builder,
    make_loader,
    padding_free_batch,
    resolve_padding_free,
    split_source,
)
from tune.dist import seed_everything
from tune.quant import is_quantized_weight
from tune.recipes.common.generation_model import LoadedModel, load_configured_model
from tune.recipes.common.outputs import write_report
from tune.recipes.common.recipe_run import run_in_one_process
from tune.recipes.eval.config import EvalConfig
from tune.train.evaluation import PerplexityResult, dataset_perplexity
from tune.train.loggers.redaction import redact_secrets

logger = logging.getLogger(__name__)


def run(config: EvalConfig) -> dict[str, Any]:
    """Evaluate ``config.model`` (a validated eval config): perplexity and/or lm_eval tasks.

    Returns:
        The report: ``perplexity`` (``loss``, ``perplexity``, ``tokens``, ``sequences``,
        ``batches``; absent without ``perplexity.source``), ``lm_eval`` (task -> metric ->
        value; absent without tasks), ``model`` and ``config``.
    """
    return run_in_one_process("eval", config, _evaluate)


def _perplexity(cfg: EvalConfig, loaded: LoadedModel, tokenizer: Tokenizer) -> PerplexityResult:
    p = cfg.perplexity
    assert p.source is not None
    builder = build_sample_builder(
        tokenizer, p.format, column_map=p.column_map, chat_template=cfg.tokenizer.chat_template,
        train_on_input=p.tokens == "all", key="perplexity.format",
        column_map_key="perplexity.column_map",
    )  # fmt: skip
    dataset, _ = split_source(p.source, p.split, None, 0.0, cfg.seed)
    loader = make_loader(
        dataset, builder, batch_size=p.batch_size, max_seq_len=p.max_seq_len, packing=False,
        truncation=p.truncation, seed=cfg.seed, shuffle=False, rank=0, world_size=1, endless=False,
    )  # fmt: skip
    model = loaded.checkpoint.model
    padding_free = resolve_padding_free(
        p.padding_free, device=next(model.parameters()).device, packing=False, compile=False,
        tp_size=1, key="perplexity.padding_free",
    )  # fmt: skip
    # The fused CE reads `output.weight` as a dense matrix: a plain float layer only.
    dense_output = type(model.output) is nn.Linear and not is_quantized_weight(model.output.weight)
    result = dataset_perplexity(
        model,
        loader,
        fused=p.fused_ce and dense_output,
        softcap=getattr(loaded.checkpoint.config, "final_logit_softcapping", None),
        max_batches=p.max_batches,
        prepare=partial(padding_free_batch, enabled=padding_free),
    )
    if loader.stats.dropped_too_long:
        logger.warning(
            "perplexity: %d examples too long were dropped", loader.stats.dropped_too_long
        )
    return result


def _lm_eval(cfg: EvalConfig, loaded: LoadedModel, tokenizer: Tokenizer) -> dict[str, Any]:
    from tune.recipes.eval.lm_eval_adapter import TuneLM  # lm_eval: an optional extra
    from tune.train.evaluation.lm_eval_adapter import run_lm_eval

    le = cfg.lm_eval
    lm = TuneLM(
        loaded.checkpoint.model, tokenizer, batch_size=le.batch_size, add_bos=le.add_bos,
        max_length=le.max_length or loaded.checkpoint.config.max_position_embeddings,
        max_gen_tokens=le.max_gen_tokens,
    )  # fmt: skip
    return run_lm_eval(
        lm, le.tasks, num_fewshot=le.num_fewshot, limit=le.limit, include_path=le.include_path,
        seed=cfg.seed,
    )  # fmt: skip


def _evaluate(cfg: EvalConfig, rt: Any) -> dict[str, Any]:
    seed_everything(cfg.seed)

    # ---- model and tokenizer --------------------------------------------------------------
    tokenizer = Tokenizer.from_dir(cfg.tokenizer_dir)
    loaded = load_configured_model(cfg, rt, tokenizer)
    report: dict[str, Any] = {"model": {
        "checkpoint_dir": cfg.model.checkpoint_dir, "adapter_dir": cfg.model.adapter_dir,
        "adapted_modules": len(loaded.adapted_modules),
        "quantized_modules": len(loaded.quantized_modules),
    }}  # fmt: skip
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
    report["config"] = redact_secrets(to_container(cfg))
    write_report(cfg.output, json.dumps(report, indent=2, default=str) + "\n", lines)
    return report
