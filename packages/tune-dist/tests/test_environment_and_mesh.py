"""Reading the launcher environment and resolving mesh shapes (single process)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import tune.dist as td

TORCHRUN_ENV = {
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "node0.cluster",
    "MASTER_PORT": "29500",
}


def test_reads_torchrun_variables() -> None:
    info = td.read_environment(TORCHRUN_ENV)
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (5, 1, 8, 4)
    assert (info.master_addr, info.master_port) == ("node0.cluster", 29500)
    assert info.is_distributed
    assert not info.is_main_process
    assert info.backend is None


def test_absent_environment_is_one_process() -> None:
    info = td.read_environment({})
    assert (info.rank, info.local_rank, info.world_size, info.local_world_size) == (0, 0, 1, 1)
    assert not info.is_distributed
    assert info.is_main_process


def test_init_without_launcher_is_a_noop() -> None:
    info = td.init_distributed(timeout=timedelta(seconds=5), env={})
    assert info.world_size == 1
    assert info.backend is None
    assert not dist.is_initialized()
    td.destroy_distributed()  # nothing to destroy: must not raise


def test_init_chooses_the_device() -> None:
    assert td.init_distributed(env={}, device="cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="device: expected 'auto', 'cuda' or 'cpu', got 'gpu'"):
        td.init_distributed(env={}, device="gpu")
    if not torch.cuda.is_available():
        assert td.init_distributed(env={}, device="auto").device == torch.device("cpu")
        with pytest.raises(RuntimeError, match="'cuda' was requested"):
            td.init_distributed(env={}, device="cuda")


def test_destroy_without_waiting(tmp_path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    td.destroy_distributed(wait=False)
    assert not dist.is_initialized()


def test_seed_everything_repeats_every_generator() -> None:
    import random

    np = pytest.importorskip("numpy")
    draws = []
    for _ in range(2):
        td.seed_everything(2**33 + 7)  # NumPy takes it modulo 2**32
        draws.append((random.random(), float(np.random.rand()), torch.rand(()).item()))
    assert draws[0] == draws[1]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**TORCHRUN_ENV, "RANK": "five"}, "RANK='five' is not an integer"),
        ({**TORCHRUN_ENV, "RANK": "8"}, "RANK=8 is outside [0, WORLD_SIZE=8)"),
        ({**TORCHRUN_ENV, "LOCAL_RANK": "4"}, "LOCAL_RANK=4 is outside [0, LOCAL_WORLD_SIZE=4)"),
        ({**TORCHRUN_ENV, "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
        ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR"),
    ],
)
def test_bad_environment_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        td.read_environment(env)


def test_default_backend_by_device() -> None:
    assert td.default_backend(torch.device("cpu")) == "gloo"
    assert td.default_backend(torch.device("cuda", 0)) == "nccl"


@pytest.mark.parametrize(
    ("world", "degrees", "shape"),
    [
        (8, {}, (1, 8, 1)),
        (8, {"tp": 2}, (1, 4, 2)),
        (8, {"dp_replicate": 2, "tp": 2}, (2, 2, 2)),
        (8, {"dp_replicate": -1, "dp_shard": 2, "tp": 2}, (2, 2, 2)),
        (4, {"dp_shard": 4}, (1, 4, 1)),
    ],
)
def test_mesh_shape(world: int, degrees: dict[str, int], shape: tuple[int, int, int]) -> None:
    assert td.resolve_mesh_shape(world, **degrees) == shape


@pytest.mark.parametrize(
    ("world", "degrees", "message"),
    [
        (8, {"tp": 3}, "not divisible"),
        (8, {"dp_shard": 2, "tp": 2}, "but the world size is 8"),
        (8, {"dp_replicate": -1, "dp_shard": -1}, "at most one"),
        (8, {"tp": 0}, "positive or -1"),
    ],
)
def test_bad_mesh_shape(world: int, degrees: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        td.resolve_mesh_shape(world, **degrees)


def test_build_mesh_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="init_distributed"):
        td.build_mesh()
