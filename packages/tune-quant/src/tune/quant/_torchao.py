"""Import torchao once, on first need, without its start-up noise.

On a machine without CUDA kernels or Triton, ``import torchao`` logs a warning for every compiled
extension it cannot load and for the missing Triton, and registers an Enum with torch's pytree in
a way that torch now deprecates. None of it concerns the caller: the kernels it names are never
used on such a machine. Those records go to DEBUG; every other torchao warning passes.
"""

from __future__ import annotations

import importlib
import logging
import sys

logger = logging.getLogger(__name__)

# (logger name, start of the message) of the import-time records that are expected.
_EXPECTED = (
    ("torchao", "Failed to load "),
    ("torchao.kernel.intmm", "Warning: Detected no triton"),
    ("torch.utils._pytree", "%s is an Enum subclass"),
)


class _ExpectedImportNoise(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.prefix):
            logger.debug("torchao import: %s", record.getMessage())
            return False
        return True


def import_torchao() -> None:
    """Import ``torchao`` and ``torchao.quantization`` (once), demoting the expected warnings."""
    if "torchao.quantization" in sys.modules:
        return
    installed = [
        (logging.getLogger(name), _ExpectedImportNoise(prefix)) for name, prefix in _EXPECTED
    ]
    for target, noise in installed:
        target.addFilter(noise)
    try:
        importlib.import_module("torchao.quantization")
    finally:
        for target, noise in installed:
            target.removeFilter(noise)
