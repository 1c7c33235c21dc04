"""`cached_hf_dir`: converts once, reuses a complete entry, never uses a half-written one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

import tune.checkpoint.gguf.cache as cache_module  # noqa: E402
from tune.checkpoint.commit import sha256_file  # noqa: E402
from tune.checkpoint.gguf import cached_hf_dir, default_cache_dir, export_gguf  # noqa: E402
from tune.checkpoint.gguf.cache import COMPLETE_MARKER  # noqa: E402


@pytest.fixture
def tiny(gguf_tiny_model, gguf_model_dir, tmp_path):
    """(model, its F32 GGUF path)."""
    model = gguf_tiny_model("qwen3")
    return model, export_gguf(gguf_model_dir(model), tmp_path / "tiny.gguf", file_type="f32")


def _count_conversions(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = cache_module.gguf_to_hf

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(cache_module, "gguf_to_hf", counting)
    return calls


def test_converts_once_and_reuses(tiny, tmp_path, monkeypatch):
    model, path = tiny
    calls = _count_conversions(monkeypatch)
    entry = cached_hf_dir(path, tmp_path / "cache")
    assert entry == tmp_path / "cache" / f"tiny-{sha256_file(path)[:16]}"
    assert (entry / COMPLETE_MARKER).is_file()
    weights = entry / "model.safetensors"
    stamp = (weights.stat().st_ino, weights.stat().st_mtime_ns)

    assert cached_hf_dir(path, tmp_path / "cache") == entry
    assert calls == [str(path)]  # the second call did not convert
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == stamp

    loaded = transformers.AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32).eval()
    tokens = torch.tensor([[1, 5, 9, 200]])
    with torch.no_grad():
        assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_default_location_follows_tune_cache_dir(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_CACHE_DIR", str(tmp_path / "tc"))
    assert default_cache_dir() == tmp_path / "tc" / "gguf"
    assert cached_hf_dir(tiny[1]).parent == tmp_path / "tc" / "gguf"
    monkeypatch.delenv("TUNE_CACHE_DIR")
    assert default_cache_dir() == cache_module.Path.home() / ".cache" / "tune" / "gguf"


def test_an_entry_without_marker_is_rebuilt(tiny, tmp_path, monkeypatch):
    _, path = tiny
    root = tmp_path / "cache"
    entry = root / f"tiny-{sha256_file(path)[:16]}"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{")  # half written, no marker
    calls = _count_conversions(monkeypatch)
    assert cached_hf_dir(path, root) == entry
    assert calls == [str(path)]
    assert (entry / COMPLETE_MARKER).is_file()
    transformers.AutoConfig.from_pretrained(entry)  # the config is whole again
    assert [p.name for p in root.iterdir()] == [entry.name]


def test_a_killed_conversion_is_not_used(tiny, tmp_path):
    """SIGKILL a process in the middle of writing its entry; the next call builds a good one."""
    _, path = tiny
    root = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import time
        import tune.checkpoint.gguf.cache as cache

        real = cache.write_hf_directory

        def slow(directory, *args):
            real(directory, *args)
            (directory / "WRITTEN").touch()
            time.sleep(600)

        cache.write_hf_directory = slow
        cache.cached_hf_dir({str(path)!r}, {str(root)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not list(root.glob(".tiny-*.tmp-*/WRITTEN")):
            assert proc.poll() is None, "the child exited before writing"
            assert time.monotonic() < deadline, "the child did not get there"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = [p.name for p in root.iterdir()]
    assert len(leftovers) == 1  # only the dead process's temp dir
    assert ".tmp-" in leftovers[0]

    entry = cached_hf_dir(path, root)
    assert (entry / COMPLETE_MARKER).is_file()
    assert [p.name for p in root.iterdir()] == [entry.name]  # the dead temp dir was removed


def test_concurrent_callers_get_one_complete_entry(tiny, tmp_path):
    _, path = tiny
    results: list = []
    barrier = threading.Barrier(3)

    def call():
        barrier.wait()
        results.append(cached_hf_dir(path, tmp_path / "cache"))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    assert len(set(results)) == 1
    assert (results[0] / COMPLETE_MARKER).is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [results[0].name]
