"""tune.train.evaluation: scoring a causal LM without training it.

- ``dataset_perplexity`` / ``PerplexityResult``: token-mean cross-entropy over dataset batches.
- ``score_continuations``: log-probability (and greediness) of continuations given contexts;
  multiple choice is the argmax over the choices' scores.
- ``rolling_loglikelihood``: a whole sequence's log-probability in windows of the context.
- ``tune.train.evaluation.lm_eval_adapter`` (extra ``[lm-eval]``, imported on its own):
  ``LMEvalAdapter``, an lm-evaluation-harness ``LM`` over callables, and ``run_lm_eval``.
"""

from tune.train.evaluation.loglikelihood import (
    LogitsFn,
    model_device,
    rolling_loglikelihood,
    score_continuations,
)
from tune.train.evaluation.perplexity import PerplexityResult, dataset_perplexity

__all__ = [
    "LogitsFn",
    "PerplexityResult",
    "dataset_perplexity",
    "model_device",
    "rolling_loglikelihood",
    "score_continuations",
]
