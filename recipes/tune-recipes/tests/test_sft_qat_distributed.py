"""write_quantized_output on an FSDP-sharded QAT model (2 gloo ranks) writes what one process does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune.quant import is_quantized_weight
from tune.recipes.common.generation_model import load_generation_model
from tune_testing import TinyAssets

# Each rank: load the base, prepare QAT (exclude output), shard with FSDP2 (or not, with one
# process), then write the quantized directory (a collective when sharded).
_SCRIPT = """
import sys
from pathlib import Path
import torch
from tune.dist import apply_fsdp, build_mesh, data_parallel_mesh, destroy_distributed, init_distributed
from tune.models import TransformerBlock
from tune.quant import prepare_qat
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.common.qat_outputs import write_quantized_output

base, out = Path(sys.argv[1]), Path(sys.argv[2])
info = init_distributed(backend="gloo")
ckpt = load_pretrained(base, dtype=torch.float32, device=torch.device("cpu"))
prepare_qat(ckpt.model, "int8_dynamic_int4_weight", exclude=["output"])
if info.is_distributed:
    apply_fsdp(ckpt.model, data_parallel_mesh(build_mesh(device_type="cpu")),
               block_match=TransformerBlock)
written = write_quantized_output(out, ckpt.model, ckpt, base, scheme="int8_dynamic_int4_weight",
                                 is_main=info.is_main_process, distributed=info.is_distributed)
assert bool(written) == info.is_main_process, written
destroy_distributed()
"""


@pytest.mark.slow  # ~20-40 s each; run with `nox -s "tests(package='recipes')" -- -m slow`
@pytest.mark.distributed
def test_sharded_model_writes_the_same_quantized_directory(
    tied_assets: TinyAssets, tmp_path: Path
) -> None:
    script = tmp_path / "write_quantized.py"
    script.write_text(_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = {
        "one": [sys.executable, str(script)],
        "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", str(script)],
    }  # fmt: skip
    for name, command in launch.items():
        result = subprocess.run(
            [*command, str(tied_assets.checkpoint_dir), str(tmp_path / name)],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (
        load_generation_model(tmp_path / n / "quantized", dtype=torch.float32,
                              device=torch.device("cpu")).checkpoint.model
        for n in ("one", "two")
    )  # fmt: skip
    assert is_quantized_weight(two.layers["1"].mlp.down_proj.weight)
    tokens = torch.randint(0, 400, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(two(tokens), one(tokens), atol=0.0, rtol=0.0)
