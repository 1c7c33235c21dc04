"""tune.checkpoint: safetensors and HF checkpoint directories, PEFT adapter directories, atomic training state, DCP."""

from tune.checkpoint._version import __version__
from tune.checkpoint.async_save import AsyncCheckpointSaver, snapshot_state
from tune.checkpoint.containment import ensure_inside
from tune.checkpoint.dcp import export_dcp_to_hf, load_sharded, read_sharded_metadata, save_sharded
from tune.checkpoint.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    NoCheckpointFoundError,
    RunLockedError,
    StateDictMismatchError,
    UnsafeCheckpointPathError,
)
from tune.checkpoint.hf_checkpoint import (
    load_hf_checkpoint,
    save_hf_checkpoint,
    write_hf_metadata,
)
from tune.checkpoint.key_map import rename_keys
from tune.checkpoint.peft_adapter import load_peft_adapter, save_peft_adapter
from tune.checkpoint.rng_state import capture_rng_state, restore_rng_state
from tune.checkpoint.run_lock import RunLock, read_lock_holder
from tune.checkpoint.safetensors_dir import (
    iter_safetensors_dir,
    load_safetensors_dir,
    read_weight_map,
    save_safetensors_dir,
)
from tune.checkpoint.safetensors_file import (
    read_safetensors_file,
    read_safetensors_header,
    write_safetensors_file,
)
from tune.checkpoint.training_state import CheckpointManager, TrainingState

__all__ = [
    "AsyncCheckpointSaver",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "NoCheckpointFoundError",
    "RunLock",
    "RunLockedError",
    "StateDictMismatchError",
    "TrainingState",
    "UnsafeCheckpointPathError",
    "__version__",
    "capture_rng_state",
    "ensure_inside",
    "export_dcp_to_hf",
    "iter_safetensors_dir",
    "load_hf_checkpoint",
    "load_peft_adapter",
    "load_safetensors_dir",
    "load_sharded",
    "read_lock_holder",
    "read_safetensors_file",
    "read_safetensors_header",
    "read_sharded_metadata",
    "read_weight_map",
    "rename_keys",
    "restore_rng_state",
    "save_hf_checkpoint",
    "save_peft_adapter",
    "save_safetensors_dir",
    "save_sharded",
    "snapshot_state",
    "write_hf_metadata",
    "write_safetensors_file",
]
