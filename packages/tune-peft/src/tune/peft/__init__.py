"""tune.peft: LoRA, DoRA and QLoRA-ready adapters injected into any nn.Module by name pattern; PEFT-format interop."""

from tune.peft._version import __version__
from tune.peft.config import ALL_LINEAR, MAX_RANK, MAX_SCALING, LoraConfig
from tune.peft.disable import disable_adapters
from tune.peft.expert_lora import StackedLoRA, param_lora_layers, select_parameter_targets
from tune.peft.inject import (
    apply_lora,
    delete_adapter,
    initialize_adapters,
    linear_module_names,
    lora_modules,
    remove_lora,
    select_lora_targets,
    set_active_adapter,
)
from tune.peft.lora_linear import LoRALinear, LoRAWeights
from tune.peft.merge import merge_adapters, merge_and_unload, unmerge_adapters
from tune.peft.peft_config import (
    AdapterConfigLike,
    from_peft_config,
    read_adapter_config,
    to_peft_config,
)
from tune.peft.peft_format import (
    AdapterMismatchError,
    KeyMap,
    adapter_key_map,
    export_peft_adapter,
    load_peft_adapter,
    peft_target_modules,
)
from tune.peft.state import (
    ParameterCount,
    adapter_state_dict,
    count_parameters,
    load_adapter_state_dict,
    mark_only_adapters_trainable,
    trainable_parameters,
)

__all__ = [
    "ALL_LINEAR",
    "MAX_RANK",
    "MAX_SCALING",
    "AdapterConfigLike",
    "AdapterMismatchError",
    "KeyMap",
    "LoRALinear",
    "LoRAWeights",
    "LoraConfig",
    "ParameterCount",
    "StackedLoRA",
    "__version__",
    "adapter_key_map",
    "adapter_state_dict",
    "apply_lora",
    "count_parameters",
    "delete_adapter",
    "disable_adapters",
    "export_peft_adapter",
    "from_peft_config",
    "initialize_adapters",
    "linear_module_names",
    "load_adapter_state_dict",
    "load_peft_adapter",
    "lora_modules",
    "mark_only_adapters_trainable",
    "merge_adapters",
    "merge_and_unload",
    "param_lora_layers",
    "peft_target_modules",
    "read_adapter_config",
    "remove_lora",
    "select_lora_targets",
    "select_parameter_targets",
    "set_active_adapter",
    "to_peft_config",
    "trainable_parameters",
    "unmerge_adapters",
]
