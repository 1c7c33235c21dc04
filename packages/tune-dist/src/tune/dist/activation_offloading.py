"""Activation offloading: tensors saved for backward move to host memory until backward."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from tune.dist.module_matching import ModuleMatch, describe, find_modules

logger = logging.getLogger(__name__)

_OFFLOADED_CLASSES: dict[type, type] = {}

# What pack() returns: either the tensor itself (kept in place) or the host copy with what is
# needed to bring it back.
_Packed = Any


def _is_parameter_or_view(tensor: torch.Tensor) -> bool:
    # Weights are saved as views too (addmm saves weight.t()); they are not activations.
    return isinstance(tensor, nn.Parameter) or isinstance(tensor._base, nn.Parameter)


class ActivationOffloader:
    """Saved-tensor hooks that copy activations to host memory in forward and back in backward.

    On CUDA the device-to-host copy runs on a side stream (overlapping forward compute) into
    pinned memory, and the device tensor is released once that copy completes; the copy back
    runs on demand in backward. Parameters and tensors under ``min_bytes`` stay where they are.

    Args:
        min_bytes: smaller saved tensors are not worth a copy and stay in place.
        use_side_stream: on CUDA, copy on a dedicated stream instead of the compute stream.
        include_host_tensors: also copy tensors that already live in host memory. Off by default
            (a CPU run has nothing to offload); on, it exercises the same path on CPU.
    """

    def __init__(
        self,
        *,
        min_bytes: int = 1024,
        use_side_stream: bool = True,
        include_host_tensors: bool = False,
    ) -> None:
        self.min_bytes = min_bytes
        self.use_side_stream = use_side_stream
        self.include_host_tensors = include_host_tensors
        self.offloaded_tensors = 0
        self.offloaded_bytes = 0
        self._stream: torch.cuda.Stream | None = None

    def reset_stats(self) -> None:
        """Zero the counters of offloaded tensors and bytes."""
        self.offloaded_tensors = 0
        self.offloaded_bytes = 0

    def _side_stream(self) -> torch.cuda.Stream | None:
        if not self.use_side_stream:
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def pack(self, tensor: torch.Tensor) -> _Packed:
        """Copy ``tensor`` to host memory (or keep it) and return what unpack needs."""
        nbytes = tensor.numel() * tensor.element_size()
        on_host = tensor.device.type == "cpu"
        if (
            _is_parameter_or_view(tensor)
            or nbytes < self.min_bytes
            or (on_host and not self.include_host_tensors)
            or tensor.device.type not in ("cpu", "cuda")
            or tensor.layout != torch.strided
            or type(tensor) is not torch.Tensor
        ):
            return tensor
        self.offloaded_tensors += 1
        self.offloaded_bytes += nbytes
        with torch.no_grad():
            return self._copy_to_host(tensor)

    def _copy_to_host(self, tensor: torch.Tensor) -> _Packed:
        if tensor.device.type == "cuda":
            stream = self._side_stream()
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            if stream is None:
                host.copy_(tensor, non_blocking=True)
                event = torch.cuda.current_stream().record_event()
            else:
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    host.copy_(tensor, non_blocking=True)
                # The caching allocator must not hand the device block to someone else before the
                # side-stream copy has read it.
                tensor.record_stream(stream)
                event = stream.record_event()
            return (tensor.device, host, event)
        host = torch.empty(tensor.shape, dtype=tensor.dtype)
        host.copy_(tensor)
        return (tensor.device, host, None)

    def unpack(self, packed: _Packed) -> torch.Tensor:
        """Bring a packed tensor back to its device."""
        if isinstance(packed, torch.Tensor):
            return packed
        device, host, event = packed
        if event is None:
            return host if device.type == "cpu" else host.to(device)
        torch.cuda.current_stream().wait_event(event)
        return host.to(device, non_blocking=True)

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        """A context manager installing this offloader's pack/unpack hooks."""
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


@contextmanager
def offload_activations(
    *, min_bytes: int = 1024, use_side_stream: bool = True, include_host_tensors: bool = False
) -> Iterator[ActivationOffloader]:
    """Offload every tensor saved for backward inside the ``with`` block (run forward in it).

    Args:
        min_bytes: smaller saved tensors stay in place.
        use_side_stream: on CUDA, copy on a dedicated stream.
        include_host_tensors: also copy tensors already in host memory (exercises the path on CPU).

    Yields:
        The ActivationOffloader (its counters say what moved).
    """
    offloader = ActivationOffloader(
        min_bytes=min_bytes,
        use_side_stream=use_side_stream,
        include_host_tensors=include_host_tensors,
    )
    with offloader.hooks():
        yield offloader


class OffloadedModule:
    """Marker base of the classes that ``apply_activation_offloading`` swaps in."""

    _tune_offloader: ActivationOffloader


def _offloaded_class(cls: type) -> type:
    if cls in _OFFLOADED_CLASSES:
        return _OFFLOADED_CLASSES[cls]

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._tune_offloader.hooks():
            return super(new_cls, self).forward(*args, **kwargs)  # type: ignore[arg-type]

    new_cls = type(f"Offloaded{cls.__name__}", (OffloadedModule, cls), {"forward": forward})
    _OFFLOADED_CLASSES[cls] = new_cls
    return new_cls


def apply_activation_offloading(
    model: nn.Module,
    block_match: ModuleMatch,
    *,
    min_bytes: int = 1024,
    use_side_stream: bool = True,
    include_host_tensors: bool = False,
) -> ActivationOffloader:
    """Offload the saved activations of matched blocks (module names stay unchanged).

    Args:
        model: the model, modified in place (matched blocks get a swapped class).
        block_match: class, tuple of classes, name pattern (``"layers.*"``) or predicate.
        min_bytes: smaller saved tensors stay in place.
        use_side_stream: on CUDA, copy on a dedicated stream.
        include_host_tensors: also copy tensors already in host memory (exercises the path on CPU).

    Returns:
        The one ActivationOffloader shared by all matched blocks (for its counters).
    """
    blocks = find_modules(model, block_match)
    if not blocks:
        raise ValueError(
            f"block_match {describe(block_match)} matched no submodule of {type(model).__name__}"
        )
    offloader = ActivationOffloader(
        min_bytes=min_bytes,
        use_side_stream=use_side_stream,
        include_host_tensors=include_host_tensors,
    )
    for name, block in blocks:
        if isinstance(block, OffloadedModule):
            raise ValueError(f"{name} already offloads its activations")
        block.__class__ = _offloaded_class(type(block))
        block._tune_offloader = offloader  # type: ignore[assignment]
    logger.debug("activation offloading on %d blocks", len(blocks))
    return offloader
