"""The recipes' registries: entry-point groups and the names tune builds in.

Any installed package adds a name with::

    [project.entry-points."tune.optimizers"]
    lion = "mypkg.optim:Lion"
"""

from __future__ import annotations

from tune.config import Registry

OPTIMIZERS = Registry(
    "tune.optimizers",
    "optimizer",
    {
        "adamw": "torch.optim:AdamW",
        "adam": "torch.optim:Adam",
        "sgd": "torch.optim:SGD",
        "adamw8bit": "torchao.optim:AdamW8bit",
    },
)
LR_SCHEDULES = Registry(
    "tune.lr_schedules",
    "lr schedule",
    {
        "constant": "tune.train:constant_schedule_with_warmup",
        "linear": "tune.train:linear_schedule_with_warmup",
        "cosine": "tune.train:cosine_schedule_with_warmup",
        "warmup_stable_decay": "tune.train:warmup_stable_decay_schedule",
    },
)
LOGGERS = Registry(
    "tune.loggers",
    "metric logger",
    {
        "stdout": "tune.train:StdoutLogger",
        "jsonl": "tune.train:JsonlLogger",
        "tensorboard": "tune.train:TensorBoardLogger",
        "wandb": "tune.train:WandbLogger",
        "mlflow": "tune.train:MLflowLogger",
    },
)
# GRPO: reward functions ``fn(inputs: RewardInputs, **options) -> Sequence[float]`` and
# generation backends ``factory(model, *, pad_id, lockstep, **options) -> GenerationBackend``.
REWARDS = Registry(
    "tune.rewards",
    "reward function",
    {
        "exact_answer": "tune.train.rl:exact_answer",
        "answer_format": "tune.train.rl:answer_format",
        "length_penalty": "tune.train.rl:length_penalty",
    },
)
GENERATION_BACKENDS = Registry(
    "tune.generation_backends",
    "generation backend",
    {
        "builtin": "tune.recipes.grpo.backend:builtin_generation_backend",
        "int8": "tune.recipes.grpo.backend:int8_generation_backend",
    },
)
