"""`LoRALinear`: an `nn.Linear` carrying named LoRA / DoRA adapters, one of them active.

The wrapper keeps the base layer's own `weight` and `bias` Parameter objects at the same names, so
`...q_proj.weight` stays `...q_proj.weight` and a base checkpoint loads the same with or without
adapters. The active adapter lives at `lora_A.weight` [r, in], `lora_B.weight` [out, r] and (DoRA)
`lora_magnitude_vector` [out] — PEFT's names without the adapter name. Inactive adapters are kept,
with the same inner names, under `lora_inactive.<adapter name>`; switching moves the Parameter objects
(no copy), so optimizer state stays attached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tune.peft.config import LoraConfig
from tune.peft.dense_weight import adapter_dtype_for, dense_weight, is_tensor_subclass
from tune.peft.dora import dora_extra_output, dora_merged_weight, dora_weight_norm
from tune.peft.lora_function import can_fuse_lora, lora_linear
from tune.peft.lora_init import init_default, init_gaussian, init_pissa

_SLOTS = ("lora_A", "lora_B", "lora_dropout")


class LoRAWeights(nn.Module):
    """The tensors and settings of one adapter, as stored while it is inactive.

    Args:
        in_features: Input size of the adapted linear.
        out_features: Output size of the adapted linear.
        config: The adapter's settings (r, scaling, dropout, DoRA).
        device: Where the factors live.
        dtype: Dtype of the factors.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        config: LoraConfig,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.lora_A = nn.Linear(in_features, config.r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(config.r, out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout: nn.Module = (
            nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        )
        magnitude = (
            torch.ones(out_features, device=device, dtype=dtype) if config.use_dora else None
        )
        self.lora_magnitude_vector = nn.Parameter(magnitude) if magnitude is not None else None
        self.config = config


class LoRALinear(nn.Linear):
    """An `nn.Linear` whose output adds the active LoRA adapter's `s * B A dropout(x)`.

    Built from an existing `nn.Linear` with `LoRALinear.from_linear`; the base weight may be a
    tensor subclass (e.g. torchao NF4): the forward calls `F.linear(x, weight)` so the subclass's
    own linear runs, and no dequantized copy is kept between calls.
    """

    lora_A: nn.Linear | None  # noqa: N815 (PEFT's name)
    lora_B: nn.Linear | None  # noqa: N815 (PEFT's name)
    lora_dropout: nn.Module | None
    lora_magnitude_vector: nn.Parameter | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        # Allocate nothing: from_linear() puts the base layer's own Parameters in place.
        super().__init__(in_features, out_features, bias=bias, device="meta")
        for slot in _SLOTS:
            self.register_module(slot, None)
        self.register_parameter("lora_magnitude_vector", None)
        self.lora_inactive = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.active_config: LoraConfig | None = None
        self.adapters_enabled = True
        self.merged = False

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> LoRALinear:
        """Wrap `linear`, sharing (not copying) its `weight` and `bias` Parameters.

        Args:
            linear: The layer to adapt; it is left untouched and may be discarded.
        """
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        module.weight = linear.weight
        module.bias = linear.bias
        module.train(linear.training)
        return module

    # -- adapters -------------------------------------------------------------------------

    @property
    def adapter_names(self) -> list[str]:
        """Names of every adapter on this layer, the active one first."""
        active = [self.active_adapter] if self.active_adapter is not None else []
        return active + list(self.lora_inactive.keys())

    def add_adapter(
        self,
        name: str,
        config: LoraConfig,
        *,
        activate: bool = False,
        dtype: torch.dtype | None = None,
        module_name: str = "",
    ) -> None:
        """Create adapter `name`, initialised per `config.init`; it becomes active if asked or alone.

        Args:
            name: Adapter name (a valid module name, unique on this layer).
            config: Its settings.
            activate: Make it the active adapter.
            dtype: Dtype of its factors; default the base weight's (float32 if not floating).
            module_name: This layer's name in its model, for error messages.
        """
        if name in self.adapter_names:
            raise ValueError(f"{module_name or 'layer'} already has an adapter named {name!r}")
        if self.merged:
            raise RuntimeError(f"{module_name}: cannot add an adapter while merged; unmerge first")
        weights = LoRAWeights(
            self.in_features,
            self.out_features,
            config,
            device=self.weight.device,
            dtype=dtype or adapter_dtype_for(self.weight),
        )
        self.lora_inactive[name] = weights
        if self.weight.device.type != "meta":  # on meta: initialize_adapters() after loading
            self.reset_adapter(name, module_name=module_name)
        if activate or self.active_adapter is None:
            self.set_active_adapter(name)

    def reset_adapter(self, name: str | None = None, *, module_name: str = "") -> None:
        """(Re-)initialise adapter `name` per its `config.init`, DoRA magnitude from the current base.

        For models built on the meta device: materialise and load the base, then call this (see
        `initialize_adapters`). PiSSA rewrites the base weight into its residual, so run it once.

        Args:
            name: Adapter name; None for the active one.
            module_name: This layer's name in its model, for error messages.
        """
        if self.merged:
            raise RuntimeError(f"{module_name or 'layer'}: cannot reset an adapter while merged")
        config = self.adapter_config(name)
        tensors = self.adapter_tensors(name)
        a, b = tensors["lora_A.weight"], tensors["lora_B.weight"]
        with torch.no_grad():
            if config.init == "default":
                init_default(a, b)
            elif config.init == "gaussian":
                init_gaussian(a, b)
            else:
                init_pissa(self.weight, a, b, config.scaling, module_name or "layer")
            if "lora_magnitude_vector" in tensors:
                norm = dora_weight_norm(self.weight, a, b, config.scaling, torch.float32)
                tensors["lora_magnitude_vector"].copy_(norm)

    def set_active_adapter(self, name: str | None) -> None:
        """Make adapter `name` active (None: no adapter; the layer then computes the base only).

        Args:
            name: An adapter name on this layer, or None.
        """
        if name == self.active_adapter:
            return
        if self.merged:
            raise RuntimeError(
                f"cannot switch adapters while {self.active_adapter!r} is merged; unmerge first"
            )
        if name is not None and name not in self.lora_inactive:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        if self.active_adapter is not None:
            self.lora_inactive[self.active_adapter] = self._pack_active()
        self.active_adapter, self.active_config = None, None
        if name is not None:
            self._unpack(name)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` (if active, the layer is left with no active adapter).

        Args:
            name: An adapter name on this layer.
        """
        if name == self.active_adapter:
            self.set_active_adapter(None)
        if name not in self.lora_inactive:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        del self.lora_inactive[name]

    def adapter_tensors(self, name: str | None = None) -> dict[str, nn.Parameter]:
        """The trainable tensors of adapter `name` (default: the active one), keyed like PEFT.

        Keys are `lora_A.weight`, `lora_B.weight` and, for DoRA, `lora_magnitude_vector`.

        Args:
            name: Adapter name; None for the active adapter.
        """
        name = self.active_adapter if name is None else name
        if name is None:
            return {}
        holder: nn.Module = self if name == self.active_adapter else self._inactive(name)
        names = ["lora_A.weight", "lora_B.weight", "lora_magnitude_vector"]
        params = dict(holder.named_parameters(recurse=True))
        return {n: params[n] for n in names if n in params}

    def adapter_config(self, name: str | None = None) -> LoraConfig:
        """The settings adapter `name` (default: active) was created with.

        Args:
            name: Adapter name; None for the active adapter.
        """
        name = self.active_adapter if name is None else name
        if name is not None and name == self.active_adapter and self.active_config is not None:
            return self.active_config
        return self._inactive(name).config

    def adapter_params(self) -> list[str]:
        """Names (relative to this layer) of the active adapter's trainable parameters."""
        return list(self.adapter_tensors())

    def _inactive(self, name: str | None) -> LoRAWeights:
        if name is None or name not in self.lora_inactive:
            raise KeyError(f"no adapter named {name!r} on this layer; it has {self.adapter_names}")
        return self.lora_inactive[name]  # type: ignore[return-value]

    def _pack_active(self) -> LoRAWeights:
        weights = LoRAWeights.__new__(LoRAWeights)
        nn.Module.__init__(weights)
        for slot in _SLOTS:
            weights.register_module(slot, getattr(self, slot))
            self.register_module(slot, None)
        weights.register_parameter("lora_magnitude_vector", self.lora_magnitude_vector)
        self.register_parameter("lora_magnitude_vector", None)
        weights.config = self.active_config  # type: ignore[assignment]
        return weights

    def _unpack(self, name: str) -> None:
        weights = self._inactive(name)
        del self.lora_inactive[name]
        for slot in _SLOTS:
            self.register_module(slot, getattr(weights, slot))
        self.register_parameter("lora_magnitude_vector", weights.lora_magnitude_vector)
        self.active_adapter, self.active_config = name, weights.config

    # -- compute --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus the active adapter's update.

        Args:
            x: [..., in] input.

        Returns:
            [..., out] output.
        """
        if self.lora_A is None or self.merged or not self.adapters_enabled:
            return F.linear(x, self.weight, self.bias)  # subclass weights dispatch here
        assert self.lora_B is not None
        assert self.lora_dropout is not None
        assert self.active_config is not None
        scaling = self.active_config.scaling
        x_lora = self.lora_dropout(x)
        if x_lora is x and self.lora_magnitude_vector is None and self._plain_factors():
            a, b = self.lora_A.weight, self.lora_B.weight
            if can_fuse_lora(x, self.weight, self.bias, a, b):
                return lora_linear(x, self.weight, self.bias, a, b, scaling)  # [..., out]
        out = F.linear(x, self.weight, self.bias)  # [..., out]; subclass weights dispatch here
        # Adapters may keep another dtype than the activations (e.g. float32 over bf16).
        lora_in = x_lora.to(self.lora_A.weight.dtype)
        lora_out = self.lora_B(self.lora_A(lora_in)).to(out.dtype)  # [..., out]
        if self.lora_magnitude_vector is None:
            return out + lora_out * scaling
        norm = dora_weight_norm(
            self.weight, self.lora_A.weight, self.lora_B.weight, scaling, x.dtype
        )  # [out], detached
        if self.training and self.active_config.dropout > 0:
            # The DoRA rescaling applies to the dropped-out input, as in PEFT.
            base_no_bias = F.linear(x_lora, self.weight)
        else:
            base_no_bias = out if self.bias is None else out - self.bias
        return out + dora_extra_output(
            base_no_bias, lora_out, self.lora_magnitude_vector, norm, scaling
        )

    def _plain_factors(self) -> bool:
        # The fused path reads the factors' weights directly: only for hook-free nn.Linear.
        return all(
            type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)
            for m in (self.lora_A, self.lora_B)
        )

    def delta_weight(self) -> torch.Tensor:
        """The active adapter's update to the weight: `s * B @ A`, [out, in], float32, no grad."""
        if self.lora_A is None or self.lora_B is None or self.active_config is None:
            raise RuntimeError("this layer has no active adapter")
        with torch.no_grad():
            a = self.lora_A.weight.to(torch.float32)
            b = self.lora_B.weight.to(torch.float32)
            return self.active_config.scaling * (b @ a)

    def merged_weight(self) -> torch.Tensor:
        """The base weight with the active adapter folded in, [out, in], in the base dtype."""
        with torch.no_grad():
            base = dense_weight(self.weight)
            w32 = base.to(torch.float32)
            delta = self.delta_weight()
            if self.lora_magnitude_vector is None:
                merged = w32 + delta
            else:
                merged = dora_merged_weight(w32, delta, self.lora_magnitude_vector)
            return merged.to(base.dtype)

    def merge(self, keep_original: bool = True, module_name: str = "") -> None:
        """Fold the active adapter into `weight` in place (same Parameter object).

        Args:
            keep_original: Keep a copy of the base weight (as the non-persistent buffer
                `original_weight`, costing one extra copy of this weight) so `unmerge` restores it
                bit-exactly; without it the merge cannot be undone.
            module_name: This layer's name in its model, for error messages.
        """
        where = module_name or "layer"
        if self.merged:
            raise RuntimeError(f"{where}: adapter {self.active_adapter!r} is already merged")
        if self.lora_A is None:
            raise RuntimeError(f"{where}: no active adapter to merge")
        if is_tensor_subclass(self.weight):
            raise TypeError(
                f"{where}: cannot merge into a {type(self.weight).__name__} weight in place (it would "
                "need requantization, losing the adapter's precision); use "
                "merge_and_unload(model, dequantize=True) for a dense merged model"
            )
        merged = self.merged_weight()
        with torch.no_grad():
            if keep_original:
                self.register_buffer(
                    "original_weight", self.weight.detach().clone(), persistent=False
                )
            self.weight.copy_(merged)
        self.merged = True

    def unmerge(self, module_name: str = "") -> None:
        """Restore the base weight bit-exactly from the copy kept by `merge`.

        Args:
            module_name: This layer's name in its model, for error messages.
        """
        where = module_name or "layer"
        if not self.merged:
            raise RuntimeError(f"{where}: nothing to unmerge")
        original = getattr(self, "original_weight", None)
        if original is None:
            raise RuntimeError(
                f"{where}: merged with keep_original=False, so the base weight cannot be restored"
            )
        with torch.no_grad():
            self.weight.copy_(original)
        del self.original_weight
        self.merged = False

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding this layer's current `weight` and `bias` Parameters."""
        linear = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    def extra_repr(self) -> str:
        base = super().extra_repr()
        if self.active_config is None:
            return f"{base}, adapters={self.adapter_names}"
        cfg = self.active_config
        return (
            f"{base}, active={self.active_adapter!r}, r={cfg.r}, scaling={cfg.scaling:g}, "
            f"dora={cfg.use_dora}, merged={self.merged}, adapters={self.adapter_names}"
        )
