"""tune.dist applies tune.models' own TP plans, FSDP, expert parallelism (Qwen3-MoE) and context
parallelism (ring attention over an 8192-token row, plain and packed) and pipeline parallelism
(a tied Llama cut into stages, packed rows, 1F1B / interleaved 1F1B / ZBV) to tune.models models
(torchrun, gloo).

Loss and every gradient equal a single-process run (1e-5): the models' attention derives local
head counts from the projection outputs, the plan names real modules, tied embeddings stay tied.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tune.dist")
models = pytest.importorskip("tune.models")
if not all(hasattr(models, n) for n in ("build_from_hf_config", "named_size_config", "tp_plan")):
    pytest.skip("tune.models lacks its builders or tp_plan", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.distributed]

WORKER = Path(__file__).parent / "dist_models_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tune_models_under_tp_and_fsdp(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TUNE_DIST_TEST_PG_TIMEOUT="60")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
        str(WORKER), str(out),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun hung for 240 s and was killed:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-6000:]
    ranks = json.loads(out.read_text())
    for rank, results in enumerate(ranks):
        for case, r in results.items():
            assert r["loss_err"] < 1e-5, (rank, case, r)
            assert r["grad_err"] < 1e-5, (rank, case, r)
    r0 = ranks[0]
    assert "sequence_parallel" in r0["qwen3-8b/tp"]["plan_styles"]  # untied: SP plan
    assert r0["llama3.2-1b/tp"]["plan_styles"] == ["colwise", "rowwise"]  # tied: plain plan
    assert r0["llama3.2-1b/tp"]["tied"] is True
    assert r0["llama3.2-1b/fsdp"]["tied"] is True
    assert r0["qwen3-30b-a3b/ep"]["plan_styles"] == ["grouped_experts"]  # experts over 2 ranks
    # MoE: plain attention plan (no sequence parallel), experts not in the TP plan
    assert r0["qwen3-30b-a3b/tp"]["plan_styles"] == ["colwise", "head_sharded", "rowwise"]
    assert r0["qwen1.5-moe-a2.7b/tp"]["plan_styles"] == ["colwise", "rowwise"]
    for case in ("llama3.2-1b/cp", "llama3.2-1b/cp_packed"):  # checked above: errors < 1e-5
        assert r0[case]["grad_max"] > 1e-4, r0[case]  # gradients large enough to be wrong
    # pipeline parallel: every parameter's gradient (the LM head's tied copy too) checked above
    for schedule in ("1f1b", "interleaved_1f1b", "zbv_zero_bubble"):
        assert r0[f"llama3.2-1b/pp_{schedule}"]["tied"] is True  # the model itself stays tied
