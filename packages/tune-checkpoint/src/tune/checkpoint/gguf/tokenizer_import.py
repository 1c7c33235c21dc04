"""HF tokenizer files (`tokenizer.json`, `tokenizer_config.json`) from a GGUF's tokenizer metadata.

A GGUF stores its tokenizer as llama.cpp metadata: the token strings in id order, a type per token,
BPE merges (byte-level vocabularies) or scores (SentencePiece vocabularies), the special-token ids,
the name of the pre-tokenizer (`tokenizer.ggml.pre`) and the jinja chat template. This module turns
that back into the two JSON files `tokenizers` and `transformers` load:

    files = hf_tokenizer_files_from_gguf(metadata)   # {"tokenizer.json": {...}, "tokenizer_config.json": {...}}

Supported `tokenizer.ggml.model` values:

- `"gpt2"`: byte-level BPE (GPT-2, SmolLM2, Qwen2/3, Llama 3). The split regexes of the known
  `tokenizer.ggml.pre` names are in `PRE_TOKENIZERS`; other names fall back to GPT-2's with a warning.
- `"llama"`: SentencePiece BPE with byte fallback (Llama 2, Mistral, TinyLlama; Phi-3 and Gemma by
  their `general.architecture`). Files without merges get them from the scores: a piece with a higher
  score is merged first, as SentencePiece does.

The output needs neither `gguf` nor `tokenizers` to be built: both files are plain dicts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tune.checkpoint.gguf.errors import UnsupportedGgufError

logger = logging.getLogger(__name__)

# llama.cpp token types (`gguf.TokenType`), as stored in `tokenizer.ggml.token_type`.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

SPACE_MARK = "\u2581"  # "▁": SentencePiece's spelling of a space
SUPPORTED_MODELS = ("gpt2", "llama")


class UnsupportedTokenizerError(UnsupportedGgufError):
    """A tokenizer that cannot be converted between GGUF metadata and HF tokenizer files."""


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character map: printable bytes stand for themselves, the rest for 256 + n."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return chars


BYTE_LEVEL_CHARS = byte_level_alphabet()
_BYTE_LEVEL_SET = frozenset(BYTE_LEVEL_CHARS.values())

# Split regexes, as `tokenizers` spells them (facts from the models' tokenizer.json files and
# llama.cpp's pre-tokenizer table).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's fallback for a BPE vocabulary with pre "default": four regexes applied in turn.
DEFAULT_BPE_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", GPT2_SPLIT, r"\p{N}+", r"[0-9][0-9][0-9]")


def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": use_regex,
    }


def _sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(steps)}


# `tokenizer.ggml.pre` name -> the `pre_tokenizer` of tokenizer.json that splits text the same way.
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _byte_level(True),
    "smollm": _sequence({"type": "Digits", "individual_digits": True}, _byte_level(True)),
    "llama-bpe": _sequence(_split(LLAMA3_SPLIT), _byte_level(False)),
    "qwen2": _sequence(_split(QWEN2_SPLIT), _byte_level(False)),
    "default": _sequence(*(_split(r) for r in DEFAULT_BPE_SPLITS), _byte_level(False)),
}
# Other names llama.cpp gives the same splitting.
PRE_TOKENIZER_ALIASES: dict[str, str] = {
    "gpt2": "gpt-2",
    "phi-2": "gpt-2",
    "mpt": "gpt-2",
    "olmo": "gpt-2",
    "starcoder": "smollm",
    "refact": "smollm",
    "command-r": "smollm",
    "codeshell": "smollm",
    "exaone": "smollm",
    "minerva-7b": "smollm",
    "llama3": "llama-bpe",
    "llama-v3": "llama-bpe",
    "falcon3": "llama-bpe",
    "deepseek-r1-qwen": "qwen2",
    "megrez": "qwen2",
}
# llama.cpp emits a whole pre-token that is itself in the vocabulary without merging it (Llama 3).
IGNORE_MERGES_PRE = frozenset({"llama-bpe"})


def canonical_pre_name(name: str | None) -> str | None:
    """The `PRE_TOKENIZERS` key for a `tokenizer.ggml.pre` name, or None when unknown."""
    if name is None:
        return None
    name = PRE_TOKENIZER_ALIASES.get(name, name)
    return name if name in PRE_TOKENIZERS else None


def hf_tokenizer_files_from_gguf(
    metadata: Mapping[str, Any], *, where: str = "GGUF metadata"
) -> dict[str, Any]:
    """`{"tokenizer.json": dict, "tokenizer_config.json": dict}` for the tokenizer a GGUF describes.

    Args:
        metadata: the GGUF key/value metadata as plain Python values (`tokenizer.ggml.tokens` a
            list[str] of length V, `tokenizer.ggml.token_type` list[int] of length V, ...).
        where: names the file in error messages.
    """
    model_name = metadata.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in metadata:
        raise UnsupportedTokenizerError(
            f"{where}: no 'tokenizer.ggml.tokens'; the file carries no tokenizer"
        )
    tokens = [str(t) for t in metadata["tokenizer.ggml.tokens"]]
    types = [int(t) for t in metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)]
    if len(types) != len(tokens):
        raise UnsupportedTokenizerError(
            f"{where}: 'tokenizer.ggml.token_type' has {len(types)} entries, expected {len(tokens)} (one per token)"
        )
    if model_name == "gpt2":
        tokenizer_json = _byte_level_tokenizer(metadata, tokens, types, where)
        default_add_bos = False
    elif model_name == "llama":
        tokenizer_json = _sentencepiece_tokenizer(metadata, tokens, types, where)
        default_add_bos = (
            True  # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise
        )
    else:
        raise UnsupportedTokenizerError(
            f"{where}: tokenizer.ggml.model is {model_name!r}; supported are {list(SUPPORTED_MODELS)} "
            "(byte-level BPE and SentencePiece BPE)"
        )
    config = _tokenizer_config(metadata, tokens, default_add_bos)
    tokenizer_json["post_processor"] = template_post_processor(
        config.get("bos_token") if config["add_bos_token"] else None,
        config.get("eos_token") if config["add_eos_token"] else None,
        {t: i for i, t in enumerate(tokens)},
    )
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config}


def _special_ids(metadata: Mapping[str, Any], count: int) -> dict[str, int]:
    ids = {}
    for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        value = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None and 0 <= int(value) < count:
            ids[name] = int(value)
    return ids


def _tokenizer_config(
    metadata: Mapping[str, Any], tokens: list[str], default_add_bos: bool
) -> dict[str, Any]:
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name, token_id in _special_ids(metadata, len(tokens)).items():
        config[f"{name}_token"] = tokens[token_id]
    config["add_bos_token"] = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos))
    config["add_eos_token"] = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    config["clean_up_tokenization_spaces"] = False
    architecture = metadata.get("general.architecture")
    context = metadata.get(f"{architecture}.context_length") if architecture else None
    if context:
        config["model_max_length"] = int(context)
    template = _chat_templates(metadata)
    if template is not None:
        config["chat_template"] = template
    return config


def _chat_templates(metadata: Mapping[str, Any]) -> str | list[dict[str, str]] | None:
    """One template as a string, or HF's list of named templates when the file has several."""
    default = metadata.get("tokenizer.chat_template")
    names = [str(n) for n in metadata.get("tokenizer.chat_templates") or ()]
    named = [
        {"name": n, "template": str(metadata[f"tokenizer.chat_template.{n}"])}
        for n in names
        if f"tokenizer.chat_template.{n}" in metadata
    ]
    if not named:
        return None if default is None else str(default)
    if default is not None:
        named.insert(0, {"name": "default", "template": str(default)})
    return named


def template_post_processor(
    bos: str | None, eos: str | None, vocab: Mapping[str, int]
) -> dict[str, Any]:
    """A `TemplateProcessing` post-processor adding `bos`/`eos` (either may be None) around each sequence."""
    bos = bos if bos is not None and bos in vocab else None
    eos = eos if eos is not None and eos in vocab else None

    def sequence(seq: str, type_id: int) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if bos is not None:
            parts.append({"SpecialToken": {"id": bos, "type_id": type_id}})
        parts.append({"Sequence": {"id": seq, "type_id": type_id}})
        if eos is not None:
            parts.append({"SpecialToken": {"id": eos, "type_id": type_id}})
        return parts

    specials = {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in (bos, eos) if t is not None}
    return {
        "type": "TemplateProcessing",
        "single": sequence("A", 0),
        "pair": sequence("A", 0) + sequence("B", 1),
        "special_tokens": specials,
    }


def _added_tokens(
    tokens: list[str], types: list[int], special_types: frozenset[int]
) -> list[dict[str, Any]]:
    """Tokens matched whole in the text before the model runs: control (special) and user-defined."""
    added = []
    for token_id, (token, token_type) in enumerate(zip(tokens, types, strict=True)):
        if token_type in special_types or token_type == USER_DEFINED:
            added.append(
                {
                    "id": token_id,
                    "content": token,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": token_type != USER_DEFINED,
                }
            )
    return added


def _vocab(keys: Sequence[str], where: str) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token_id, key in enumerate(keys):
        if key in vocab:
            logger.warning(
                "%s: token %d %r repeats token %d; only the first can be produced by encoding",
                where,
                token_id,
                key,
                vocab[key],
            )
            continue
        vocab[key] = token_id
    return vocab


def _file_merges(
    metadata: Mapping[str, Any], vocab: Mapping[str, int], where: str
) -> list[list[str]] | None:
    """`tokenizer.ggml.merges` ("left right" strings) as pairs, or None when the file has none."""
    raw = metadata.get("tokenizer.ggml.merges")
    if not raw:
        return None
    merges = []
    for index, merge in enumerate(raw):
        parts = str(merge).split(" ")
        if len(parts) != 2:
            # A piece holding a space: take the one cut whose halves are both tokens.
            cuts = [
                (str(merge)[:i], str(merge)[i + 1 :]) for i, c in enumerate(str(merge)) if c == " "
            ]
            cuts = [(a, b) for a, b in cuts if a in vocab and b in vocab]
            if len(cuts) != 1:
                raise UnsupportedTokenizerError(
                    f"{where}: tokenizer.ggml.merges[{index}] = {merge!r} is not two tokens separated by a space"
                )
            parts = list(cuts[0])
        merges.append(parts)
    return merges


def _byte_level_tokenizer(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], where: str
) -> dict[str, Any]:
    """Byte-level BPE: every vocabulary string is spelled in GPT-2's byte alphabet."""
    keys = []
    for token, token_type in zip(tokens, types, strict=True):
        if set(token) <= _BYTE_LEVEL_SET or token_type in (CONTROL, USER_DEFINED):
            # Control and user-defined tokens are matched as raw text, so they keep their spelling.
            keys.append(token)
        else:
            keys.append("".join(BYTE_LEVEL_CHARS[b] for b in token.encode("utf-8")))
    vocab = _vocab(keys, where)
    merges = _file_merges(metadata, vocab, where)
    if merges is None:
        raise UnsupportedTokenizerError(
            f"{where}: byte-level BPE (tokenizer.ggml.model 'gpt2') without tokenizer.ggml.merges"
        )
    pre_name = metadata.get("tokenizer.ggml.pre")
    canonical = canonical_pre_name(pre_name)
    if canonical is None:
        logger.warning(
            "%s: tokenizer.ggml.pre %r is not one of %s; splitting text as GPT-2 does, which may differ from llama.cpp",
            where,
            pre_name,
            sorted(PRE_TOKENIZERS),
        )
        canonical = "gpt-2"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types, frozenset({CONTROL})),
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[canonical],
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": canonical in IGNORE_MERGES_PRE,
            "vocab": vocab,
            "merges": merges,
        },
    }


def merges_from_scores(
    tokens: Sequence[str], ranking: Sequence[float], types: Sequence[int] | None = None
) -> list[list[str]]:
    """BPE merges implied by a SentencePiece vocabulary: every cut of a token into two tokens.

    SentencePiece merges, at each step, the adjacent pair whose joined piece has the highest score.
    As BPE merges, that is each cut of a piece, ordered by the piece's score (highest first); ties
    put the longer left half first, then file order.

    Args:
        tokens: V token strings in id order.
        ranking: V numbers; a higher one is merged earlier (the scores, or minus the id for Gemma).
        types: V llama.cpp token types; only normal tokens are cut or used as halves.
    """
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    usable = [types is None or types[i] == NORMAL for i in range(len(tokens))]
    found: list[tuple[float, int, int, int, int, int, str, str]] = []
    for token_id, token in enumerate(tokens):
        if not usable[token_id] or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            left_id, right_id = vocab.get(left), vocab.get(right)
            if left_id is None or right_id is None or not (usable[left_id] and usable[right_id]):
                continue
            found.append(
                (
                    -ranking[token_id],
                    -len(left),
                    -len(right),
                    token_id,
                    left_id,
                    right_id,
                    left,
                    right,
                )
            )
    found.sort(key=lambda m: m[:6])
    return [[m[6], m[7]] for m in found]


def _sentencepiece_tokenizer(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], where: str
) -> dict[str, Any]:
    """SentencePiece BPE with byte fallback: spaces are "▁", unknown characters become <0xNN> tokens."""
    architecture = str(metadata.get("general.architecture", ""))
    gemma = architecture.startswith("gemma")
    if gemma:
        # Gemma files spell tokens of only spaces with real spaces; the text side sees "▁".
        tokens = [SPACE_MARK * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = _vocab(tokens, where)
    merges = _file_merges(metadata, vocab, where)
    if merges is None:
        if gemma:
            # Gemma's scores do not follow its merge order; the token order does.
            ranking: Sequence[float] = [-float(i) for i in range(len(tokens))]
        else:
            scores = metadata.get("tokenizer.ggml.scores")
            if scores is None or len(scores) != len(tokens):
                raise UnsupportedTokenizerError(
                    f"{where}: a SentencePiece vocabulary needs tokenizer.ggml.merges or one "
                    f"tokenizer.ggml.scores entry per token ({len(tokens)})"
                )
            ranking = [float(s) for s in scores]
        merges = merges_from_scores(tokens, ranking, types)
    unk_id = _special_ids(metadata, len(tokens)).get("unk")
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True)) and not gemma
    decoder_steps: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": SPACE_MARK}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if add_prefix:
        decoder_steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    normalizer: dict[str, Any] | None
    pre_tokenizer: dict[str, Any] | None
    if architecture == "phi3":
        # Phi-3 prefixes every text piece between special tokens with "▁" (a normalizer, not Metaspace).
        normalizer = {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": SPACE_MARK},
                {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK},
            ],
        }
        pre_tokenizer = None
    elif gemma:
        normalizer = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARK}
        pre_tokenizer = None
    else:
        normalizer = None
        pre_tokenizer = {
            "type": "Metaspace",
            "replacement": SPACE_MARK,
            "prepend_scheme": "first" if add_prefix else "never",
            "split": False,
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tokens, types, frozenset({CONTROL, UNKNOWN})),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoder_steps},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": tokens[unk_id] if unk_id is not None else None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
