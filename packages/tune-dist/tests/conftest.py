"""tune-dist tests: the tiny model and launch helpers are plain modules next to the tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# Uniquely named helper modules (dist_launch, dist_tiny_transformer, dist_tiny_moe, dist_worker,
# dist_ep_scenarios, dist_pp_scenarios) live here; the tests never import tune.models.
sys.path.insert(0, str(Path(__file__).parent))

from dist_launch import run_scenarios

# One torchrun launch per world size for the whole session (each launch costs ~10 s).
TWO_RANK = ["env", "fsdp", "fsdp_lora", "fsdp_ac_offload", "fsdp_options", "tp", "tp_sp",
            "tp_errors", "load", "stop", "data_parallel", "parallelize_tp_lora",
            "ep", "ep_errors", "ep_idle", "ep_lora", "pp", "cp"]  # fmt: skip
FOUR_RANK = ["fsdp_tp", "hsdp", "fsdp_tp_lora", "ep_fsdp", "ep_resume", "ep_tp", "pp_dp", "pp_dcp",
             "cp"]  # fmt: skip


@pytest.fixture(scope="session")
def two_rank(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenarios(tmp_path_factory.mktemp("two_rank"), 2, TWO_RANK)


@pytest.fixture(scope="session")
def four_rank(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_scenarios(tmp_path_factory.mktemp("four_rank"), 4, FOUR_RANK)
