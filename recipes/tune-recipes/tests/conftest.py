"""Fixtures: the `echo` test recipe installed through a fake distribution, tiny assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ECHO_MODULE = '''
"""A trivial recipe for tests: writes its config and its rank to a file."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tune.config import Checks
from tune.recipes.recipe import Recipe


@dataclass
class EchoConfig:
    out_dir: str
    message: str = "hello"
    batch: int = 4
    lr: float = 0.1
    tags: list[str] = field(default_factory=list)

    def validate(self, context):
        checks = Checks(context)
        checks.positive("lr", self.lr)
        checks.require(
            self.batch % context.world_size == 0,
            "batch",
            f"{self.batch} is not divisible by the world size {context.world_size}",
        )
        return checks.issues


def run(config: EchoConfig) -> None:
    rank = os.environ.get("RANK", "0")
    record = {"rank": int(rank), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    record["config"] = asdict(config)
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    Path(config.out_dir, f"rank{rank}.json").write_text(json.dumps(record))


recipe = Recipe(
    name="echo",
    config_class=EchoConfig,
    run=run,
    description="test recipe",
    config_dir=Path(__file__).parent / "echo_configs",
)
'''

ECHO_ENTRY_POINTS = """\
[tune.recipes]
echo = echo_recipes:recipe

[tune.optimizers]
echo_sgd = torch.optim:SGD
"""


def install_echo_recipe(root: Path) -> Path:
    """Write the `echo` recipe module and a dist-info registering it; returns the path to add."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "echo_recipes.py").write_text(ECHO_MODULE)
    (root / "echo_configs").mkdir()
    (root / "echo_configs" / "echo_default.yaml").write_text("recipe: echo\nout_dir: echo_out\n")
    dist = root / "echo_recipes-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-recipes\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ECHO_ENTRY_POINTS)
    return root


@pytest.fixture
def echo_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The echo recipe installed on sys.path (in-process) and on PYTHONPATH (subprocesses)."""
    root = install_echo_recipe(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in [str(root), os.environ.get("PYTHONPATH")] if p)
    )
    return root


@pytest.fixture
def sft_dirs(tmp_path: Path) -> dict[str, Path]:
    """An HF-style checkpoint directory (config.json + safetensors) and a data file."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    save_file(
        {"lm_head.weight": np.zeros((4, 4), dtype=np.float32)}, str(ckpt / "model.safetensors")
    )
    data = tmp_path / "train.jsonl"
    data.write_text('{"instruction": "say hi", "output": "hi"}\n')
    return {"checkpoint": ckpt, "data": data, "root": tmp_path}


@pytest.fixture
def sft_yaml(sft_dirs: dict[str, Path]):
    """Write an SFT config (the tiny LoRA one pointed at real local paths, plus edits)."""
    import yaml

    import tune.recipes

    base = Path(tune.recipes.__file__).parent / "configs" / "sft" / "tiny_cpu_lora.yaml"

    def write(text: str | None = None, name: str = "cfg.yaml", **sections: dict) -> Path:
        if text is None:
            tree = yaml.safe_load(base.read_text())
            tree["model"]["checkpoint_dir"] = str(sft_dirs["checkpoint"])
            tree["data"]["source"] = str(sft_dirs["data"])
            tree["checkpointing"]["output_dir"] = str(sft_dirs["root"] / "out")
            tree["logging"]["jsonl_path"] = "${checkpointing.output_dir}/metrics.jsonl"
            for key, value in sections.items():
                tree[key].update(value) if isinstance(value, dict) else tree.update({key: value})
            text = yaml.safe_dump(tree, sort_keys=False)
        path = sft_dirs["root"] / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny random Llama checkpoint (NF4-friendly sizes) and 240 instruction rows."""
    from tune_testing import make_tiny_assets

    return make_tiny_assets(tmp_path_factory.mktemp("sft_assets"))


@pytest.fixture(scope="session")
def moe_assets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A tiny random Qwen3-MoE checkpoint (8 experts, top-2) and 240 instruction rows."""
    from tune_testing import make_tiny_assets

    return make_tiny_assets(tmp_path_factory.mktemp("moe_assets"), architecture="qwen3_moe")


@pytest.fixture(scope="session")
def tied_assets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``tiny_assets`` with the LM head tied to the embedding (Llama 3.2, Qwen2.5, SmolLM2):
    the distributed tests run on it, so a tied alias of a frozen weight cannot slip through."""
    from tune_testing import make_tiny_assets

    return make_tiny_assets(tmp_path_factory.mktemp("tied_assets"), tie_word_embeddings=True)


@pytest.fixture(scope="session")
def deep_tied_assets(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``tied_assets`` with 4 blocks: enough for 2 pipeline ranks of 2 virtual stages each."""
    from tune_testing import make_tiny_assets

    return make_tiny_assets(
        tmp_path_factory.mktemp("deep_tied_assets"), tie_word_embeddings=True, num_layers=4
    )
