"""Any ``transformers`` causal LM behind the native model's interface (optional extra).

``TransformersCausalLM`` wraps an ``AutoModelForCausalLM``. Its module names and state-dict keys
are the HF checkpoint's own (``model.layers.0.self_attn.q_proj.weight``, ``lm_head.weight``), so the
key maps are the identity and weight loaders, LoRA targets and PEFT exports work on it as on any
HF model. Its ``forward`` takes what ``Transformer.forward`` takes: padded rows through a 2-D
``attention_mask``, packed (or padding-free) rows through ``document_ids``, which become a
block-diagonal causal mask, so documents never attend to each other::

    ckpt = transformers_checkpoint_model("checkpoints/olmo2", device="cpu")
    logits = ckpt.model(tokens, positions=positions, document_ids=document_ids)  # [B, T, V]

``transformers`` is imported only when a model is built (``pip install 'tune-models[transformers]'``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from tune.models.attention_mask import build_attention_mask

if TYPE_CHECKING:
    from tune.models.checkpoint_model import CheckpointModel

logger = logging.getLogger(__name__)

INSTALL_COMMAND = "pip install 'tune-models[transformers]'"
# Attention kernels that take a dense [B, 1, T, T] mask: SDPA a boolean one, eager an additive one.
DENSE_MASK_ATTENTION = ("sdpa", "eager")


def transformers_missing() -> str | None:
    """None when ``transformers`` imports; else a one-line message with the install command."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return f"the transformers package is not installed: {INSTALL_COMMAND}"
    return None


def _import_transformers() -> Any:
    if (problem := transformers_missing()) is not None:
        raise ImportError(f"model implementation 'transformers': {problem}")
    import transformers

    return transformers


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device, buffers where they are made.

    Non-persistent buffers (rotary frequencies, embedding scales) are computed by each HF module's
    ``__init__`` and are in no checkpoint; building only the parameters on meta keeps them right
    without knowing how any family computes them.
    """
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


class TransformersCausalLM(nn.Module):
    """An HF causal LM with the native model's ``forward``; its submodules are the HF model's.

    Module names are the HF ones (``model``, ``lm_head``): state-dict keys equal the checkpoint's.
    ``output`` is the LM head (``lm_head``), without a second state-dict key.

    Args:
        hf_model: a ``transformers`` ``*ForCausalLM`` (built with ``attn_implementation`` "sdpa"
            or "eager" to take ``document_ids``).
    """

    _hf: Any  # the wrapped model, outside the module tree

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        own = [n for n, _ in hf_model.named_parameters(recurse=False)]
        own += [n for n, _ in hf_model.named_buffers(recurse=False)]
        if own:
            raise ValueError(
                f"{type(hf_model).__name__} holds tensors {own} outside its submodules; "
                "TransformersCausalLM wraps models whose weights all live in submodules"
            )
        for name, child in hf_model.named_children():
            self.add_module(name, child)
        # Not a submodule: its children are ours, so the state dict has no prefix.
        object.__setattr__(self, "_hf", hf_model)
        self.config: Any = hf_model.config

    @property
    def hf_model(self) -> nn.Module:
        """The wrapped ``transformers`` model (it shares every submodule with this one)."""
        return cast(nn.Module, self._hf)

    @property
    def output(self) -> nn.Linear:
        """The LM head (``lm_head``), for losses that apply its weight to hidden states."""
        return cast(nn.Linear, self._hf.get_output_embeddings())

    @property
    def block_classes(self) -> tuple[type[nn.Module], ...]:
        """The decoder-layer classes (HF ``_no_split_modules``): the units of FSDP and checkpointing."""
        names = set(getattr(self._hf, "_no_split_modules", None) or ())
        found = {type(m) for m in self.modules() if type(m).__name__ in names}
        if not found:
            raise ValueError(
                f"{type(self._hf).__name__}: no submodule of the classes {sorted(names)} "
                "(_no_split_modules) to use as the repeated decoder layer"
            )
        return tuple(sorted(found, key=lambda cls: cls.__name__))

    def train(self, mode: bool = True) -> TransformersCausalLM:
        """Set training mode here, on the submodules and on the wrapped model."""
        super().train(mode)
        self._hf.training = mode
        return self

    def _layer_windows(self) -> dict[str, int | None]:
        """Attention layer type -> its sliding window (None: full causal attention)."""
        window = getattr(self.config, "sliding_window", None)
        layer_types = getattr(self.config, "layer_types", None)
        if not layer_types:
            return {"full_attention": window}
        windows: dict[str, int | None] = {}
        for kind in layer_types:
            if kind not in ("full_attention", "sliding_attention"):
                raise ValueError(
                    f"{self.config.model_type}: document_ids are supported for full and sliding "
                    f"attention layers, not layer type {kind!r}"
                )
            windows[kind] = window if kind == "sliding_attention" else None
        return windows

    def _document_masks(
        self, document_ids: torch.Tensor, attention_mask: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Block-diagonal causal masks [B, 1, T, T] in the form the attention kernel takes."""
        kernel = getattr(self.config, "_attn_implementation", None)
        if kernel not in DENSE_MASK_ATTENTION:
            raise ValueError(
                f"document_ids need attn_implementation in {DENSE_MASK_ATTENTION}, the model was "
                f"built with {kernel!r}"
            )
        T = document_ids.shape[1]
        masks: dict[str, torch.Tensor] = {}
        for kind, window in self._layer_windows().items():
            allowed = build_attention_mask(
                q_len=T, kv_len=T, device=document_ids.device, attention_mask=attention_mask,
                document_ids=document_ids, sliding_window=window,
            )  # fmt: skip  # (B, 1, T, T) bool
            if kernel == "eager":  # eager adds the mask to the scores
                blocked = torch.finfo(dtype).min
                allowed = torch.zeros(
                    allowed.shape, dtype=dtype, device=allowed.device
                ).masked_fill(~allowed, blocked)
            masks[kind] = allowed
        # One mask serves every layer; models with several layer types take one per type.
        return next(iter(masks.values())) if len(masks) == 1 else masks

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) or the decoder's final hidden states [B, T, dim].

        Args:
            tokens: [B, T] token ids.
            positions: [B, T] position ids; default ``arange(T)`` per row.
            document_ids: [B, T] packed-document index; tokens attend only within their document.
            attention_mask: [B, T] 1 = real token, 0 = padding.
            return_hidden: the hidden states the LM head (``output``) reads, instead of logits
                (any logit scaling or soft-capping of the HF head is not applied).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        for name, extra in (
            ("positions", positions), ("document_ids", document_ids),
            ("attention_mask", attention_mask),
        ):  # fmt: skip
            if extra is not None and extra.shape != tokens.shape:
                raise ValueError(
                    f"{name} shape {tuple(extra.shape)} must equal tokens shape {tuple(tokens.shape)}"
                )
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        mask: Any = attention_mask
        if document_ids is not None:
            dtype = self.output.weight.dtype
            mask = self._document_masks(document_ids, attention_mask, dtype)
        inputs = {"input_ids": tokens, "attention_mask": mask, "position_ids": positions}
        if return_hidden:
            hidden: torch.Tensor = self._hf.base_model(**inputs, use_cache=False).last_hidden_state
            return hidden  # (B, T, dim)
        logits: torch.Tensor = self._hf(**inputs, use_cache=False).logits
        return logits.float()  # (B, T, vocab)

    @torch.no_grad()
    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Move the buffers (computed at build time, never loaded) to ``device``.

        Args:
            device: defaults to the LM head weight's device.
        """
        target = torch.device(device) if device is not None else self.output.weight.device
        for module in self.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.device != target:
                    module._buffers[name] = buffer.to(target)


def _config_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path.parent if path.name == "config.json" else path


def build_transformers_model(
    path: str | Path,
    *,
    device: torch.device | str | None = "meta",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> TransformersCausalLM:
    """The ``AutoModelForCausalLM`` of an HF checkpoint directory's ``config.json``, wrapped.

    Args:
        path: an HF checkpoint directory (or its ``config.json``); read locally.
        device: "meta" (default) builds the parameters without memory (then load them with
            ``assign=True`` and call ``init_buffers``); another device builds random weights.
        dtype: parameter dtype; default torch's default dtype.
        attn_implementation: the HF attention kernel ("sdpa" or "eager" take ``document_ids``).
    """
    transformers = _import_transformers()
    directory = _config_dir(path)
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"{directory}/config.json: transformers cannot read it: {error}"
        ) from error
    if type(config) not in transformers.AutoModelForCausalLM._model_mapping:
        raise ValueError(
            f"{directory}/config.json: model_type {config.model_type!r} has no "
            "transformers AutoModelForCausalLM class"
        )
    meta = device is not None and torch.device(device).type == "meta"
    dtype = dtype or torch.get_default_dtype()
    with _parameters_on_meta() if meta else contextlib.nullcontext():
        hf_model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    if not meta and device is not None:
        hf_model = hf_model.to(device)
    logger.debug("built %s with transformers on %s", type(hf_model).__name__, device)
    return TransformersCausalLM(hf_model)


def _identity(key: str) -> str:
    return key


def _tied_aliases(model: nn.Module) -> set[str]:
    """State-dict names that repeat an earlier name's tensor (a tied LM head): HF omits them."""
    seen: set[int] = set()
    aliases = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.add(name)
        seen.add(id(tensor))
    return aliases


def transformers_checkpoint_model(
    path: str | Path,
    *,
    device: torch.device | str | None = "meta",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> CheckpointModel:
    """``build_transformers_model`` with its key maps: identity, minus a tied head when saving.

    Args:
        path: an HF checkpoint directory (or its ``config.json``).
        device: "meta" (default) or where to build random weights.
        dtype: parameter dtype.
        attn_implementation: the HF attention kernel.
    """
    from tune.models.checkpoint_model import CheckpointModel

    model = build_transformers_model(
        path, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    tied = _tied_aliases(model)

    def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if k not in tied}

    same: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = dict
    return CheckpointModel(
        model=model, config=model.config, hf_to_native=same, native_to_hf=to_hf,
        hf_to_native_key=_identity, native_to_hf_key=_identity, keys_one_to_one=True,
        implementation="transformers",
    )  # fmt: skip
