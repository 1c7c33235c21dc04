"""int8 weight-only Linear layers for fast incremental decoding (generation) on the CPU.

Decoding one token per row reads every weight once per step, so its speed is set by memory
bandwidth: int8 weights read a quarter of float32's bytes. torch's own int8/int4 weight-only CPU
kernels (``aten._weight_int8pack_mm``, ``_weight_int4pack_mm_for_cpu``) and torchao's configs
built on them ran 2-10x *slower* than a float32 matmul on the development CPU (1 thread), so the
few-row product here is a small C kernel (``int8_cpu_kernel``): it reads each int8 weight row
once, converts it to float in registers and accumulates the dot products of several input rows.

    model = quantize_for_decode(model)          # every Linear, the LM head included
    generate(model, prompts, max_new_tokens=64)

Numerics: weight ``W[n, :]`` becomes ``q[n, :] * scale[n]`` with ``scale = max|W[n, :]| / 127``
and ``q = round(W / scale)`` (symmetric, one scale per output row); activations stay float.
A forward of more than ``max_decode_rows`` rows (a long prefill) uses the same dequantized
weights in a float matmul, so the layer always computes ``x @ (q * scale).T`` (``Int8DecodeLinear.to_linear``
gives that reference as a plain ``nn.Linear``), up to float summation order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune.quant.int8_cpu_kernel import int8_kernel_matmul, load_int8_kernel
from tune.quant.module_filter import ModuleFilter, select_linear_modules

__all__ = ["DECODE_SCHEMES", "Int8DecodeLinear", "quantize_for_decode"]

logger = logging.getLogger(__name__)

DECODE_SCHEMES = ("int8",)


def int8_rows_matmul_reference(
    x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``x`` [M, K] @ (``weight_int8`` [N, K] * ``scale`` [N]).T -> [M, N] float32, in torch."""
    return F.linear(x.to(torch.float32), weight_int8.to(torch.float32)) * scale


class Int8DecodeLinear(nn.Module):
    """A Linear holding int8 weights [out, in] and float32 scales [out], for generation.

    Args:
        weight_int8: [out_features, in_features] int8.
        scale: [out_features] float32, one symmetric scale per output row.
        bias: [out_features] or None (kept in its float dtype).
        max_decode_rows: forwards of at most this many rows (batch x tokens) use the int8
            kernel; larger ones (long prefills) a float matmul of the dequantized weight, which is
            faster once the rows outweigh the cost of dequantizing.
        use_kernel: use the C kernel on the CPU (False, or no C compiler: the same product as a
            float matmul of the int8 weight, then the scales).
    """

    weight_int8: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        weight_int8: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        *,
        max_decode_rows: int = 256,
        use_kernel: bool = True,
    ) -> None:
        super().__init__()
        if weight_int8.dtype != torch.int8 or weight_int8.dim() != 2:
            raise ValueError(
                f"weight_int8 must be a 2-D int8 tensor, got {weight_int8.dtype} "
                f"{tuple(weight_int8.shape)}"
            )
        if scale.shape != weight_int8.shape[:1]:
            raise ValueError(
                f"scale shape {tuple(scale.shape)} must be [out_features] = "
                f"[{weight_int8.shape[0]}]"
            )
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scale", scale.to(torch.float32))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.max_decode_rows = max_decode_rows
        self.use_kernel = use_kernel

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs: Any) -> Int8DecodeLinear:
        """Quantize ``linear``'s weight: ``scale = max|row| / 127``, ``q = round(W / scale)``."""
        weight = linear.weight.detach()
        if type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_floating_point():
            raise ValueError(
                f"Int8DecodeLinear needs a plain float weight, got {type(weight).__name__} "
                f"of dtype {weight.dtype} (already quantized?)"
            )
        w = weight.to(torch.float32)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scale, linear.bias, **kwargs)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[out, in] ``weight_int8 * scale`` in ``dtype``."""
        return (self.weight_int8.to(torch.float32) * self.scale[:, None]).to(dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantized weight: this layer's float reference."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None,
            device=self.weight_int8.device,
        )  # fmt: skip
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features] in x's dtype."""
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        kernel = load_int8_kernel() if self.use_kernel and x2.device.type == "cpu" else None
        if x2.shape[0] <= self.max_decode_rows and kernel is not None:
            y = int8_kernel_matmul(kernel, x2, self.weight_int8, self.scale).to(x.dtype)
        elif x2.shape[0] <= self.max_decode_rows:
            y = int8_rows_matmul_reference(x2, self.weight_int8, self.scale).to(x.dtype)
        else:
            y = F.linear(x2, self.dequantized_weight(x.dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, max_decode_rows={self.max_decode_rows}"
        )


def quantize_for_decode(
    model: nn.Module,
    scheme: str = "int8",
    *,
    include: ModuleFilter = None,
    exclude: Sequence[str] = (),
    max_decode_rows: int = 256,
    use_kernel: bool = True,
) -> list[str]:
    """Swap the chosen ``nn.Linear`` modules of ``model`` for ``Int8DecodeLinear``, in place.

    For inference only: the swapped layers hold buffers, not trainable weights, and their
    state-dict keys are ``weight_int8`` and ``scale``. A weight shared with an embedding (tied
    LM head) is copied: the embedding keeps its float weight.

    Args:
        model: a float model (e.g. a ``tune.models`` Transformer).
        scheme: ``"int8"`` (the one scheme; see ``DECODE_SCHEMES``).
        include: module-name patterns, a callable ``(module, fqn) -> bool``, or None for every
            Linear (the LM head ``output`` included: it is the largest matrix).
        exclude: module-name patterns left in float.
        max_decode_rows: see ``Int8DecodeLinear``.
        use_kernel: see ``Int8DecodeLinear``.

    Returns:
        The names of the swapped modules.

    Raises:
        ValueError: an unknown scheme, or a chosen module with a non-float or quantized weight
            (raised before any module is changed).
    """
    if scheme not in DECODE_SCHEMES:
        raise ValueError(
            f"unknown decode scheme {scheme!r}; expected one of {list(DECODE_SCHEMES)}"
        )
    if max_decode_rows < 0:
        raise ValueError(f"max_decode_rows must be >= 0, got {max_decode_rows}")
    fqns = select_linear_modules(model, include, exclude)
    modules = dict(model.named_modules())
    new: dict[str, Int8DecodeLinear] = {}
    for fqn in fqns:
        try:
            new[fqn] = Int8DecodeLinear.from_linear(
                modules[fqn], max_decode_rows=max_decode_rows, use_kernel=use_kernel
            )  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"quantize_for_decode: module {fqn!r}: {err}") from err
    for fqn, module in new.items():
        parent_name, _, child = fqn.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, module)
    logger.info("quantize_for_decode(%s): %d Linear modules", scheme, len(new))
    return fqns
