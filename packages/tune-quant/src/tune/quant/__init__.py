"""tune.quant: torchao post-training quantization, QAT, NF4 weights for QLoRA, float8 training."""

from tune.quant._version import __version__

__all__ = ["__version__"]
