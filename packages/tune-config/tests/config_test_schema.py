"""A small config schema for the tune-config tests: sections, enums, optionals, registries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tune.config import Checks, Issue, Registry, ValidationContext, component

# Builtins point at the standard library: the tests need no torch.
OPTIMIZERS = Registry(
    "tune_config_test.optimizers",
    "optimizer",
    {"adamw": "collections:OrderedDict", "sgd": "fractions:Fraction", "own": None},
)
LOGGERS = Registry("tune_config_test.loggers", "metric logger", {"stdout": None, "jsonl": None})


@dataclass
class OptimizerConfig:
    name: str = field(default="adamw", metadata=component(OPTIMIZERS))
    lr: float = 1e-3
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    source: str
    max_seq_len: int | None = 512
    packing: bool = False
    column_map: dict[str, str] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)


@dataclass
class TrainingConfig:
    method: Literal["full", "lora", "dora"] = "full"
    max_steps: int | None = None
    warmup_steps: int = 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loggers: list[str] = field(default_factory=lambda: ["stdout"], metadata=component(LOGGERS))


@dataclass
class RunConfig:
    data: DataConfig
    output_dir: str = "out"
    log_path: str | None = None
    code: str = "a"
    training: TrainingConfig = field(default_factory=TrainingConfig)
    allow_imports: list[str] = field(default_factory=list)

    def validate(self, context: ValidationContext) -> list[Issue]:
        checks = Checks(context)
        checks.positive("training.optimizer.lr", self.training.optimizer.lr)
        checks.non_negative("training.warmup_steps", self.training.warmup_steps)
        if self.training.max_steps is not None:
            checks.require(
                self.training.warmup_steps < self.training.max_steps,
                "training.warmup_steps",
                f"must be < training.max_steps ({self.training.max_steps})",
            )
        if context.world_size > 1 and self.training.method == "dora":
            checks.warn("training.method", "dora under several processes is slow")
        return checks.issues


@dataclass
class NoImports:
    """A schema without an ``allow_imports`` field."""

    name: str = "x"
