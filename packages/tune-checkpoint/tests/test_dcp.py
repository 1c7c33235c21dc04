"""DCP: sharded (FSDP2) state saved at 2 ranks (torchrun, gloo) through CheckpointManager loads at
1 rank and at 2 ranks with equal values; a DCP step exports to an HF directory bit-exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tune.checkpoint import (
    CheckpointManager,
    StateDictMismatchError,
    export_dcp_to_hf,
    load_safetensors_dir,
    load_sharded,
)

pytest.importorskip("numpy")  # DCP on CPU needs numpy

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        set_model_state_dict, set_optimizer_state_dict,
    )
    from tune.checkpoint import CheckpointManager

    mode, root = sys.argv[1], sys.argv[2]
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    torch.set_num_threads(1)

    torch.manual_seed(0 if mode == "save" else 1)
    model = nn.Sequential(nn.Linear(16, 24), nn.Tanh(), nn.Linear(24, 6))
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    manager = CheckpointManager(root, fsync=False)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def step(lr_scale):
        torch.manual_seed(100 + rank)
        loss = model(torch.randn(4, 16)).pow(2).mean() * lr_scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    if mode == "save":
        step(1.0)
        sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        manager.save(1, sharded_state=sharded, data_state={"rank": rank}, extra={"world": world})
        reference = get_model_state_dict(model, options=full)
        ref_optim = get_optimizer_state_dict(model, optimizer, options=full)
        if rank == 0:
            torch.save({"model": reference, "optim": ref_optim["state"]}, os.path.join(root, "reference.pt"))
    else:
        step(0.0)  # zero gradients: creates the optimizer state the template needs, changes nothing
        sharded = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        state = manager.load(sharded_state=sharded)
        set_model_state_dict(model, sharded["model"])
        set_optimizer_state_dict(model, optimizer, sharded["optim"])
        got = get_model_state_dict(model, options=full)
        got_optim = get_optimizer_state_dict(model, optimizer, options=full).get("state")
        if rank == 0:
            ref = torch.load(os.path.join(root, "reference.pt"), weights_only=True)
            result = {
                "step": state.step,
                "data_state": state.data_state,
                "model_equal": all(torch.equal(got[k], v) for k, v in ref["model"].items()),
                "optim_equal": all(
                    torch.equal(got_optim[k][s], v[s]) for k, v in ref["optim"].items() for s in v
                ),
                "keys": sorted(got),
            }
            with open(os.path.join(root, f"result_{world}.json"), "w") as f:
                json.dump(result, f)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    # Leave without interpreter teardown: gloo's threads sometimes abort it ("terminate called
    # without an active exception") after the work is done.
    sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(script: Path, mode: str, root: Path, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(script), mode, str(root)]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{_free_port()}",
            str(script), mode, str(root),
        ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


@pytest.mark.distributed
def test_dcp_saved_at_two_ranks_loads_at_one_and_two(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = tmp_path / "ckpt"
    root.mkdir()
    _run(script, "save", root, nproc=2)
    manifest = json.loads((root / "step_1" / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert {"rng_rank0.pt", "rng_rank1.pt", "data_rank0.pt", "data_rank1.pt"} <= set(
        manifest["files"]
    )
    assert sum(name.endswith(".distcp") for name in manifest["files"]) == 2

    for nproc in (1, 2):
        _run(script, "load", root, nproc=nproc)
        result = json.loads((root / f"result_{nproc}.json").read_text())
        assert result["step"] == 1
        assert result["data_state"] == {"rank": 0}
        assert result["model_equal"], nproc
        assert result["optim_equal"], nproc
        assert result["keys"] == ["0.bias", "0.weight", "2.bias", "2.weight"]

    # Export the DCP step to an HF directory: equal to the gathered full state, bit for bit.
    reference = torch.load(root / "reference.pt", weights_only=True)["model"]
    out = tmp_path / "hf"
    files = export_dcp_to_hf(
        root / "step_1" / "sharded",
        out,
        key_map=lambda k: f"model.{k}",
        max_shard_size=1000,
        dtype=torch.float64,
        config={"model_type": "toy", "torch_dtype": "float32"},
    )
    assert len(files) > 1
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "float64"
    exported = load_safetensors_dir(out)
    assert sorted(exported) == sorted(f"model.{k}" for k in reference)
    for key, value in reference.items():
        assert torch.equal(exported[f"model.{key}"], value.double())

    # A template that does not match is refused with the key and both shapes.
    bad = {"model": {"0.weight": torch.empty(3, 3), "9.weight": torch.empty(1)}}
    with pytest.raises(StateDictMismatchError) as err:
        load_sharded(root / "step_1" / "sharded", bad)
    assert "'model.9.weight'" in str(err.value)
    assert "model.0.weight: checkpoint [24, 16], template [3, 3]" in str(err.value)
    assert CheckpointManager(root).latest() == root / "step_1"
