"""tune.checkpoint: safetensors and HF checkpoint directories, PEFT adapter directories, atomic training state and resume, DCP."""

from tune.checkpoint._version import __version__
from tune.checkpoint.async_save import AsyncCheckpointSaver, snapshot_state
from tune.checkpoint.containment import ensure_inside
from tune.checkpoint.dcp import export_dcp_to_hf, load_sharded, read_sharded_metadata, save_sharded
from tune.checkpoint.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    NoCheckpointFoundError,
    OutputOverlapsInputError,
    ResumeMismatchError,
    RunDirectoryError,
    RunLockedError,
    StateDictMismatchError,
    UnsafeCheckpointPathError,
)
from tune.checkpoint.fingerprints import (
    TOKENIZER_FILES,
    Fingerprints,
    changed_inputs,
    fingerprint_inputs,
)
from tune.checkpoint.hf_checkpoint import (
    load_hf_checkpoint,
    save_hf_checkpoint,
    write_hf_metadata,
)
from tune.checkpoint.hub import (
    HubDownloadError,
    download_snapshot,
    is_repo_id,
    repo_id_of_snapshot,
    resolve_model_dir,
)
from tune.checkpoint.key_map import rename_keys
from tune.checkpoint.peft_adapter import load_peft_adapter, save_peft_adapter
from tune.checkpoint.resume import (
    find_resume_step,
    load_training_state,
    resume_run,
    save_training_state,
)
from tune.checkpoint.resume_policy import ResumePolicy, changed_settings, check_resume_compatible
from tune.checkpoint.rng_state import capture_rng_state, restore_rng_state
from tune.checkpoint.run_directory import check_output_apart, claim_run_directory
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
    "TOKENIZER_FILES",
    "AsyncCheckpointSaver",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointWriteError",
    "CorruptCheckpointError",
    "Fingerprints",
    "HubDownloadError",
    "NoCheckpointFoundError",
    "OutputOverlapsInputError",
    "ResumeMismatchError",
    "ResumePolicy",
    "RunDirectoryError",
    "RunLock",
    "RunLockedError",
    "StateDictMismatchError",
    "TrainingState",
    "UnsafeCheckpointPathError",
    "__version__",
    "capture_rng_state",
    "changed_inputs",
    "changed_settings",
    "check_output_apart",
    "check_resume_compatible",
    "claim_run_directory",
    "download_snapshot",
    "ensure_inside",
    "export_dcp_to_hf",
    "find_resume_step",
    "fingerprint_inputs",
    "is_repo_id",
    "iter_safetensors_dir",
    "load_hf_checkpoint",
    "load_peft_adapter",
    "load_safetensors_dir",
    "load_sharded",
    "load_training_state",
    "read_lock_holder",
    "read_safetensors_file",
    "read_safetensors_header",
    "read_sharded_metadata",
    "read_weight_map",
    "rename_keys",
    "repo_id_of_snapshot",
    "resolve_model_dir",
    "restore_rng_state",
    "resume_run",
    "save_hf_checkpoint",
    "save_peft_adapter",
    "save_safetensors_dir",
    "save_sharded",
    "save_training_state",
    "snapshot_state",
    "write_hf_metadata",
    "write_safetensors_file",
]
