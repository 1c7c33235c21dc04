"""HF model -> a GGUF file llama.cpp (and Ollama, LM Studio) loads as it is.

    export_gguf("out/model-hf", "out/model.q8_0.gguf", file_type="q8_0")

writes llama.cpp tensor names in llama.cpp's layout, `general.*` keys, the architecture keys, the
tokenizer and chat template, and (unless `modelfile=False`) an Ollama `Modelfile` beside the file.
2-D weights take `file_type`; 1-D tensors (norms, biases) stay F32; a weight whose rows do not
split into the type's blocks falls back to F16 (see `quant_types`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import torch

from tune.checkpoint.errors import first_keys
from tune.checkpoint.gguf.architectures import GgufArchitecture, architecture_for_model_type
from tune.checkpoint.gguf.config_export import add_model_metadata
from tune.checkpoint.gguf.errors import UnsupportedGgufError
from tune.checkpoint.gguf.quant_types import (
    encode_tensor,
    llama_file_type,
    quantization_type,
    tensor_type,
)
from tune.checkpoint.gguf.tensor_names import (
    EMBEDDING,
    LM_HEAD,
    candidate_hf_names,
    hf_to_gguf_names,
)
from tune.checkpoint.gguf.tensor_transforms import to_gguf_layout
from tune.checkpoint.safetensors_dir import load_safetensors_dir

logger = logging.getLogger(__name__)

_TOKENIZER_KEYS = gguf.Keys.Tokenizer
# Buffers some older checkpoints carry; llama.cpp recomputes them.
_SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


class _WarningsOnly(logging.Filter):
    """gguf's writer logs three INFO lines per file (endianness, file list, sizes); this module
    logs what it wrote itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


logging.getLogger("gguf.gguf_writer").addFilter(_WarningsOnly())


def _weights_to_write(
    family: GgufArchitecture,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    where: str,
) -> dict[str, torch.Tensor]:
    """The HF tensors llama.cpp stores: tied lm_head dropped, every required one present."""
    tensors = {k: v for k, v in state_dict.items() if not k.endswith(_SKIPPED_SUFFIXES)}
    tied = config.get("tie_word_embeddings", LM_HEAD not in tensors)
    if tied:
        head = tensors.pop(LM_HEAD, None)
        if head is not None and EMBEDDING in tensors and not torch.equal(head, tensors[EMBEDDING]):
            logger.warning("%s: tie_word_embeddings is set; lm_head.weight is not written", where)
    elif LM_HEAD not in tensors:
        raise UnsupportedGgufError(
            f"{where}: tie_word_embeddings is false but there is no {LM_HEAD!r}"
        )
    elif not family.untied_output:
        raise UnsupportedGgufError(
            f"{where}: llama.cpp's {family.gguf_arch!r} has no separate output weight; "
            "tie_word_embeddings must be true"
        )
    required, _ = candidate_hf_names(family, int(config["num_hidden_layers"]))
    missing = [k for k in required if k not in tensors]
    if missing:
        raise UnsupportedGgufError(
            f"{where}: a {family.hf_class} needs tensors the state dict lacks: {first_keys(missing)}"
        )
    return tensors


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def stop_strings(
    config: Mapping[str, Any],
    tokenizer_json: Mapping[str, Any] | None,
    tokenizer_config: Mapping[str, Any],
) -> list[str]:
    """Texts that end a reply: the `eos_token` and the added tokens whose id is an eos id."""
    stops: list[str] = []
    eos = _token_text(tokenizer_config.get("eos_token"))
    if eos:
        stops.append(eos)
    ids = config.get("eos_token_id")
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    for token in (tokenizer_json or {}).get("added_tokens", []):
        if token.get("id") in ids and token.get("content") not in stops:
            stops.append(token["content"])
    return stops


def _add_tokenizer(
    writer: gguf.GGUFWriter,
    config: Mapping[str, Any],
    tokenizer_json: Mapping[str, Any] | None,
    tokenizer_config: Mapping[str, Any],
    where: str,
) -> None:
    if tokenizer_json is None:
        logger.warning(
            "%s: no tokenizer.json; the GGUF has no vocabulary (llama.cpp needs one)", where
        )
    else:
        try:
            from tune.checkpoint.gguf.tokenizer_export import add_tokenizer_metadata
        except ModuleNotFoundError as err:
            if err.name != "tune.checkpoint.gguf.tokenizer_export":
                raise
            logger.warning(
                "%s: the tokenizer export is not available; no vocabulary written", where
            )
        else:
            vocab = config.get("vocab_size")
            add_tokenizer_metadata(
                writer,
                tokenizer_json,
                tokenizer_config,
                where=where,
                vocab_size=vocab if isinstance(vocab, int) else None,
            )
    written = writer.kv_data[0]
    template = tokenizer_config.get("chat_template")
    if isinstance(template, str) and _TOKENIZER_KEYS.CHAT_TEMPLATE not in written:
        writer.add_chat_template(template)
    eos = config.get("eos_token_id")
    ids = {
        _TOKENIZER_KEYS.BOS_ID: config.get("bos_token_id"),
        _TOKENIZER_KEYS.EOS_ID: eos[0] if isinstance(eos, list) and eos else eos,
        _TOKENIZER_KEYS.PAD_ID: config.get("pad_token_id"),
    }
    for key, value in ids.items():
        if isinstance(value, int) and key not in written:
            writer.add_uint32(key, value)


def write_gguf(
    out_path: str | os.PathLike[str],
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    tokenizer_json: Mapping[str, Any] | None,
    tokenizer_config: Mapping[str, Any] | None,
    file_type: str = "f16",
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an HF model (config + state dict in HF names) as one GGUF file, atomically.

    Args:
        out_path: the `.gguf` file to write (written as `.<name>.tmp-<pid>`, then renamed).
        config: the model's `config.json` content (`model_type` picks the llama.cpp arch).
        state_dict: HF name -> tensor (`[out, in]` weights, any float dtype).
        tokenizer_json: `tokenizer.json` content, or None to write no vocabulary.
        tokenizer_config: `tokenizer_config.json` content; its `chat_template` is stored.
        file_type: type of the 2-D weights, one of `supported_file_types()`.
        name: `general.name` (default: `config["_name_or_path"]` or the file stem).
        overwrite: replace an existing `out_path`.

    Raises:
        FileExistsError: `out_path` exists and `overwrite` is False.
        UnsupportedGgufError: a model type, tensor or setting llama.cpp cannot hold (names it).
        ValueError: an unsupported `file_type` (lists the supported ones).
    """
    out_path = Path(out_path)
    where = str(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path}: exists; pass overwrite=True to replace it")
    quantization_type(file_type)  # refuse an unknown type before any work
    family = architecture_for_model_type(config.get("model_type"), where)
    tensors = _weights_to_write(family, config, state_dict, where)
    names = hf_to_gguf_names(family, int(config["num_hidden_layers"]), tensors, where)
    tokenizer_config = dict(tokenizer_config or {})

    writer = gguf.GGUFWriter(None, family.gguf_arch, use_temp_file=True)
    writer.add_name(name or str(config.get("_name_or_path") or out_path.stem))
    writer.add_file_type(int(llama_file_type(file_type)))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    extra = add_model_metadata(writer, family, config, where)
    _add_tokenizer(writer, config, tokenizer_json, tokenizer_config, where)
    for hf_name, gguf_name in names.items():
        array = to_gguf_layout(family, hf_name, tensors[hf_name], dict(config)).numpy()
        qtype = tensor_type(gguf_name, tuple(array.shape), file_type)
        writer.add_tensor(gguf_name, encode_tensor(array, qtype), raw_dtype=qtype)
    for gguf_name, tensor in extra.items():
        writer.add_tensor(gguf_name, tensor.to(torch.float32).numpy())

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s (%s, %d tensors)", out_path, file_type, len(names) + len(extra))
    return out_path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def export_gguf(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    file_type: str = "f16",
    overwrite: bool = False,
    modelfile: bool = True,
    name: str | None = None,
) -> Path:
    """Export an HF directory (config.json, safetensors, tokenizer files) as a GGUF file.

    Args:
        model_dir: holds `config.json`, `model.safetensors` (or shards + index), and
            `tokenizer.json` / `tokenizer_config.json` / `chat_template.jinja` when present.
        out_path: the `.gguf` file to write.
        file_type: type of the 2-D weights: `"f32"`, `"f16"`, `"bf16"`, `"q8_0"`, ... (see
            `supported_file_types()`).
        overwrite: replace an existing `out_path` (and Modelfile).
        modelfile: also write an Ollama `Modelfile` next to `out_path`.
        name: `general.name` (default: the config's `_name_or_path`, else the directory name).

    Returns:
        `out_path`.
    """
    quantization_type(file_type)  # refuse an unknown type before reading the model
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json (not an HF model directory)")
    config = _read_json(config_path)
    state_dict = load_safetensors_dir(model_dir)
    tokenizer_json = (
        _read_json(model_dir / "tokenizer.json")
        if (model_dir / "tokenizer.json").is_file()
        else None
    )
    tokenizer_config: dict[str, Any] = {}
    if (model_dir / "tokenizer_config.json").is_file():
        tokenizer_config = dict(_read_json(model_dir / "tokenizer_config.json"))
    if not tokenizer_config.get("chat_template") and (model_dir / "chat_template.jinja").is_file():
        tokenizer_config["chat_template"] = (model_dir / "chat_template.jinja").read_text(
            encoding="utf-8"
        )
    out = write_gguf(
        out_path,
        config,
        state_dict,
        tokenizer_json,
        tokenizer_config,
        file_type,
        name=name or config.get("_name_or_path") or model_dir.name,
        overwrite=overwrite,
    )
    if modelfile:
        _write_modelfile(out, config, tokenizer_json, tokenizer_config)
    return out


def _write_modelfile(
    gguf_path: Path,
    config: Mapping[str, Any],
    tokenizer_json: Mapping[str, Any] | None,
    tokenizer_config: Mapping[str, Any],
) -> None:
    try:
        from tune.checkpoint.gguf.modelfile import write_ollama_modelfile
    except ModuleNotFoundError as err:
        if err.name != "tune.checkpoint.gguf.modelfile":
            raise
        logger.warning("%s: the Modelfile writer is not available; no Modelfile written", gguf_path)
        return
    template = tokenizer_config.get("chat_template")
    write_ollama_modelfile(
        gguf_path,
        template if isinstance(template, str) else None,
        stop=stop_strings(config, tokenizer_json, tokenizer_config),
    )
