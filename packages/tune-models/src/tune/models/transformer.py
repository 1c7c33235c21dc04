"""The decoder-only transformer: blocks composed from attention, MLP and norms."""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
from torch import nn

from tune.models.attention import Attention
from tune.models.attention_mask import build_attention_mask
from tune.models.document_attention import document_layout
from tune.models.kv_cache import KVCache
from tune.models.moe import GroupedExperts
from tune.models.rms_norm import RMSNorm
from tune.models.rotary import RotaryEmbedding

logger = logging.getLogger(__name__)


class TransformerBlock(nn.Module):
    """Pre-norm residual block; Gemma adds norms on the attention and MLP outputs.

    Args:
        attn: the attention module (``attn``).
        mlp: the feed-forward module (``mlp``).
        attn_norm: norm before attention.
        mlp_norm: norm before the MLP.
        post_attn_norm: optional norm on the attention output (Gemma 2/3).
        post_mlp_norm: optional norm on the MLP output (Gemma 2/3).
    """

    def __init__(
        self,
        attn: Attention,
        mlp: nn.Module,
        attn_norm: nn.Module,
        mlp_norm: nn.Module,
        post_attn_norm: nn.Module | None = None,
        post_mlp_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.attn_norm = attn_norm
        self.attn = attn
        self.post_attn_norm = post_attn_norm
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.post_mlp_norm = post_mlp_norm

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Any = None
    ) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]; cos/sin [B, T, rotary_dim]; mask as in ``Attention``."""
        h = self.attn(self.attn_norm(x), cos, sin, mask)
        if self.post_attn_norm is not None:
            h = self.post_attn_norm(h)
        x = x + h
        h = self.mlp(self.mlp_norm(x))
        if self.post_mlp_norm is not None:
            h = self.post_mlp_norm(h)
        return x + h


class Transformer(nn.Module):
    """Token embeddings, a stack of blocks, a final norm and the LM head.

    Module names are public API: ``tok_embeddings``, ``layers.<i>`` (a ``ModuleDict``),
    ``norm``, ``output``; ``rotary`` holds parameter-free rotary tables.

    Pipeline stages (tune.dist.pipeline_stages) keep a subset of ``layers`` and set the modules
    of other stages to None: without ``tok_embeddings`` the forward takes hidden states
    [B, T, dim] instead of token ids; without ``norm`` / ``output`` it returns hidden states.
    Positions, document ids and masks are keyword arguments, so every stage rebuilds its own
    rotary tables and masks.

    Args:
        tok_embeddings: [vocab, dim] embedding.
        layers: the blocks, in order.
        norm: final norm.
        output: LM head ``nn.Linear(dim, vocab)``; its weight is replaced by the embedding's
            when ``tie_word_embeddings``.
        rotary: rotary tables by key; every layer's ``attn.rope_key`` names one.
        embed_scale: multiply embeddings by this (Gemma: sqrt(dim)).
        final_logit_softcap: cap logits with ``c * tanh(logits / c)`` (Gemma 2).
        tie_word_embeddings: share the embedding matrix with the LM head.
        config: the family config the model was built from (kept as ``model.config``).
    """

    def __init__(
        self,
        tok_embeddings: nn.Embedding,
        layers: list[TransformerBlock],
        norm: nn.Module,
        output: nn.Linear,
        rotary: dict[str, RotaryEmbedding],
        *,
        embed_scale: float | None = None,
        final_logit_softcap: float | None = None,
        tie_word_embeddings: bool = False,
        config: Any = None,
    ) -> None:
        super().__init__()
        self.tok_embeddings = tok_embeddings
        self.layers = nn.ModuleDict({str(i): layer for i, layer in enumerate(layers)})
        self.norm = norm
        self.output = output
        self.rotary = nn.ModuleDict(rotary)
        self.embed_scale = embed_scale
        self.final_logit_softcap = final_logit_softcap
        self.tie_word_embeddings = tie_word_embeddings
        self.config = config
        self.tie_weights()
        # load_state_dict(assign=True) swaps in new Parameters: tie them again afterwards.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.tie_weights())
        for i, layer in enumerate(layers):
            if layer.attn.rope_key not in self.rotary:
                raise ValueError(
                    f"layers.{i}.attn.rope_key={layer.attn.rope_key!r} is not one of the rotary "
                    f"tables {sorted(self.rotary)}"
                )
        # Per sliding window: whether plain causal SDPA can serve it (no window, no soft-cap).
        self._mask_kinds: dict[int | None, bool] = {}
        for layer in layers:
            window = layer.attn.sliding_window
            plain = window is None and layer.attn.logit_softcap is None
            plain = plain and getattr(layer.attn, "sinks", None) is None  # gpt-oss sinks
            self._mask_kinds[window] = self._mask_kinds.get(window, True) and plain
        # Sinks run on dense boolean masks (sink_attention); FlexAttention has no sink term here.
        self._has_sinks = any(getattr(layer.attn, "sinks", None) is not None for layer in layers)

    def _blocks(self) -> list[TransformerBlock]:
        # No isinstance filter: blocks may be wrapped from outside (compile, checkpointing).
        return [cast(TransformerBlock, layer) for layer in self.layers.values()]

    def _cache(self) -> KVCache | None:
        for layer in self._blocks():
            return layer.attn.kv_cache
        return None

    def _masks(
        self,
        tokens: torch.Tensor,
        cache: KVCache | None,
        attention_mask: torch.Tensor | None,
        document_ids: torch.Tensor | None,
    ) -> dict[int | None, Any]:
        T = tokens.shape[1]
        offset = cache.length if cache is not None else 0
        kv_len = cache.max_seq_len if cache is not None else T
        needs_dense = cache is not None or attention_mask is not None or document_ids is not None
        use_flex = tokens.is_cuda and document_ids is not None and cache is None
        use_flex = use_flex and attention_mask is None and not self._has_sinks
        use_layout = document_ids is not None and not use_flex and cache is None
        use_layout = use_layout and attention_mask is None and any(self._mask_kinds.values())
        # Data-dependent (documents per batch): eager only; a compiled forward keeps the mask.
        use_layout = use_layout and not torch.compiler.is_compiling()
        # One document per row for causal SDPA (CPU): no dense [B, 1, T, T] mask to scan.
        layout = document_layout(document_ids) if use_layout else None  # type: ignore[arg-type]
        masks: dict[int | None, Any] = {}
        for window, plain in self._mask_kinds.items():
            if plain and not needs_dense:
                masks[window] = None  # SDPA is_causal
            elif plain and layout is not None:
                masks[window] = layout
            elif use_flex:
                from tune.models.flex_attention import document_block_mask

                masks[window] = document_block_mask(document_ids, window)  # type: ignore[arg-type]
            else:
                masks[window] = build_attention_mask(
                    q_len=T,
                    kv_len=kv_len,
                    q_offset=offset,
                    device=tokens.device,
                    attention_mask=attention_mask,
                    document_ids=document_ids,
                    sliding_window=window,
                )
        return masks

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (float32) or final normed hidden states [B, T, dim].

        Args:
            tokens: [B, T] token ids, or [B, T, dim] hidden states on a pipeline stage without
                ``tok_embeddings``.
            positions: [B, T] rotary positions; default ``arange`` after any cached tokens.
                Packed rows restart positions per document.
            document_ids: [B, T] packed-document index; tokens attend only within their document.
            attention_mask: [B, T] (or [B, cached + T] while decoding) 1 = real token, 0 = padding.
            return_hidden: return the normed hidden states instead of logits (for a fused loss
                that applies ``output.weight`` in chunks; apply ``final_logit_softcap`` too if set).
        """
        embed = self.tok_embeddings is not None  # False on a later pipeline stage
        if tokens.dim() != (2 if embed else 3):
            expected = "[batch, seq]" if embed else "[batch, seq, dim] hidden states (no embedding)"
            raise ValueError(f"tokens must be {expected}, got shape {tuple(tokens.shape)}")
        for name, extra in (("positions", positions), ("document_ids", document_ids)):
            if extra is not None and extra.shape != tokens.shape[:2]:
                raise ValueError(
                    f"{name} shape {tuple(extra.shape)} must equal tokens shape "
                    f"{tuple(tokens.shape[:2])}"
                )
        if attention_mask is not None and attention_mask.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"attention_mask batch {attention_mask.shape[0]} != tokens batch {tokens.shape[0]}"
            )
        cache = self._cache()
        B, T = tokens.shape[:2]
        if positions is None:
            offset = cache.length if cache is not None else 0
            positions = (torch.arange(T, device=tokens.device) + offset).expand(B, T)
        h = self.tok_embeddings(tokens) if embed else tokens  # (B, T, dim)
        if embed and self.embed_scale is not None:
            h = h * torch.tensor(self.embed_scale, dtype=h.dtype, device=h.device)
        tables = {key: rope(positions) for key, rope in self.rotary.items()}
        masks = self._masks(tokens, cache, attention_mask, document_ids)
        for layer in self._blocks():
            cos, sin = tables[layer.attn.rope_key]
            h = layer(h, cos, sin, masks[layer.attn.sliding_window])
        if self.norm is not None:  # None on all but the last pipeline stage
            h = self.norm(h)
        if return_hidden or self.output is None:
            return h
        logits = self.output(h).float()  # (B, T, vocab)
        if self.final_logit_softcap is not None:
            cap = self.final_logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def router_stats(self) -> dict[str, Any]:
        """Router statistics of the last forward, by module name (e.g. ``"layers.0.mlp"``).

        Every submodule with a non-None ``router_stats`` attribute (``MoEFeedForward``'s
        ``RouterStats``) is listed, in layer order; empty for a dense model. Statistics cover
        every token of the batch, padding included.
        """
        found = {}
        for name, module in self.named_modules():
            stats = getattr(module, "router_stats", None)
            if stats is not None and not callable(stats):
                found[name] = stats
        return found

    def tie_weights(self) -> None:
        """Make ``output.weight`` the embedding Parameter when embeddings are tied."""
        if self.tie_word_embeddings and self.output is not None and self.tok_embeddings is not None:
            self.output.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Recompute non-persistent buffers (rotary frequencies) on ``device``.

        Call after ``to_empty`` or ``load_state_dict(..., assign=True)`` of a meta-device model.

        Args:
            device: defaults to the first parameter's (the embedding's) device.
        """
        if device is None:  # a pipeline stage may have no embedding
            device = next(self.parameters()).device
        for rope in self.rotary.values():
            if isinstance(rope, RotaryEmbedding):
                rope.reset_buffers(device)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init: normal(0, std) linears, embeddings and stacked experts, zero biases and
        routing biases, identity norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                bias = getattr(module, "bias", None)
                if isinstance(bias, torch.Tensor):
                    nn.init.zeros_(bias)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()
            elif isinstance(module, GroupedExperts):
                module.reset_parameters(std)
            elif isinstance(module, Attention) and module.sinks is not None:
                nn.init.normal_(module.sinks, mean=0.0, std=std)
        for name, buffer in self.named_buffers():
            if name.endswith("routing_bias"):
                buffer.zero_()
        self.init_buffers()
