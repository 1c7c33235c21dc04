"""A tune model + tokenizer as an lm-evaluation-harness ``LM``, registered as ``tune``.

Importing this module registers the class, so ``lm_eval.simple_evaluate(model="tune",
model_args={"checkpoint_dir": ...})`` works after ``import tune.recipes.eval.lm_eval_adapter``.
Needs ``pip install "tune-recipes[eval]"``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the lm-evaluation-harness adapter needs lm_eval: pip install 'tune-recipes[eval]'"
    ) from err

from tune.data import Tokenizer
from tune.models import generate
from tune.recipes.eval.scoring import rolling_loglikelihood, score_continuations

logger = logging.getLogger(__name__)


def _flag(value: Any) -> bool:
    """A boolean model argument, also from lm_eval's ``key=value`` strings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


@register_model("tune")
class TuneLM(TemplateLM):
    """lm_eval's model interface over a tune model (greedy generation, exact log-likelihoods).

    Args:
        model: a tune model in eval mode (``forward(tokens) -> logits [B, T, V]``).
        tokenizer: its tune.data tokenizer.
        max_length: context window in tokens (inputs are cut from the left to fit).
        batch_size: sequences per forward.
        max_gen_tokens: generated tokens when a request gives no ``max_gen_toks``.
        add_bos: prepend BOS to encoded requests (None: the tokenizer's setting).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        batch_size: int = 8,
        max_gen_tokens: int = 256,
        add_bos: bool | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model = model
        self.tok = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_gen_tokens = max_gen_tokens
        self.add_bos = tokenizer.add_bos if add_bos is None else add_bos
        self._device = next(model.parameters()).device

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> TuneLM:
        """Load ``checkpoint_dir`` (+ ``adapter_dir``, ``quantize``, ``dtype``) as the generate
        recipe does; lm_eval calls this for ``model="tune"``."""
        from tune.recipes.common.data_loading import load_tokenizer
        from tune.recipes.common.generation_model import load_generation_model
        from tune.recipes.common.runtime import DTYPES

        args = {**(additional_config or {}), **arg_dict}
        args = {k: v for k, v in args.items() if v is not None}
        checkpoint_dir = args.pop("checkpoint_dir", None) or args.pop("pretrained", None)
        if checkpoint_dir is None:
            raise ValueError("model_args for model='tune' need checkpoint_dir=<HF directory>")
        device = torch.device(args.pop("device", "cpu"))
        loaded = load_generation_model(
            checkpoint_dir,
            dtype=DTYPES[args.pop("dtype", "float32")],
            device=device,
            adapter_dir=args.pop("adapter_dir", None),
            merge_adapter=_flag(args.pop("merge_adapter", False)),
            quantize=args.pop("quantize", None),
        )
        tokenizer = load_tokenizer(args.pop("tokenizer", checkpoint_dir))
        max_length = int(args.pop("max_length", loaded.checkpoint.config.max_position_embeddings))
        known = {"batch_size", "max_gen_tokens", "add_bos"}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ValueError(f"model_args for model='tune': unknown keys {unknown}")
        return cls(
            loaded.checkpoint.model,
            tokenizer,
            max_length=max_length,
            batch_size=int(args.get("batch_size", 8)),
            max_gen_tokens=int(args.get("max_gen_tokens", 256)),
            add_bos=None if args.get("add_bos") is None else _flag(args["add_bos"]),
        )

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> TuneLM:
        """``key=value,key=value`` model arguments (lm_eval's command-line form)."""
        pairs = [item.split("=", 1) for item in arg_string.split(",") if item.strip()]
        return cls.create_from_arg_obj({k.strip(): v.strip() for k, v in pairs}, additional_config)

    # ---- tokenization ------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        """EOS (ends generation; the prefix of rolling scores when there is no BOS)."""
        eos = self.tok.eos_id
        return self.tok.pad_id if eos is None else eos

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is: BOS when the tokenizer has one, else EOS."""
        bos = self.tok.bos_id
        return self.eot_token_id if bos is None else bos

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Token ids; BOS per ``add_special_tokens`` (None: the adapter's ``add_bos``)."""
        add_bos = self.add_bos if add_special_tokens is None else add_special_tokens
        return self.tok.encode(
            string, add_bos=add_bos and self.tok.bos_id is not None, add_eos=False
        )

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``tokens``."""
        return self.tok.decode(tokens, skip_special_tokens=skip_special_tokens)

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer in lm_eval's cache keys."""
        return f"tune-{self.tok.vocab_size}"

    # ---- scoring -----------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = score_continuations(
            self.model, pairs, max_length=self.max_length, batch_size=self.batch_size
        )
        for (key, _, _), result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole string, predicted from ``prefix_token_id`` on."""
        results = []
        for request in requests:
            (text,) = request.args
            score = rolling_loglikelihood(
                self.model,
                self.tok_encode(text, add_special_tokens=False),
                prefix_token=self.prefix_token_id,
                max_length=self.max_length,
                batch_size=self.batch_size,
            )
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), score)
            results.append(score)
        return results

    # ---- generation ----------------------------------------------------------------------------

    def _until(self, gen_kwargs: dict[str, Any]) -> list[str]:
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        return [*until, eos] if eos and eos not in until else until

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string of each request."""
        results = []
        for start in range(0, len(requests), self.batch_size):
            chunk = [r.args for r in requests[start : start + self.batch_size]]
            limits = [int(kw.get("max_gen_toks", self.max_gen_tokens)) for _, kw in chunk]
            for _, kw in chunk:
                if kw.get("do_sample") or float(kw.get("temperature", 0.0) or 0.0) > 0.0:
                    logger.warning("generate_until: sampling was asked for; decoding greedily")
            budget = max(limits)
            keep = max(1, self.max_length - budget)
            prompts = [self.tok_encode(context)[-keep:] for context, _ in chunk]
            rows = generate(
                self.model,
                prompts,
                max_new_tokens=budget,
                stop_tokens=[self.eot_token_id],
                pad_id=self.tok.pad_id,
            )
            for (context, kw), row, limit in zip(chunk, rows, limits, strict=True):
                text = self.tok_decode(row[:limit], skip_special_tokens=False)
                for stop in self._until(kw):
                    text = text.split(stop, 1)[0]
                self.cache_hook.add_partial("generate_until", (context, kw), text)
                results.append(text)
        return results
