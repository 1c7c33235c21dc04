"""A tokenizer over the `tokenizers` library, loaded from an HF checkpoint directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _RustTokenizer

# The special-token names HF passes to chat templates (its `special_tokens_map`).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


class TokenizerFileError(ValueError):
    """A tokenizer file that is missing, truncated, not JSON, or of the wrong shape."""


def _read_json(path: Path) -> Any:
    """Parse a JSON file; raise `TokenizerFileError` naming the file, line and column."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise TokenizerFileError(
            f"{path}: invalid UTF-8 at byte offset {error.start}; expected a UTF-8 JSON file"
        ) from error
    except json.JSONDecodeError as error:
        raise TokenizerFileError(
            f"{path}:{error.lineno}:{error.colno}: malformed JSON ({error.msg}); the file may be "
            "truncated (an interrupted download?)"
        ) from error


def _load_backend(path: Path) -> _RustTokenizer:
    """`tokenizers.Tokenizer.from_file`, with errors that name the file and what is wrong."""
    try:
        return _RustTokenizer.from_file(str(path))
    except Exception as error:  # the Rust side raises a bare Exception with serde's text
        document = _read_json(path)  # names line and column when the JSON itself is broken
        if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
            got = type(document).__name__ if not isinstance(document, dict) else sorted(document)
            raise TokenizerFileError(
                f"{path}: expected a tokenizers JSON object with a 'model' object, got {got}"
            ) from error
        raise TokenizerFileError(
            f"{path}: not a valid tokenizers file ({error}); expected the tokenizer.json a "
            "fast (tokenizers) tokenizer saves"
        ) from error


def _token_content(value: Any, key: str, path: Path) -> str | None:
    """A special token is stored either as a string or as an AddedToken dict with `content`."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{path}: {key!r} must be a string or a dict with 'content', got {value!r}")


def _read_chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    """The default chat template: `chat_template.jinja` (transformers >= 4.50) or the config key."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {entry["name"]: entry["template"] for entry in template}
        if "default" not in named:
            raise ValueError(
                f"{directory / 'tokenizer_config.json'}: chat_template is a list without a 'default' "
                f"entry; names found: {sorted(named)}"
            )
        return named["default"]
    return template


def _post_processor_adds(
    backend: _RustTokenizer, special_tokens: dict[str, str | None]
) -> tuple[bool, bool]:
    """Whether tokenizer.json's post-processor adds BOS / EOS (Llama 3 adds BOS this way)."""
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    bos, eos = special_tokens.get("bos_token"), special_tokens.get("eos_token")
    bos_id = None if bos is None else backend.token_to_id(bos)
    eos_id = None if eos is None else backend.token_to_id(eos)
    adds_bos = bos_id is not None and full[:1] == [bos_id] and plain[:1] != [bos_id]
    adds_eos = eos_id is not None and full[-1:] == [eos_id] and plain[-1:] != [eos_id]
    return adds_bos, adds_eos


class Tokenizer:
    """Encode/decode text with a `tokenizers.Tokenizer` and the special tokens of its directory.

    Args:
        tokenizer: the fast tokenizer (from `tokenizer.json`).
        special_tokens: special-token name -> token string (`bos_token`, `eos_token`, `pad_token`, ...).
        chat_template: the directory's default jinja chat template, if any.
        add_bos: whether `encode` prepends BOS by default (from `add_bos_token`).
        add_eos: whether `encode` appends EOS by default (from `add_eos_token`).
    """

    def __init__(
        self,
        tokenizer: _RustTokenizer,
        special_tokens: dict[str, str | None] | None = None,
        chat_template: str | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> None:
        self.backend = tokenizer
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template
        self.add_bos = add_bos
        self.add_eos = add_eos
        for name, token in self.special_tokens.items():
            if tokenizer.token_to_id(token) is None:
                raise ValueError(
                    f"special token {name}={token!r} is not in the tokenizer's vocabulary"
                )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` and `tokenizer_config.json` (+ `chat_template.jinja`) from a directory.

        Args:
            path: an HF checkpoint or tokenizer directory.
        """
        directory = Path(path)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found: tune.data needs a fast tokenizer.json"
            )
        backend = _load_backend(tokenizer_file)
        config: dict[str, Any] = {}
        config_file = directory / "tokenizer_config.json"
        if config_file.is_file():
            config = _read_json(config_file)
        specials_file = directory / "special_tokens_map.json"
        if specials_file.is_file():
            config = {**_read_json(specials_file), **config}
        for file, value in ((config_file, config),):
            if not isinstance(value, dict):
                raise TokenizerFileError(
                    f"{file}: expected a JSON object, got {type(value).__name__}"
                )
        special_tokens = {
            name: _token_content(config.get(name), name, config_file)
            for name in SPECIAL_TOKEN_NAMES
        }
        added_bos, added_eos = _post_processor_adds(backend, special_tokens)
        return cls(
            backend,
            special_tokens=special_tokens,
            chat_template=_read_chat_template(directory, config),
            add_bos=bool(config.get("add_bos_token", added_bos)),
            add_eos=bool(config.get("add_eos_token", added_eos)),
        )

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        """Id of the BOS token, or None."""
        return self._special_id("bos_token")

    @property
    def eos_id(self) -> int | None:
        """Id of the EOS token, or None."""
        return self._special_id("eos_token")

    @property
    def unk_id(self) -> int | None:
        """Id of the token the model emits for text it cannot encode, or None when it encodes
        every character (byte-level BPE, byte fallback)."""
        model = self.backend.model
        if getattr(model, "byte_fallback", False):
            return None
        token = getattr(model, "unk_token", None)  # BPE, WordPiece
        if isinstance(token, str):
            return self.backend.token_to_id(token)
        if type(model).__name__ == "Unigram":  # its unk_id is not exposed; trust the config
            unk = self._special_id("unk_token")
            if unk not in (self.bos_id, self.eos_id, self._special_id("pad_token")):
                return unk
        return None

    @property
    def pad_id(self) -> int:
        """Id used for padding: `pad_token`, else EOS, else 0 (padding is never trained)."""
        pad = self._special_id("pad_token")
        if pad is None:
            pad = self.eos_id
        return 0 if pad is None else pad

    @property
    def vocab_size(self) -> int:
        """Size of the vocabulary including added tokens."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None."""
        return self.backend.token_to_id(token)

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        bos, eos = self.bos_id, self.eos_id
        if add_bos:
            if bos is None:
                raise ValueError("add_bos=True but the tokenizer has no bos_token")
            if not ids or ids[0] != bos:  # a BOS the text already carries is never doubled
                ids = [bos, *ids]
        if add_eos:
            if eos is None:
                raise ValueError("add_eos=True but the tokenizer has no eos_token")
            if not ids or ids[-1] != eos:
                ids = [*ids, eos]
        return ids

    def encode(
        self, text: str, add_bos: bool | None = None, add_eos: bool | None = None
    ) -> list[int]:
        """Token ids of `text`; special tokens written in the text are recognised.

        The tokenizer.json post-processor is not applied: BOS/EOS come only from `add_bos`/`add_eos`
        (defaults from `tokenizer_config.json`), and a BOS already at the start is not added again.

        Args:
            text: the text.
            add_bos: prepend BOS unless the ids already start with it (None: the config default).
            add_eos: append EOS unless the ids already end with it (None: the config default).
        """
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return self._wrap(
            ids,
            self.add_bos if add_bos is None else add_bos,
            self.add_eos if add_eos is None else add_eos,
        )

    def encode_batch(
        self, texts: Sequence[str], add_bos: bool | None = None, add_eos: bool | None = None
    ) -> list[list[int]]:
        """`encode` over many texts (parallel in the Rust backend).

        Args:
            texts: the texts.
            add_bos: as in `encode`.
            add_eos: as in `encode`.
        """
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        bos = self.add_bos if add_bos is None else add_bos
        eos = self.add_eos if add_eos is None else add_eos
        return [self._wrap(e.ids, bos, eos) for e in encodings]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their character spans `(start, end)` in `text` (no BOS/EOS added).

        Args:
            text: the text.
        """
        encoding = self.backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids.

        Args:
            ids: token ids.
            skip_special_tokens: drop special tokens from the text.
        """
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def check_vocab_fits(
    tokenizer_vocab_size: int,
    model_vocab_size: int,
    *,
    tokenizer_dir: str | Path,
    checkpoint_dir: str | Path,
) -> None:
    """Refuse a tokenizer with ids past a model's embedding (a smaller one is normal: padded tables).

    Args:
        tokenizer_vocab_size: the tokenizer's ids, added tokens included (``Tokenizer.vocab_size``).
        model_vocab_size: rows of the model's embedding (``vocab_size`` of its ``config.json``).
        tokenizer_dir: where the tokenizer came from, named in the error.
        checkpoint_dir: where the model came from, named in the error.

    Raises:
        ValueError: the tokenizer has more ids than the embedding has rows.
    """
    if tokenizer_vocab_size > model_vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_dir} has {tokenizer_vocab_size} ids (with added tokens) but "
            f"the model of {checkpoint_dir} embeds only {model_vocab_size} (config.json "
            "vocab_size): ids past the embedding would fail mid-training. Use the model's own "
            "tokenizer, or resize the embedding first"
        )
