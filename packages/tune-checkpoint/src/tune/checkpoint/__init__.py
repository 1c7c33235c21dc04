"""tune.checkpoint: Safetensors and HF checkpoint directories, PEFT adapter directories, atomic training state, DCP."""

from tune.checkpoint._version import __version__

__all__ = ["__version__"]
