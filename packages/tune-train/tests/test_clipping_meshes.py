"""clip_grad_norm over DTensor gradients on two meshes (FSDP + tensor parallel with modules left
out of the TP plan), in a one-process gloo group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor

from tune.train import clip_grad_norm


def test_norm_and_clipping_across_two_meshes(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh_2d = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp_shard", "tp"))
        a = nn.Parameter(distribute_tensor(torch.zeros(2), mesh_2d, [Shard(0), Shard(0)]))
        b = nn.Parameter(distribute_tensor(torch.zeros(1), mesh_2d["dp_shard"], [Replicate()]))
        a.grad = distribute_tensor(torch.tensor([3.0, 0.0]), mesh_2d, [Shard(0), Shard(0)])
        b.grad = distribute_tensor(torch.tensor([4.0]), mesh_2d["dp_shard"], [Replicate()])
        assert float(clip_grad_norm([a, b], max_norm=None)) == pytest.approx(5.0)
        norm = clip_grad_norm([a, b], max_norm=1.0)
        assert type(norm) is torch.Tensor
        assert float(norm) == pytest.approx(5.0)
        clipped = torch.cat([a.grad.full_tensor(), b.grad.full_tensor()])
        assert clipped.tolist() == pytest.approx([0.6, 0.0, 0.8], rel=1e-5)
        inf = clip_grad_norm([a, b], max_norm=1.0, norm_type=float("inf"))
        assert float(inf) == pytest.approx(0.8)  # the largest entry; below max_norm: untouched
        assert b.grad.full_tensor().tolist() == pytest.approx([0.8], rel=1e-5)
    finally:
        dist.destroy_process_group()
