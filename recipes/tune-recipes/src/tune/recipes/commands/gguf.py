"""``tune convert <in.gguf> <out_dir>`` and ``tune export <model_dir> <out.gguf> --type q8_0``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tune.recipes.config.hub_ids import is_hub_model_id


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``tune convert`` and ``tune export``."""
    p = sub.add_parser("convert", help="import a GGUF file as an HF checkpoint directory")
    p.add_argument("gguf_file", type=Path, help="a .gguf file (llama, qwen2/3, gemma2/3, phi3)")
    p.add_argument("output_dir", type=Path, help="the HF directory to write (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    p.set_defaults(func=convert)
    p = sub.add_parser(
        "export",
        help="write an HF model or PEFT adapter directory as GGUF (llama.cpp, Ollama)",
        description="An adapter directory is merged into its base on the way (--base, default: "
        "its adapter_config.json's base_model_name_or_path). An Ollama Modelfile is written "
        "next to the file.",
    )
    p.add_argument("model_dir", type=Path, help="an HF model directory or a PEFT adapter dir")
    p.add_argument("output_file", type=Path, help="the .gguf file to write")
    p.add_argument("--type", default="f16", help="f32, f16, bf16, q8_0, ... (default f16)")
    p.add_argument("--base", type=Path, help="the base HF directory of an adapter directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output_file")
    p.set_defaults(func=export)


def convert(args: argparse.Namespace) -> int:
    """Write the GGUF's model, tokenizer and chat template as an HF directory."""
    from tune.checkpoint.gguf import convert_gguf_to_hf_dir

    out = convert_gguf_to_hf_dir(args.gguf_file, args.output_dir, overwrite=args.overwrite)
    print(f"Converted {args.gguf_file} to {out}")
    return 0


def export(args: argparse.Namespace) -> int:
    """Write ``model_dir`` (merged with its base if it is an adapter) as one GGUF file."""
    from tune.checkpoint.gguf import export_gguf, supported_file_types

    if args.type not in supported_file_types():
        raise ValueError(f"--type must be one of {supported_file_types()}, got {args.type!r}")
    if not str(args.output_file).endswith(".gguf"):
        raise ValueError(f"{args.output_file}: the output file must end in .gguf")
    if args.output_file.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output_file} exists; pass --overwrite to replace it")
    args.output_file.parent.mkdir(parents=True, exist_ok=True)
    adapter_config = args.model_dir / "adapter_config.json"
    if not adapter_config.is_file():
        out = export_gguf(args.model_dir, args.output_file, file_type=args.type,
                          overwrite=args.overwrite)  # fmt: skip
    else:
        base = args.base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if base and not Path(base).expanduser().exists() and is_hub_model_id(base):
            from tune.checkpoint.hub import resolve_model_dir

            base = str(resolve_model_dir(base))  # a Hub id: its snapshot in the HF cache
        if not base or not (Path(base) / "config.json").is_file():
            raise ValueError(
                f"{adapter_config}: its base {base!r} is not a local HF directory; pass --base"
            )
        with tempfile.TemporaryDirectory(prefix="merged-", dir=args.output_file.parent) as tmp:
            merged = merge_adapter(Path(base), args.model_dir, Path(tmp) / "model")
            out = export_gguf(merged, args.output_file, file_type=args.type,
                              overwrite=args.overwrite)  # fmt: skip
    print(f"Wrote {out} ({args.type}) and {out.parent / 'Modelfile'}")
    return 0


def merge_adapter(base: Path, adapter_dir: Path, out: Path) -> Path:
    """Write ``base`` with the PEFT adapter in ``adapter_dir`` merged, as an HF directory."""
    import torch

    from tune.checkpoint import save_hf_checkpoint
    from tune.recipes.common.generation_model import load_generation_model

    dtype = torch.float32
    loaded = load_generation_model(
        base, dtype=dtype, device=torch.device("cpu"), adapter_dir=adapter_dir, merge_adapter=True
    )
    ckpt = loaded.checkpoint
    state = ckpt.native_to_hf({k: v.detach() for k, v in ckpt.model.state_dict().items()})
    save_hf_checkpoint(out, state, source_dir=base, dtype=dtype)
    return out
