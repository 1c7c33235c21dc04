"""One-to-one renames between HF and native state-dict keys, from template rules."""

from __future__ import annotations

import re
from collections.abc import Sequence

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")
_LAYER_INDEX = r"\d+"


def _alternatives(*templates: str) -> dict[str, str]:
    """Placeholder name -> its ``a|b`` alternatives, from whichever template declares them."""
    return {
        m.group(1): m.group(2) for t in templates for m in _PLACEHOLDER.finditer(t) if m.group(2)
    }


def _compile(template: str, alternatives: dict[str, str]) -> tuple[re.Pattern[str], str]:
    """``"a.{layer}.{proj:q_proj|k_proj}.w"`` -> (regex, format string ``"a.{layer}.{proj}.w"``)."""
    pattern, fmt, pos = "", "", 0
    for m in _PLACEHOLDER.finditer(template):
        literal = template[pos : m.start()]
        pattern += re.escape(literal)
        fmt += literal
        name = m.group(1)
        pattern += f"(?P<{name}>{alternatives.get(name, _LAYER_INDEX)})"
        fmt += "{" + name + "}"
        pos = m.end()
    pattern += re.escape(template[pos:])
    fmt += template[pos:]
    return re.compile(pattern), fmt


class KeyMap:
    """Bidirectional key renames from ``(hf_template, native_template)`` rules.

    Templates use ``{layer}`` for a layer index and ``{name:a|b}`` for alternatives, e.g.
    ``("model.layers.{layer}.self_attn.{p:q_proj|k_proj}.{t:weight|bias}",
    "layers.{layer}.attn.{p}.{t}")``.

    Args:
        rules: the rename rules; every key must match exactly one rule.
    """

    def __init__(self, rules: Sequence[tuple[str, str]]) -> None:
        self.rules = tuple(rules)
        self._to_native = []
        self._to_hf = []
        for hf, native in self.rules:
            alternatives = _alternatives(hf, native)
            hf_re, hf_fmt = _compile(hf, alternatives)
            native_re, native_fmt = _compile(native, alternatives)
            self._to_native.append((hf_re, native_fmt))
            self._to_hf.append((native_re, hf_fmt))

    @staticmethod
    def _apply(key: str, table: list[tuple[re.Pattern[str], str]], direction: str) -> str:
        for pattern, fmt in table:
            m = pattern.fullmatch(key)
            if m:
                return fmt.format(**m.groupdict())
        raise KeyError(f"{direction}: no rule maps state-dict key {key!r}")

    def hf_to_native(self, key: str) -> str:
        """Native key for an HF key; ``KeyError`` naming the key if no rule matches."""
        return self._apply(key, self._to_native, "HF -> native")

    def native_to_hf(self, key: str) -> str:
        """HF key for a native key; ``KeyError`` naming the key if no rule matches."""
        return self._apply(key, self._to_hf, "native -> HF")


_ATTN = "{p:q_proj|k_proj|v_proj|o_proj}.{t:weight|bias}"
_QK_NORM = "{n:q_norm|k_norm}.weight"
_MLP = "{p:gate_proj|up_proj|down_proj}.{t:weight|bias}"
_SHARED = [
    ("model.embed_tokens.weight", "tok_embeddings.weight"),
    (f"model.layers.{{layer}}.self_attn.{_ATTN}", "layers.{layer}.attn.{p}.{t}"),
    (f"model.layers.{{layer}}.self_attn.{_QK_NORM}", "layers.{layer}.attn.{n}.weight"),
    (f"model.layers.{{layer}}.mlp.{_MLP}", "layers.{layer}.mlp.{p}.{t}"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "output.weight"),
]

#: Llama, Mistral, Qwen 2/3, Phi-3 (after splitting), SmolLM2: two norms per block.
LLAMA_KEY_MAP = KeyMap(
    [
        *_SHARED,
        ("model.layers.{layer}.input_layernorm.weight", "layers.{layer}.attn_norm.weight"),
        ("model.layers.{layer}.post_attention_layernorm.weight", "layers.{layer}.mlp_norm.weight"),
    ]
)

#: Gemma 2/3: norms before and after both attention and MLP.
GEMMA_KEY_MAP = KeyMap(
    [
        *_SHARED,
        ("model.layers.{layer}.input_layernorm.weight", "layers.{layer}.attn_norm.weight"),
        (
            "model.layers.{layer}.post_attention_layernorm.weight",
            "layers.{layer}.post_attn_norm.weight",
        ),
        ("model.layers.{layer}.pre_feedforward_layernorm.weight", "layers.{layer}.mlp_norm.weight"),
        (
            "model.layers.{layer}.post_feedforward_layernorm.weight",
            "layers.{layer}.post_mlp_norm.weight",
        ),
    ]
)
