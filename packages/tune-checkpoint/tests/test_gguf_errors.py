"""What GGUF import/export refuses, and how: the error names the file, key or tensor."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

from tune.checkpoint.gguf import (  # noqa: E402
    GgufFormatError,
    UnsupportedGgufError,
    convert_gguf_to_hf_dir,
    export_gguf,
    gguf_to_hf,
    read_gguf,
    write_gguf,
)


@pytest.fixture
def tiny_gguf(gguf_tiny_model, gguf_model_dir, tmp_path):
    """A tiny llama exported as F32 GGUF."""
    return export_gguf(
        gguf_model_dir(gguf_tiny_model("llama")), tmp_path / "tiny.gguf", file_type="f32"
    )


def _rewrite(source, target, *, arch=None, drop=(), extra=None):
    """Copy a GGUF's metadata and tensors into a new file, changing what the test needs."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(target), arch or reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if arch is not None:
            name = name.replace(reader.fields["general.architecture"].contents() + ".", arch + ".")
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub)
    for tensor in reader.tensors:
        if tensor.name not in drop:
            writer.add_tensor(tensor.name, np.array(tensor.data), raw_dtype=tensor.tensor_type)
    for name, array in (extra or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError):
        convert_gguf_to_hf_dir(tmp_path / "absent.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text('{"not": "gguf"}')
    with pytest.raises(
        GgufFormatError, match=r"model.gguf: not a GGUF file \(first bytes b'{\"no'"
    ):
        read_gguf(path)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_file(tiny_gguf, tmp_path, keep):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GgufFormatError, match=re.escape("cut.gguf: truncated")):
        gguf_to_hf(cut)


def test_unknown_architecture_lists_the_supported_ones(tiny_gguf, tmp_path):
    path = _rewrite(tiny_gguf, tmp_path / "bert.gguf", arch="bert")
    with pytest.raises(
        UnsupportedGgufError, match=r"'bert' is not supported; supported: \['gemma2'"
    ):
        gguf_to_hf(path)


def test_unmapped_and_missing_tensors_are_named(tiny_gguf, tmp_path):
    extra = _rewrite(
        tiny_gguf, tmp_path / "x.gguf", extra={"blk.0.mystery.weight": np.ones(4, np.float32)}
    )
    with pytest.raises(UnsupportedGgufError, match=re.escape("'blk.0.mystery.weight'")):
        gguf_to_hf(extra)
    short = _rewrite(tiny_gguf, tmp_path / "s.gguf", drop={"blk.1.ffn_up.weight"})
    with pytest.raises(UnsupportedGgufError, match=re.escape("lacks: 'blk.1.ffn_up.weight'")):
        gguf_to_hf(short)


def test_type_that_cannot_be_dequantized_is_named(tiny_gguf, tmp_path):
    path = _rewrite(
        tiny_gguf, tmp_path / "i.gguf", extra={"blk.0.counts": np.arange(8, dtype=np.int32)}
    )
    with pytest.raises(UnsupportedGgufError, match=re.escape("'blk.0.counts' is stored as I32")):
        read_gguf(path)


def test_rope_freqs_that_are_not_llama3_are_refused(tiny_gguf, tmp_path):
    odd = np.linspace(1.0, 3.0, 16, dtype=np.float32)  # head_dim 32 -> 16 rotary frequencies
    path = _rewrite(tiny_gguf, tmp_path / "r.gguf", extra={"rope_freqs.weight": odd})
    with pytest.raises(
        UnsupportedGgufError, match=re.escape("'rope_freqs.weight' holds per-frequency")
    ):
        gguf_to_hf(path)
    ones = _rewrite(
        tiny_gguf, tmp_path / "o.gguf", extra={"rope_freqs.weight": np.ones(16, np.float32)}
    )
    assert gguf_to_hf(ones)[0]["rope_parameters"]["rope_type"] == "default"


def test_out_dir_must_be_empty_unless_overwrite(tiny_gguf, tmp_path):
    out = tmp_path / "converted"
    out.mkdir()
    convert_gguf_to_hf_dir(tiny_gguf, out)  # an empty directory is fine
    (out / "keep.txt").write_text("x")
    with pytest.raises(
        FileExistsError, match="converted: directory is not empty; pass overwrite=True"
    ):
        convert_gguf_to_hf_dir(tiny_gguf, out)
    assert (out / "keep.txt").exists()
    convert_gguf_to_hf_dir(tiny_gguf, out, overwrite=True, dtype=torch.bfloat16)
    assert not (out / "keep.txt").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_refusals(gguf_tiny_model, gguf_model_dir, tmp_path):
    source = gguf_model_dir(gguf_tiny_model("llama"))
    out = export_gguf(source, tmp_path / "m.gguf", modelfile=False)
    with pytest.raises(FileExistsError, match=re.escape("m.gguf: exists; pass overwrite=True")):
        export_gguf(source, out)
    config = json.loads((source / "config.json").read_text())
    state = {"model.embed_tokens.weight": torch.zeros(320, 64)}
    with pytest.raises(
        UnsupportedGgufError, match=r"model_type 'gpt2' cannot be exported.*\['gemma2'"
    ):
        write_gguf(tmp_path / "g.gguf", {**config, "model_type": "gpt2"}, state, None, None)
    with pytest.raises(UnsupportedGgufError, match=re.escape("no 'lm_head.weight'")):
        write_gguf(tmp_path / "g.gguf", config, state, None, None)
    tied = {**config, "tie_word_embeddings": True}
    with pytest.raises(
        UnsupportedGgufError, match=re.escape("lacks: 'model.layers.0.input_layernorm.weight'")
    ):
        write_gguf(tmp_path / "g.gguf", tied, state, None, None)
    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    dynamic = gguf_model_dir(gguf_tiny_model("llama", rope_parameters=rope), "dyn")
    with pytest.raises(UnsupportedGgufError, match="rope_type 'dynamic' cannot be exported"):
        export_gguf(dynamic, tmp_path / "d.gguf")
    gemma = gguf_tiny_model("gemma2", query_pre_attn_scalar=144)
    with pytest.raises(
        UnsupportedGgufError, match=re.escape("query_pre_attn_scalar = 144, but llama.cpp scales")
    ):
        export_gguf(gguf_model_dir(gemma, "gemma"), tmp_path / "q.gguf")
    assert not (tmp_path / "g.gguf").exists()
    assert not (tmp_path / "q.gguf").exists()


def test_extra_hf_tensor_is_named(gguf_tiny_model, tmp_path):
    model = gguf_tiny_model("llama")
    state = {**model.state_dict(), "model.layers.0.self_attn.extra.weight": torch.zeros(2, 2)}
    with pytest.raises(
        UnsupportedGgufError,
        match=re.escape("no llama.cpp 'llama' tensor for 'model.layers.0.self_attn.extra.weight'"),
    ):
        write_gguf(tmp_path / "e.gguf", model.config.to_dict(), state, None, None)


def test_failed_export_keeps_the_previous_file(
    gguf_tiny_model, gguf_model_dir, tmp_path, monkeypatch
):
    source = gguf_model_dir(gguf_tiny_model("llama"))
    out = export_gguf(source, tmp_path / "out" / "m.gguf", file_type="f32", modelfile=False)
    before = out.read_bytes()
    original = gguf.GGUFWriter.write_tensors_to_file

    def disk_full(self, *args, **kwargs):
        original(self, *args, **kwargs)  # the temp file is complete; the rename must not happen
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_gguf(source, out, file_type="q8_0", overwrite=True, modelfile=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]


def test_gguf_is_optional():
    """`import tune.checkpoint` does not import gguf; without gguf the subpackage says what to install."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import tune.checkpoint\n"
        "assert 'gguf' not in sys.modules, 'tune.checkpoint imported gguf'\n"
        "sys.modules['gguf'] = None  # as if it were not installed\n"
        "try:\n"
        "    import tune.checkpoint.gguf\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "pip install tune-checkpoint[gguf]" in result.stdout


def test_arch_mistral_is_read_with_the_llama_layout(tiny_gguf, tmp_path):
    """llama.cpp writes Mistral as `llama`; a file that says `mistral` is read as Mistral."""
    path = _rewrite(tiny_gguf, tmp_path / "mistral.gguf", arch="mistral")
    config, state, _ = gguf_to_hf(path)
    reference_config, reference, _ = gguf_to_hf(tiny_gguf)
    assert config["model_type"] == "mistral"
    assert config["architectures"] == ["MistralForCausalLM"]
    assert config["head_dim"] == reference_config["head_dim"] == 32
    assert all(torch.equal(state[k], reference[k]) for k in reference)
