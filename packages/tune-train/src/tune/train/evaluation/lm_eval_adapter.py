"""lm-evaluation-harness on any causal LM given as callables: an ``LM`` and a task runner.

The model is a logits callable, the tokenizer anything with the ``HarnessTokenizer`` shape (a
``tune.data.Tokenizer`` fits), and generation tasks use a ``generate`` function with the
signature of ``tune.models.generate``; so this package still needs only torch (and lm_eval)::

    lm = LMEvalAdapter(model, tokenizer, generate=tune.models.generate, max_length=2048)
    results = run_lm_eval(lm, ["hellaswag"], num_fewshot=0, limit=100, seed=1234)

Needs ``pip install 'tune-train[lm-eval]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.tasks import TaskManager
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the lm-evaluation-harness adapter needs lm_eval: pip install 'tune-train[lm-eval]'"
    ) from err

from tune.train.evaluation.loglikelihood import (
    LogitsFn,
    model_device,
    rolling_loglikelihood,
    score_continuations,
)

logger = logging.getLogger(__name__)


class HarnessTokenizer(Protocol):
    """What the adapter needs of a tokenizer (``tune.data.Tokenizer`` has it)."""

    add_bos: bool

    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    def encode(
        self, text: str, add_bos: bool | None = None, add_eos: bool | None = None
    ) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


class LMEvalAdapter(TemplateLM):
    """lm_eval's model interface over a logits callable (exact log-likelihoods, greedy
    generation).

    Args:
        model: ``tokens [B, T] -> logits [B, T, V]`` (a model in eval mode).
        tokenizer: its tokenizer.
        generate: ``generate(model, prompts, *, max_new_tokens, stop_tokens, pad_id)`` -> the new
            ids of each prompt, greedy (``tune.models.generate``); None: generation tasks raise.
        max_length: context window in tokens (inputs are cut from the left to fit).
        batch_size: sequences per forward.
        max_gen_tokens: generated tokens when a request gives no ``max_gen_toks``.
        add_bos: prepend BOS to encoded requests (None: the tokenizer's ``add_bos``).
        device: where inputs go (None: ``model``'s parameters' device, else the CPU).
    """

    def __init__(
        self,
        model: LogitsFn,
        tokenizer: HarnessTokenizer,
        *,
        generate: Callable[..., list[list[int]]] | None = None,
        max_length: int,
        batch_size: int = 8,
        max_gen_tokens: int = 256,
        add_bos: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.model = model
        self.tok = tokenizer
        self.generate = generate
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_gen_tokens = max_gen_tokens
        self.add_bos = tokenizer.add_bos if add_bos is None else add_bos
        self._device = model_device(model, device)

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict[str, Any] | None = None
    ) -> Any:
        """``key=value,key=value`` model arguments (lm_eval's command-line form), passed to
        ``create_from_arg_obj`` as strings."""
        pairs = [item.split("=", 1) for item in arg_string.split(",") if item.strip()]
        return cls.create_from_arg_obj({k.strip(): v.strip() for k, v in pairs}, additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None
    ) -> Any:
        """An adapter from lm_eval's ``model_args``: ``load_model`` takes its keys, then
        ``max_length`` (default: the model's context), ``batch_size``, ``max_gen_tokens`` and
        ``add_bos`` (strings accepted); any other key raises ``ValueError``."""
        args = {k: v for k, v in {**(additional_config or {}), **arg_dict}.items() if v is not None}
        model, tokenizer, context = cls.load_model(args)
        max_length = int(args.pop("max_length", context))
        add_bos = args.pop("add_bos", None)
        batch_size = int(args.pop("batch_size", 8))
        max_gen_tokens = int(args.pop("max_gen_tokens", 256))
        if args:
            raise ValueError(f"model_args for {cls.__name__}: unknown keys {sorted(args)}")
        return cls(
            model, tokenizer, max_length=max_length, batch_size=batch_size,
            max_gen_tokens=max_gen_tokens, add_bos=None if add_bos is None else cls.flag(add_bos),
        )  # fmt: skip

    @classmethod
    def load_model(cls, args: dict[str, Any]) -> tuple[Any, Any, int]:
        """``(model, tokenizer, context length)`` from ``model_args``, popping the keys it reads.

        Subclasses that lm_eval creates by name (``register_model``) implement it.
        """
        raise NotImplementedError(f"{cls.__name__} cannot be created from lm_eval model_args")

    @staticmethod
    def flag(value: Any) -> bool:
        """A boolean model argument, also from lm_eval's ``key=value`` strings (true/1/yes)."""
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes")
        return bool(value)

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
            self.model, pairs, max_length=self.max_length, batch_size=self.batch_size,
            device=self._device,
        )  # fmt: skip
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
                device=self._device,
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
        if self.generate is None:
            raise NotImplementedError(
                "generate_until: this LMEvalAdapter was built without generate=; pass one "
                "(tune.models.generate) to run generation tasks"
            )
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
            rows = self.generate(
                self.model, prompts, max_new_tokens=budget, stop_tokens=[self.eot_token_id],
                pad_id=self.tok.pad_id,
            )  # fmt: skip
            for (context, kw), row, limit in zip(chunk, rows, limits, strict=True):
                text = self.tok_decode(row[:limit], skip_special_tokens=False)
                for stop in self._until(kw):
                    text = text.split(stop, 1)[0]
                self.cache_hook.add_partial("generate_until", (context, kw), text)
                results.append(text)
        return results


def _plain(value: Any) -> Any:
    """JSON-safe copy (lm_eval results hold numpy scalars and 'N/A' strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def run_lm_eval(
    lm: Any,
    tasks: Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: float | None = None,
    include_path: str | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """Run lm_eval tasks on ``lm``; returns task -> metric -> value as plain JSON-safe values.

    Args:
        lm: an lm_eval ``LM`` (an ``LMEvalAdapter``).
        tasks: task or group names known to lm_eval (or defined under ``include_path``).
        num_fewshot: few-shot examples per prompt (None: each task's default).
        limit: examples per task: a count (>= 1) or a fraction below 1 (None: all).
        include_path: a directory of extra task YAML files.
        seed: every seed lm_eval takes (sampling, numpy, torch, few-shot selection).

    Raises:
        RuntimeError: lm_eval returned no results.
    """
    if limit is not None and limit >= 1:
        limit = int(limit)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=TaskManager(include_path=include_path),
        log_samples=False,
        bootstrap_iters=0,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if out is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    return _plain(out["results"])
