"""tune.peft: LoRA, DoRA and QLoRA-ready adapters injected into any nn.Module by name pattern; PEFT-format interop."""

from tune.peft._version import __version__

__all__ = ["__version__"]
