"""A tune model + tokenizer as an lm-evaluation-harness ``LM``, registered as ``tune``.

Importing this module registers the class, so ``lm_eval.simple_evaluate(model="tune",
model_args={"checkpoint_dir": ...})`` works after ``import tune.recipes.eval.lm_eval_adapter``.
Scoring, generation and ``model_args`` parsing are ``tune.train``'s ``LMEvalAdapter``; this class
adds ``tune.models.generate`` and loading a checkpoint directory. Needs ``tune-recipes[eval]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

try:
    from lm_eval.api.registry import register_model

    from tune.train.evaluation.lm_eval_adapter import LMEvalAdapter
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the lm-evaluation-harness adapter needs lm_eval: pip install 'tune-recipes[eval]'"
    ) from err

from tune.data import Tokenizer
from tune.models import generate


@register_model("tune")
class TuneLM(LMEvalAdapter):
    """lm_eval's model interface over a tune model: ``LMEvalAdapter`` with ``tune.models.generate``.

    Args:
        model: a tune model in eval mode (``forward(tokens) -> logits [B, T, V]``).
        tokenizer: its tune.data tokenizer.
        max_length: context window in tokens (inputs are cut from the left to fit).
        kwargs: ``batch_size``, ``max_gen_tokens``, ``add_bos`` (see ``LMEvalAdapter``).
    """

    def __init__(
        self, model: nn.Module, tokenizer: Tokenizer, *, max_length: int, **kwargs: Any
    ) -> None:
        super().__init__(model, tokenizer, generate=generate, max_length=max_length, **kwargs)

    @classmethod
    def load_model(cls, args: dict[str, Any]) -> tuple[nn.Module, Tokenizer, int]:
        """``checkpoint_dir`` (+ ``adapter_dir``, ``merge_adapter``, ``quantize``, ``dtype``,
        ``device``, ``tokenizer``) loaded as the generate recipe loads it."""
        from tune.recipes.common.generation_model import load_generation_model
        from tune.recipes.common.runtime import DTYPES

        checkpoint_dir = args.pop("checkpoint_dir", None) or args.pop("pretrained", None)
        if checkpoint_dir is None:
            raise ValueError("model_args for model='tune' need checkpoint_dir=<HF directory>")
        loaded = load_generation_model(
            checkpoint_dir, dtype=DTYPES[args.pop("dtype", "float32")],
            device=torch.device(args.pop("device", "cpu")),
            adapter_dir=args.pop("adapter_dir", None), quantize=args.pop("quantize", None),
            merge_adapter=cls.flag(args.pop("merge_adapter", False)),
        )  # fmt: skip
        tokenizer = Tokenizer.from_dir(args.pop("tokenizer", checkpoint_dir))
        return loaded.checkpoint.model, tokenizer, loaded.checkpoint.config.max_position_embeddings
