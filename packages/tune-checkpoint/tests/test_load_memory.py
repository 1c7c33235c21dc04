"""Loading into a meta-built model holds about one copy of the weights (fresh process, VmHWM)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from tune.checkpoint import save_hf_checkpoint

CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    from torch import nn
    from tune.checkpoint import load_hf_checkpoint

    def status_mb(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024

    with torch.device("meta"):
        model = nn.Sequential(*(nn.Linear(1024, 1024, bias=False) for _ in range(32)))
    baseline = status_mb("VmRSS")
    load_hf_checkpoint(model, sys.argv[1])
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    # VmHWM is this process image's peak RSS; ru_maxrss can carry the parent's peak over exec.
    peak = status_mb("VmHWM")
    print(json.dumps({"baseline": baseline, "peak": peak, "sha256": digest.hexdigest()}))
    """
)


def test_meta_load_peak_memory_is_near_one_copy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(1024, 1024, bias=False) for _ in range(32)))  # 128 MiB
    save_hf_checkpoint(tmp_path, model.state_dict(), max_shard_size="64MB")
    weights_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # bit-exact weights (a float sum would depend on the thread count's reduction order)
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
    assert result["sha256"] == digest.hexdigest()
    extra = (result["peak"] - result["baseline"]) / weights_mb
    assert 0.9 < extra < 1.2, result  # one copy of the weights, no mmap or second copy
