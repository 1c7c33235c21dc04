"""A C kernel for ``x @ (q * scale).T`` with int8 ``q`` and a few rows of ``x``, built on first use.

Why C, and why this way: decoding is bound by reading the weights, so the kernel must read each
int8 weight once and spend little per call. ``torch.compile`` makes a good loop but its guards
cost ~30-60 us per call (x 200 Linears per token); torch's int8/int4 weight-only CPU ops were
2-15x slower than a float32 matmul at decode shapes on the development CPU. The source below has no torch headers, so ``cc`` builds it in well under a
second; it is called through ``ctypes`` on the tensors' data pointers. The shared object is cached
per source, flags and CPU model in a private (0700) directory under the temporary directory. Without a C compiler (or on a failed
build) ``load_int8_kernel`` returns None and callers fall back to a float matmul.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

__all__ = ["int8_kernel_matmul", "load_int8_kernel"]

logger = logging.getLogger(__name__)

# out[m, n] = scale[n] * sum_k x[m, k] * w[n, k]; x [M, K] f32, w [N, K] int8, out [M, N] f32.
# A tile of 4 weight rows x MR input rows keeps its sums in vector registers (AVX-512 where the
# compiler targets it, else AVX2); each int8 weight is loaded once per tile and converted in
# registers. Without either, plain C loops.
_SOURCE = r"""
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#define VECTOR 1
#endif
#if defined(__AVX512F__)
#define VW 16
#define MRMAX 4
typedef __m512 vf;
#define VZERO() _mm512_setzero_ps()
#define VLOADX(p) _mm512_loadu_ps(p)
#define VLOADW(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__)
#define VW 8
#define MRMAX 2
typedef __m256 vf;
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#define VZERO() _mm256_setzero_ps()
#define VLOADX(p) _mm256_loadu_ps(p)
#define VLOADW(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUM(v) hsum8(v)
#else
#define MRMAX 2
#endif

static inline __attribute__((always_inline)) void tile(
        const float *x, const int8_t *w, const float *scale, float *out, int64_t N, int64_t K,
        int64_t n0, int64_t m0, const int NR, const int MR) {
    float r[4][4] = {{0}};
    int64_t k = 0;
#ifdef VECTOR
    vf acc[4][4];
    for (int j = 0; j < NR; ++j)
        for (int i = 0; i < MR; ++i) acc[j][i] = VZERO();
    for (; k + VW <= K; k += VW) {
        /* Far software prefetch: without it one core reaches under half the read bandwidth. */
        if ((k & 63) == 0)
            for (int j = 0; j < NR; ++j)
                _mm_prefetch((const char *)(w + (n0 + j) * K + k + 4096), _MM_HINT_T0);
        vf wv[4];
        for (int j = 0; j < NR; ++j) wv[j] = VLOADW(w + (n0 + j) * K + k);
        for (int i = 0; i < MR; ++i) {
            vf xv = VLOADX(x + (m0 + i) * K + k);
            for (int j = 0; j < NR; ++j) acc[j][i] = VFMA(xv, wv[j], acc[j][i]);
        }
    }
    for (int j = 0; j < NR; ++j)
        for (int i = 0; i < MR; ++i) r[j][i] = VSUM(acc[j][i]);
#endif
    for (; k < K; ++k)
        for (int j = 0; j < NR; ++j)
            for (int i = 0; i < MR; ++i) r[j][i] += x[(m0 + i) * K + k] * (float)w[(n0 + j) * K + k];
    for (int j = 0; j < NR; ++j)
        for (int i = 0; i < MR; ++i) out[(m0 + i) * N + n0 + j] = r[j][i] * scale[n0 + j];
}

static void tile_4xm(const float *x, const int8_t *w, const float *s, float *o, int64_t N,
                     int64_t K, int64_t n0, int64_t m0) { tile(x, w, s, o, N, K, n0, m0, 4, MRMAX); }
static void tile_4x1(const float *x, const int8_t *w, const float *s, float *o, int64_t N,
                     int64_t K, int64_t n0, int64_t m0) { tile(x, w, s, o, N, K, n0, m0, 4, 1); }
static void tile_1x1(const float *x, const int8_t *w, const float *s, float *o, int64_t N,
                     int64_t K, int64_t n0, int64_t m0) { tile(x, w, s, o, N, K, n0, m0, 1, 1); }

void int8_rows_matmul(const float *x, const int8_t *w, const float *scale, float *out,
                      int64_t M, int64_t N, int64_t K, int threads) {
    int64_t blocks = (N + 3) / 4;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        int64_t n0 = b * 4;
        if (n0 + 4 <= N) {
            int64_t m0 = 0;
            for (; m0 + MRMAX <= M; m0 += MRMAX) tile_4xm(x, w, scale, out, N, K, n0, m0);
            for (; m0 < M; ++m0) tile_4x1(x, w, scale, out, N, K, n0, m0);
        } else {
            for (int64_t n = n0; n < N; ++n)
                for (int64_t m = 0; m < M; ++m) tile_1x1(x, w, scale, out, N, K, n, m);
        }
    }
}
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-shared", "-fPIC"]
_kernel: ctypes.CDLL | None = None
_tried = False


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    source = target.with_name(f"{target.stem}.{os.getpid()}.c")
    source.write_text(_SOURCE)
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.so")
    subprocess.run(
        [compiler, *_FLAGS, str(source), "-o", str(tmp)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    tmp.replace(target)  # atomic: a concurrent process sees the whole file or none


def load_int8_kernel() -> ctypes.CDLL | None:
    """The compiled kernel library (built once per process and cached on disk), or None."""
    global _kernel, _tried
    if _tried:
        return _kernel
    _tried = True
    key = hashlib.sha256(f"{_SOURCE}{_FLAGS}{_cpu_model()}".encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / f"tune-quant-kernels-{os.getuid()}"
    target = root / f"int8_rows_matmul-{key}.so"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            # Loading a shared object from a directory others can write would run their code.
            raise RuntimeError(f"{root} is not a private directory of this user")
        if not target.is_file():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        logger.warning("int8 decode kernel unavailable (%s); using a float matmul", detail)
        return None
    fn = lib.int8_rows_matmul
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    _kernel = lib
    return _kernel


def int8_kernel_matmul(
    kernel: ctypes.CDLL, x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``x @ (weight_int8 * scale[:, None]).T`` with the C kernel.

    Args:
        kernel: from ``load_int8_kernel``.
        x: [M, K] float on the CPU (M small: beyond a few hundred rows a float matmul of the
            dequantized weight is faster).
        weight_int8: [N, K] int8, contiguous, on the CPU.
        scale: [N] float32, contiguous.

    Returns:
        [M, N] float32.
    """
    M, K = x.shape
    N = weight_int8.shape[0]
    x = x.to(torch.float32).contiguous()
    out = torch.empty((M, N), dtype=torch.float32)
    kernel.int8_rows_matmul(
        x.data_ptr(), weight_int8.data_ptr(), scale.data_ptr(), out.data_ptr(),
        M, N, K, torch.get_num_threads(),
    )  # fmt: skip
    return out
