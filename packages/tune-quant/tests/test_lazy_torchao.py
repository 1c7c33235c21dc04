"""torchao is imported only when a quantizing name is used, and its start-up noise is demoted.

Each case runs in a fresh interpreter: the test process may have imported torchao already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_PRELUDE = "import logging, sys; logging.basicConfig(level=logging.INFO); "


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + code], capture_output=True, text=True, timeout=120
    )


def test_import_and_nf4_helpers_do_not_import_torchao() -> None:
    result = _run(
        "import tune.quant; from tune.quant import unshardable_nf4_params, to_nf4_linear_weights, "
        "select_linear_modules, model_storage_bytes; import torch; "
        "unshardable_nf4_params(torch.nn.Linear(4, 4), 2); print('torchao' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["prepare_qat", "to_nf4_linear_weights"])
def test_using_torchao_logs_no_start_up_warnings(name: str) -> None:
    # to_nf4_linear_weights imports torchao on its first call; the others on first access.
    call = "tune.quant.to_nf4_linear_weights(torch.nn.Linear(256, 256).requires_grad_(False))"
    result = _run(
        f"import torch, tune.quant; getattr(tune.quant, {name!r}); "
        + (call + "; " if name == "to_nf4_linear_weights" else "")
        + "print('torchao' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert "WARNING" not in result.stderr, result.stderr
    assert "_pytree" not in result.stderr, result.stderr
