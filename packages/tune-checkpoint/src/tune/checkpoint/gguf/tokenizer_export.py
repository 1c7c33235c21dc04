"""GGUF tokenizer metadata from HF tokenizer files, in the form llama.cpp loads.

    add_tokenizer_metadata(writer, tokenizer_json, tokenizer_config, where="out/hf")

The `tokenizer.json` model must be BPE, in one of two shapes:

- byte-level (a `ByteLevel` pre-tokenizer or decoder): written as `tokenizer.ggml.model = "gpt2"`
  with its merges; `tokenizer.ggml.pre` names the split regexes (`PRE_TOKENIZERS` in
  `tokenizer_import`), or is "default" with a warning when the pre-tokenizer is not a known one.
- SentencePiece-style (byte fallback, `Metaspace` or a "▁" normalizer): written as `"llama"` with a
  score per token that makes SentencePiece's "highest score first" merge order equal the BPE merge
  order (a merged token scores minus the rank of the first merge that builds it), plus the merges.

Token types: special added tokens are CONTROL, other added tokens USER_DEFINED, `<0xNN>` tokens of a
SentencePiece vocabulary BYTE, its unknown token UNKNOWN, ids no token uses UNUSED (`[PAD<id>]`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tune.checkpoint.gguf.tokenizer_import import (
    BYTE,
    CONTROL,
    IGNORE_MERGES_PRE,
    NORMAL,
    PRE_TOKENIZERS,
    SPACE_MARK,
    UNKNOWN,
    UNUSED,
    USER_DEFINED,
    UnsupportedTokenizerError,
)

if TYPE_CHECKING:
    import gguf

logger = logging.getLogger(__name__)

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# llama.cpp's spelling of the contraction group of the Llama 3 and Qwen2 regexes, and HF's.
_CONTRACTIONS_LLAMA_CPP = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_CONTRACTIONS_HF = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"


def add_tokenizer_metadata(
    writer: gguf.GGUFWriter,
    tokenizer_json: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    *,
    where: str,
    vocab_size: int | None = None,
) -> None:
    """Write a HF tokenizer as GGUF `tokenizer.*` metadata that llama.cpp loads unchanged.

    Args:
        writer: the open GGUF writer (before `write_header_to_file`).
        tokenizer_json: the parsed `tokenizer.json`.
        tokenizer_config: the parsed `tokenizer_config.json` (special tokens, add_bos_token,
            chat_template); may be empty.
        where: the source directory, named in errors.
        vocab_size: the model's embedding rows V; the token list is padded to V with UNUSED
            `[PAD<id>]` tokens (llama.cpp wants one token per row). Default: the tokenizer's size.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedTokenizerError(
            f"{where}/tokenizer.json: model type {model.get('type')!r}; GGUF export supports BPE only "
            "(byte-level like GPT-2/SmolLM2/Qwen/Llama 3, or SentencePiece-style with byte_fallback like Llama 2/Mistral)"
        )
    kind = _tokenizer_kind(tokenizer_json, where)
    tokens, types = _token_table(tokenizer_json, kind, vocab_size, where)
    merges = [_merge_pair(m, where) for m in model.get("merges") or ()]
    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}

    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(_pre_name(tokenizer_json, where))
        writer.add_add_space_prefix(False)
    else:
        writer.add_tokenizer_pre("default")
        writer.add_add_space_prefix(_sentencepiece_prefix(tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores(_scores_from_merges(tokens, types, merges))
    # llama.cpp ignores merges for a SentencePiece vocabulary; transformers uses them when present.
    writer.add_token_merges([f"{a} {b}" for a, b in merges])

    specials = {
        name: _token_text(tokenizer_config.get(f"{name}_token"))
        for name in ("bos", "eos", "unk", "pad")
    }
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id}
    adders |= {"unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for name, text in specials.items():
        if text is None:
            continue
        if text not in ids:
            logger.warning(
                "%s: %s_token %r is not in the vocabulary; not written", where, name, text
            )
            continue
        adders[name](ids[text])
    add_bos, add_eos = _adds_bos_eos(tokenizer_json, tokenizer_config, specials)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    template = tokenizer_config.get("chat_template")
    if template:
        writer.add_chat_template(template)


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _merge_pair(merge: Any, where: str) -> tuple[str, str]:
    if isinstance(merge, str):
        parts = merge.split(" ")
    else:
        parts = list(merge)
    if len(parts) != 2:
        raise UnsupportedTokenizerError(
            f"{where}/tokenizer.json: merge {merge!r} is not a pair of tokens"
        )
    a, b = str(parts[0]), str(parts[1])
    if " " in a or " " in b:
        raise UnsupportedTokenizerError(
            f"{where}/tokenizer.json: merge {merge!r} holds a space, which GGUF's 'left right' merges cannot store"
        )
    return a, b


def _steps(component: Mapping[str, Any] | None, key: str) -> list[Mapping[str, Any]]:
    """A normalizer/pre-tokenizer/decoder as a flat list of its steps."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [s for child in component.get(key) or () for s in _steps(child, key)]
    return [component]


def _tokenizer_kind(tokenizer_json: Mapping[str, Any], where: str) -> str:
    pre = _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers")
    decoder = _steps(tokenizer_json.get("decoder"), "decoders")
    normalizer = _steps(tokenizer_json.get("normalizer"), "normalizers")
    if any(s.get("type") == "ByteLevel" for s in pre + decoder):
        return "gpt2"
    spaces_marked = any(s.get("type") == "Metaspace" for s in pre) or any(
        s.get("type") == "Replace" and s.get("content") == SPACE_MARK for s in normalizer
    )
    if spaces_marked or (tokenizer_json.get("model") or {}).get("byte_fallback"):
        return "llama"
    raise UnsupportedTokenizerError(
        f"{where}/tokenizer.json: a BPE tokenizer that is neither byte-level (ByteLevel pre-tokenizer) nor "
        "SentencePiece-style (Metaspace or byte_fallback); GGUF export supports those two"
    )


def _canonical_regex(regex: str) -> str:
    return regex.replace(_CONTRACTIONS_LLAMA_CPP, _CONTRACTIONS_HF)


def _pre_signature(pre_tokenizer: Mapping[str, Any] | None) -> tuple[tuple[Any, ...], ...]:
    """What a pre-tokenizer does to text, ignoring settings that only move offsets."""
    signature: list[tuple[Any, ...]] = []
    for step in _steps(pre_tokenizer, "pretokenizers"):
        kind = step.get("type")
        if kind == "ByteLevel":
            signature.append(
                ("ByteLevel", bool(step.get("use_regex", True)), bool(step.get("add_prefix_space")))
            )
        elif kind == "Digits":
            signature.append(("Digits", bool(step.get("individual_digits"))))
        elif kind == "Split":
            pattern = step.get("pattern") or {}
            regex = pattern.get("Regex")
            text = (
                _canonical_regex(regex)
                if regex is not None
                else re.escape(str(pattern.get("String")))
            )
            signature.append(
                ("Split", text, str(step.get("behavior")).lower(), bool(step.get("invert")))
            )
        else:
            signature.append((str(kind), repr(sorted(step.items()))))
    return tuple(signature)


_KNOWN_PRE = {_pre_signature(pre): name for name, pre in PRE_TOKENIZERS.items()}


def _pre_name(tokenizer_json: Mapping[str, Any], where: str) -> str:
    """The `tokenizer.ggml.pre` name of a byte-level tokenizer's pre-tokenizer."""
    name = _KNOWN_PRE.get(_pre_signature(tokenizer_json.get("pre_tokenizer")))
    if name is None:
        logger.warning(
            "%s/tokenizer.json: pre-tokenizer %s is not one of the known %s; writing tokenizer.ggml.pre "
            "'default', so llama.cpp may split text differently",
            where,
            tokenizer_json.get("pre_tokenizer"),
            sorted(PRE_TOKENIZERS),
        )
        name = "default"
    ignore_merges = bool((tokenizer_json.get("model") or {}).get("ignore_merges"))
    if ignore_merges != (name in IGNORE_MERGES_PRE):
        logger.warning(
            "%s/tokenizer.json: ignore_merges=%s, but llama.cpp uses %s for pre %r; a few words may tokenize differently",
            where,
            ignore_merges,
            name in IGNORE_MERGES_PRE,
            name,
        )
    normalizer = tokenizer_json.get("normalizer")
    if normalizer:
        logger.warning(
            "%s/tokenizer.json: normalizer %s cannot be stored in GGUF; llama.cpp tokenizes the text unnormalized",
            where,
            normalizer.get("type"),
        )
    return name


def _sentencepiece_prefix(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether a "▁" is put before the text (Metaspace prepend_scheme, or a Prepend normalizer)."""
    for step in _steps(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme")
            if scheme is None:  # tokenizers < 0.14 spelled it add_prefix_space
                return bool(step.get("add_prefix_space", True))
            return scheme != "never"
    normalizer = _steps(tokenizer_json.get("normalizer"), "normalizers")
    return any(s.get("type") == "Prepend" and s.get("prepend") == SPACE_MARK for s in normalizer)


def _token_table(
    tokenizer_json: Mapping[str, Any], kind: str, vocab_size: int | None, where: str
) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp types in id order, V = max(id) + 1 (or vocab_size)."""
    model = tokenizer_json["model"]
    by_id: dict[int, tuple[str, int]] = {}
    for token, token_id in (model.get("vocab") or {}).items():
        token_type = BYTE if kind == "llama" and _BYTE_TOKEN.match(token) else NORMAL
        by_id[int(token_id)] = (token, token_type)
    for added in tokenizer_json.get("added_tokens") or ():
        token_type = CONTROL if added.get("special") else USER_DEFINED
        by_id[int(added["id"])] = (str(added["content"]), token_type)
    unk = model.get("unk_token")
    if kind == "llama" and unk is not None:
        for token_id, (token, _) in by_id.items():
            if token == unk:
                by_id[token_id] = (token, UNKNOWN)
    count = max(by_id, default=-1) + 1
    if vocab_size is not None:
        if vocab_size < count:
            raise UnsupportedTokenizerError(
                f"{where}/tokenizer.json: token ids reach {count - 1}, more than the model's vocab_size {vocab_size}"
            )
        count = vocab_size
    tokens = [by_id.get(i, (f"[PAD{i}]", UNUSED))[0] for i in range(count)]
    types = [by_id.get(i, (f"[PAD{i}]", UNUSED))[1] for i in range(count)]
    return tokens, types


def _scores_from_merges(
    tokens: Sequence[str], types: Sequence[int], merges: Sequence[tuple[str, str]]
) -> list[float]:
    """SentencePiece scores reproducing a BPE merge order: higher score = merged earlier.

    A token built by merges scores minus the rank of the first merge giving it; other normal tokens
    (single characters) score below every merge, in id order; special and byte tokens score 0.
    """
    first_rank: dict[str, int] = {}
    for rank, (a, b) in enumerate(merges):
        first_rank.setdefault(a + b, rank)
    scores = []
    for token_id, (token, token_type) in enumerate(zip(tokens, types, strict=True)):
        if token_type != NORMAL:
            scores.append(0.0)
        elif token in first_rank:
            scores.append(-float(first_rank[token]))
        else:
            scores.append(-float(len(merges) + token_id))
    return scores


def _adds_bos_eos(
    tokenizer_json: Mapping[str, Any],
    tokenizer_config: Mapping[str, Any],
    specials: Mapping[str, str | None],
) -> tuple[bool, bool]:
    """add_bos_token / add_eos_token: from tokenizer_config.json, else from the post-processor's template."""
    single = [
        part["SpecialToken"]["id"]
        for step in _steps(tokenizer_json.get("post_processor"), "processors")
        if step.get("type") == "TemplateProcessing"
        for part in step.get("single") or ()
        if "SpecialToken" in part
    ]
    results = []
    for name in ("bos", "eos"):
        value = tokenizer_config.get(f"add_{name}_token")
        results.append(bool(value) if value is not None else specials.get(name) in single)
    return results[0], results[1]
