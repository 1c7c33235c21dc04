"""The tiny random checkpoints and data files that the bundled tiny configs read (``tune init``).

``make_tiny_checkpoint`` writes a random tiny Llama HF directory with a BPE tokenizer, offline.
``init_tiny_workspace(root)`` writes, under ``root``, every path that ``configs/*/tiny*.yaml`` names
(``TINY_WORKSPACE``), so that ``tune run sft --config sft/tiny_cpu_lora`` runs from ``root``::

    for path, status in init_tiny_workspace("."):
        print(status, path)

Every file and directory is written aside and renamed into place: an interrupted or killed init
leaves no half-written checkpoint, and a later init finishes the job.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch

from tune.checkpoint import save_hf_checkpoint
from tune.checkpoint.write_aside import written_aside
from tune.data import Tokenizer
from tune.data.synthetic import (
    arithmetic_rows,
    save_tiny_tokenizer,
    synthetic_instruction_rows,
    synthetic_preference_rows,
    synthetic_unpaired_rows,
    write_jsonl,
)
from tune.models import build_from_hf_config, convert_native_to_hf
from tune.models.llama import tiny_llama_config
from tune.models.qwen3_moe import tiny_qwen3_moe_config

# Linear layers whose sizes are multiples of 16,384 elements, so NF4 (QLoRA) applies to all.
NF4_FRIENDLY_SIZES: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 4,
    "intermediate_size": 256,
}
TINY_SIZES: dict[str, Any] = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 128,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

Status = Literal["made", "kept", "replaced"]


def make_tiny_checkpoint(
    directory: str | Path,
    *,
    seed: int = 0,
    template: str = "chatml",
    vocab_size: int = 512,
    tokenizer_text: Iterable[str] = (),
    tokenizer_dir: str | Path | None = None,
    overwrite: bool = False,
    architecture: Literal["llama", "qwen3_moe"] = "llama",
    **model_sizes: Any,
) -> Path:
    """Write a random-weight tiny Llama (or Qwen3-MoE) HF directory with a byte-level BPE tokenizer, offline.

    ``config.json``, ``model.safetensors``, ``generation_config.json``, ``tokenizer.json`` and
    ``tokenizer_config.json``: ``transformers`` loads it as it is. The same seed gives the same
    weights. The directory is written aside and renamed into place.

    Args:
        directory: output HF directory; an existing non-empty one needs ``overwrite``.
        seed: weight-init seed.
        template: bundled chat template of the tokenizer (see ``tune.data``).
        vocab_size: BPE vocabulary size to train.
        tokenizer_text: extra text the BPE is trained on (e.g. the task's rows).
        tokenizer_dir: copy this directory's tokenizer instead of training one (a teacher and
            its student share one); ``template``, ``vocab_size`` and ``tokenizer_text`` are unused.
        overwrite: replace an existing non-empty ``directory`` whole.
        architecture: "llama", or "qwen3_moe" (8 experts, top-2, in every layer).
        **model_sizes: arguments of ``tune.models.llama.tiny_llama_config`` (hidden_size, ...).

    Raises:
        FileExistsError: ``directory`` exists, is not empty, and ``overwrite`` is False.
    """
    directory = Path(directory)
    if not overwrite and directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; pass overwrite=True")
    with written_aside(directory) as tmp:
        if tokenizer_dir is None:
            save_tiny_tokenizer(
                tmp, template=template, vocab_size=vocab_size, extra_text=tokenizer_text
            )
        else:
            for name in TOKENIZER_FILES:
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
        tok = Tokenizer.from_dir(tmp)
        vocab = -(-tok.vocab_size // 64) * 64  # rounded up: the extra rows are never produced
        make_config = tiny_qwen3_moe_config if architecture == "qwen3_moe" else tiny_llama_config
        config = make_config(vocab, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, **model_sizes)
        torch.manual_seed(seed)
        model = build_from_hf_config(config, device="cpu", dtype=torch.float32)
        model.init_weights()
        state = {k: v.detach() for k, v in model.state_dict().items()}
        save_hf_checkpoint(tmp, convert_native_to_hf(state, config), config=config)
        generation = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "do_sample": False}
        (tmp / "generation_config.json").write_text(json.dumps(generation))
    return directory


def write_rows_aside(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """``write_jsonl`` to a temporary sibling, then renamed onto ``path`` (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_jsonl(rows, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _tokenizer_text() -> list[str]:
    """Text of every tiny data file, so that the shared BPE covers the tasks' words."""
    instructions = [
        f"{r['instruction']} {r['input']} {r['output']}" for r in synthetic_instruction_rows(600)
    ]
    arithmetic = [f"{r['prompt']} Answer: {r['answer']}" for r in arithmetic_rows(600)]
    return instructions + arithmetic


def _base(path: Path, root: Path, force: bool) -> Path:
    return make_tiny_checkpoint(
        path, tokenizer_text=_tokenizer_text(), overwrite=force, **NF4_FRIENDLY_SIZES
    )


def _teacher(path: Path, root: Path, force: bool) -> Path:
    tokenizer = root / "checkpoints" / "tiny"  # teacher and student share its tokenizer
    return make_tiny_checkpoint(
        path, seed=1, tokenizer_dir=tokenizer, overwrite=force, **NF4_FRIENDLY_SIZES
    )


def _student(path: Path, root: Path, force: bool) -> Path:
    tokenizer = root / "checkpoints" / "tiny"
    return make_tiny_checkpoint(
        path, seed=2, tokenizer_dir=tokenizer, overwrite=force, **TINY_SIZES
    )


def _moe(path: Path, root: Path, force: bool) -> Path:
    tokenizer = root / "checkpoints" / "tiny"
    return make_tiny_checkpoint(
        path, tokenizer_dir=tokenizer, overwrite=force, architecture="qwen3_moe",
        **NF4_FRIENDLY_SIZES,  # QLoRA (training.method=qlora) quantizes its experts too
    )  # fmt: skip


def _rows(make: Callable[[], list[dict[str, Any]]]) -> Callable[[Path, Path, bool], Path]:
    return lambda path, root, force: write_rows_aside(make(), path)


# Every path the bundled tiny configs name, relative to where they run, and how it is made; in
# order (the teacher and student copy the tokenizer of checkpoints/tiny).
TINY_WORKSPACE: dict[str, tuple[str, Callable[[Path, Path, bool], Path]]] = {
    "checkpoints/tiny": ("random tiny Llama (NF4-friendly sizes), BPE tokenizer", _base),
    "checkpoints/tiny_teacher": ("random tiny Llama, the distill configs' teacher", _teacher),
    "checkpoints/tiny_student": ("smaller random tiny Llama, their student", _student),
    "checkpoints/tiny_moe": ("random tiny Qwen3-MoE (NF4-friendly), 8 experts, top-2", _moe),
    "data/tiny_instructions.jsonl": (
        "2000 instruction rows (sft, distill, eval)",
        _rows(lambda: synthetic_instruction_rows(2000, seed=0)),
    ),
    "data/tiny_preferences.jsonl": (
        "400 preference pairs (preference: dpo)",
        _rows(lambda: synthetic_preference_rows(400, seed=0)),
    ),
    "data/tiny_unpaired.jsonl": (
        "400 unpaired rows (preference: kto)",
        _rows(lambda: synthetic_unpaired_rows(400, seed=0)),
    ),
    "data/arithmetic.jsonl": (
        "2000 arithmetic word problems (grpo)",
        _rows(lambda: arithmetic_rows(2000, seed=0)),
    ),
}


def init_tiny_workspace(
    root: str | Path = ".", *, force: bool = False
) -> list[tuple[Path, Status]]:
    """Write every path of ``TINY_WORKSPACE`` under ``root``; an existing one is kept unless
    ``force``, and then replaced whole.

    Returns:
        Each path and what happened to it, in ``TINY_WORKSPACE`` order.
    """
    root = Path(root)
    done: list[tuple[Path, Status]] = []
    for relative, (_, make) in TINY_WORKSPACE.items():
        path = root / relative
        exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
        if exists and not force:
            done.append((path, "kept"))
            continue
        make(path, root, force)
        done.append((path, "replaced" if exists else "made"))
    return done
