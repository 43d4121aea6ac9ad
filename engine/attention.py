"""Attention of a step's queries over the cached slots, by one of three paths, and the rule that
picks the fastest for each step.

- ``flash``: ``ggml_flash_attn_ext`` (llama.cpp's ``-fa on``): one pass per query and head with an
  online softmax; masked slots are skipped.
- ``matmul``: the matrix-product path of llama.cpp's ``-fa off``: KQ = K·Q, masked ``soft_max_ext``,
  then ·V. ``mul_mat`` needs V with the slots along its rows, and the cache keeps V one row per
  slot (as flash attention, the kernel, compaction, the memory write and sessions read it), so
  this path copies the visible V transposed, dequantized first when V is quantized. Storing V
  transposed as llama.cpp does would spare the copy (decode over 1,280 slots: 6.5 ms instead of
  23 ms), but that is still no faster than ``flash`` here, would make every compaction move and
  memory-write gather element-wise, and cannot hold a quantized V.
- ``kernel``: ``ggml_ops/attention_kernel.c``, a ggml custom op built for this CPU: each KV head's
  rows are read once for all the query heads that share it, 16 slots at a time, masked tiles
  skipped; prefill puts 16 query vectors across the SIMD lanes so no score needs a horizontal
  sum. Everything in f32 (no f16 accumulator, no rounding of the queries).

``flash`` and ``matmul`` give llama.cpp's logits bit for bit in the same setting; ``kernel``
agrees with a float64 reference to 1e-5 (``tests/test_attention_paths.py``,
``tests/test_attention_kernel.py``).

RULE, measured with ``python -m indexmem.bench.attention_paths`` on the project's 2-core AMD EPYC
(Zen 4, AVX-512), 1 thread, 2026-12-05, the machine busy with other jobs (every path built and
timed in turn in one process, best of 3-5). Milliseconds per step for all layers' attention;
"T x S": queries x cache slots, decode caches padded to 256 with 16 slots of the last block used,
prefill steps causal after S - T cached tokens:

    SmolLM2-135M (30 layers, 9 query / 3 KV heads of 64)   flash    matmul    kernel
    decode  1 x 256    f16                                  0.19      5.05      0.11
    decode  1 x 1280   f16  (B=1024's cache)                6.24     23.12      5.36
    decode  1 x 1280   q8_0                                 8.79     26.00      4.97
    decode  1 x 1280   q4_0                                16.58     28.43      4.47
    decode  1 x 1280   K q8_0 / V f16                       7.26     23.86      5.70
    decode  1 x 4352   f16                                 24.77     81.14     22.38
    decode  1 x 4352   q8_0                                34.01     92.65     19.54
    step    4 x 1280   f16                                 32.02     31.76     13.32
    step   16 x 1280   f16                                118.41     56.25     28.92
    step   16 x 1280   q8_0                               149.84     52.14     30.71
    step   64 x 1536   f16                                162.01    208.38    129.22
    step   64 x 1536   q8_0                               738.36    164.79    117.32
    chunk 512 x 512    f16                                313.46    589.06    162.35
    chunk 512 x 1536   f16  (B=1024's prefill)           1407.41   1504.80    698.96
    chunk 512 x 1536   q8_0                              5162.20   1164.30    781.63
    chunk 512 x 1536   q4_0                             10819.66   1218.78    697.87
    Gemma 3 270M (18 layers, 4 query / 1 KV head of 256)
    decode  1 x 1280   f16                                  4.36     18.17      4.06
    decode  1 x 1280   q8_0                                 6.14     20.73      2.62
    decode  1 x 4352   K q8_0 / V f16                      13.20     61.65     15.35
    chunk 512 x 1536   f16                                901.92    831.40    652.86
    chunk 512 x 1536   q8_0                              3516.00    816.51    666.94

The same for the kernel's AVX2 build (16 lanes as two 8-float registers), on a 2-core AMD EPYC
with AVX2 and no AVX-512, idle, 2026-12-06 (a slower CPU: compare paths within a row):

    SmolLM2-135M                                            flash    matmul    kernel
    decode  1 x 256    f16                                  0.82     13.52      0.31
    decode  1 x 1280   f16  (B=1024's cache)               27.81     53.56     10.31
    decode  1 x 1280   q8_0                                20.74     50.69     11.38
    decode  1 x 1280   q4_0                                50.63     79.98     11.85
    decode  1 x 4352   f16                                119.14    189.73     42.54
    step   16 x 1280   f16                                417.80    174.51     75.54
    step   16 x 1280   q8_0                               392.04    142.80     69.36
    chunk 512 x 512    f16                                631.57   1884.84    523.35
    chunk 512 x 1536   f16  (B=1024's prefill)           2911.00   5136.08   2234.12
    chunk 512 x 1536   q8_0                             13517.10   3518.87   2184.25

Since these tables the kernel's decode loop got faster: loops built per number of query vectors
per KV head, no hand prefetch then, the online softmax's max moved only by more than e^8 and its sum
kept per lane. ``python -m indexmem.bench.kernel_ab --base 7d76fc7`` (the two builds interleaved
in one process, best of 15), Intel Xeon with AVX-512, 2026-12-07, SmolLM2: decode over 1,280 slots
(1,040 used) f16 4.21 -> 2.22 ms, q8_0 4.51 -> 2.44; over 4,352 slots f16 20.1 -> 16.2, q8_0
19.9 -> 12.6; prefill chunks unchanged. Then its AVX2 prefill (P·V over 4 head dimensions at once,
loaded vectors kept in registers, mask tiles classified by words), the same script against
698379c on an AMD EPYC (Zen 3, AVX2), 2026-12-07, best of 5: chunk 512 x 1536 f16 1,309 -> 719 ms,
q8_0 1,159 -> 704. Then decode asks for the first line of each head's V row before a tile's
scores, against a01265e on that EPYC, best of 9: over 1,280 slots f16 3.60 -> 2.97 ms, q8_0
3.23 -> 2.91. The rule below stands (the kernel was already the fastest at those shapes).

Before the AVX2 build such a CPU ran the kernel's portable C, slower than flash attention for
prefill chunks; the portable build is never chosen now (on a CPU without either instruction set
ggml's own vector code is the safer bet).

So: the kernel wherever it has a SIMD build (types f32, f16, bf16, q8_0, q4_0; heads a multiple of
16 wide, of 32 when quantized, at most 256): it is the fastest at every shape measured but one
(Gemma's mixed q8_0/f16 decode over 4K slots on AVX-512, 16% behind flash; not worth a special
case). Without it (no C compiler, other types, no SIMD build): ``flash`` for decoding and for long chunks of an f16 cache;
``matmul`` for steps of 2 to MATMUL_F16_MAX_TOKENS queries over an f16 cache, and for every step
of 2 or more queries over a quantized K (whose flash attention dequantizes per query and head).
"""

from __future__ import annotations

import ctypes
import functools

from ..errors import BackendError, UnsupportedCacheTypeError
from ..ggml_ops.bindings import C, tensor_struct
from ..ggml_ops.kernel import Kernel, kernel_status, load_kernel
from ..ggml_ops.structs import GGML_OP_POOL_MAX, GGML_PREC_F32, GGMLType
from .cache_types import FLOAT_TYPES
from .registry import cache_dir

FLASH, MATMUL, KERNEL = "flash", "matmul", "kernel"
PATHS = (FLASH, MATMUL, KERNEL)
MODES = ("auto", *PATHS)
_SCALES: dict[float, ctypes.c_float] = {}  # the kernel's userdata: one live float per scale
# without the kernel, an f16 cache's steps of up to this many queries go through ``matmul`` (16:
# 56 ms against flash's 118; 64: 208 against 162; see RULE)
MATMUL_F16_MAX_TOKENS = 32


def attend(ctx, path: str, q, kview, vview, mask, kq_scale: float, with_lse: bool = False):
    """q [hd, H, T] (post-RoPE, f32); kview, vview [hd, n_kv, Hkv] of the cache; mask [n_kv, T]
    (0 or -inf). Returns the attention output [hd*H, T], and with ``with_lse`` also the
    log-sum-exp of every query's scaled, masked scores per head, [1, H*T] (head fastest)."""
    hd, n_head, n = tensor_struct(q).ne[0], tensor_struct(q).ne[1], tensor_struct(q).ne[2]
    qp = C.ggml_permute(ctx, q, 0, 2, 1, 3)  # [hd, T, H]
    lse = None
    if path == FLASH:
        cur = C.ggml_flash_attn_ext(ctx, qp, kview, vview, mask, kq_scale, 0.0, 0.0)
        C.ggml_prec_set_acc(cur, GGML_PREC_F32)  # [hd, H, T]
        if with_lse:  # flash attention keeps its running sums to itself: the scores once more
            kq = C.ggml_mul_mat(ctx, kview, qp)
            C.ggml_prec_set_acc(kq, GGML_PREC_F32)
            lse = scores_lse(ctx, kq, mask, kq_scale, C.ggml_soft_max_ext(ctx, kq, mask, kq_scale, 0.0))
    elif path == MATMUL:
        kq = C.ggml_mul_mat(ctx, kview, qp)  # [n_kv, T, H]
        C.ggml_prec_set_acc(kq, GGML_PREC_F32)
        probs = C.ggml_soft_max_ext(ctx, kq, mask, kq_scale, 0.0)
        if with_lse:
            lse = scores_lse(ctx, kq, mask, kq_scale, probs)
        kqv = C.ggml_mul_mat(ctx, slots_along_rows(ctx, vview), probs)  # [hd, T, H]
        cur = C.ggml_cont(ctx, C.ggml_permute(ctx, kqv, 0, 2, 1, 3))  # [hd, H, T]
    elif path == KERNEL:
        kernel = attention_kernel()
        if kernel is None:
            raise BackendError(f"the attention kernel is {kernel_status()}")
        scale = _SCALES.setdefault(float(kq_scale), ctypes.c_float(kq_scale))
        args = (ctypes.c_void_p * 4)(q, kview, vview, mask)
        width = hd + 1 if with_lse else hd  # the kernel appends each row's log-sum-exp
        cur = C.ggml_custom_4d(
            ctx, GGMLType.F32, width, n_head, n, 1, args, 4, kernel.attention, -1, ctypes.addressof(scale)
        )
        if with_lse:
            s = tensor_struct(cur)
            lse = C.ggml_cont(ctx, C.ggml_view_2d(ctx, cur, 1, n_head * n, s.nb[1], hd * s.nb[0]))
            cur = C.ggml_cont(ctx, C.ggml_view_3d(ctx, cur, hd, n_head, n, s.nb[1], s.nb[2], 0))
    else:
        raise ValueError(f"unknown attention path {path!r}")
    out = C.ggml_reshape_2d(ctx, cur, hd * n_head, n)
    return (out, lse) if with_lse else out


def scores_lse(ctx, kq, mask, kq_scale: float, probs):
    """log Σ exp(scale·kq + mask) per query and head from the scores kq [n_kv, T, H] and their
    softmax ``probs``: at the largest score s_max, p_max = exp(s_max − lse), so lse = s_max −
    log p_max (no exp over the row). [1, H*T], head fastest."""
    n_kv, n, n_head = (tensor_struct(kq).ne[i] for i in range(3))
    ms = tensor_struct(mask)
    visible = C.ggml_cast(ctx, C.ggml_view_2d(ctx, mask, n_kv, n, ms.nb[1], 0), GGMLType.F32)
    scores = C.ggml_add(ctx, C.ggml_scale(ctx, kq, kq_scale), visible)  # [n_kv, T, H]

    def row_max(x):
        return C.ggml_pool_1d(
            ctx, C.ggml_reshape_2d(ctx, x, n_kv, n * n_head), GGML_OP_POOL_MAX, n_kv, n_kv, 0
        )

    lse = C.ggml_sub(ctx, row_max(scores), C.ggml_log(ctx, row_max(probs)))  # [1, T*H], T fastest
    lse = C.ggml_cont(ctx, C.ggml_permute(ctx, C.ggml_reshape_3d(ctx, lse, 1, n, n_head), 0, 2, 1, 3))
    return C.ggml_reshape_2d(ctx, lse, 1, n_head * n)


def slots_along_rows(ctx, vview):
    """V [hd, n_kv, Hkv] copied to [n_kv, hd, Hkv] (contiguous), the layout ``mul_mat`` reads;
    a quantized V is dequantized to f32 first, row by row (its blocks cannot be transposed)."""
    s = tensor_struct(vview)
    if s.type not in FLOAT_TYPES:
        hd, n_kv, n_head_kv = s.ne[0], s.ne[1], s.ne[2]
        rows = C.ggml_view_2d(ctx, s.view_src, hd * n_head_kv, n_kv, s.nb[1], s.view_offs)
        rows = C.ggml_cast(ctx, rows, GGMLType.F32)  # [n_embd_kv, n_kv], contiguous
        f32 = tensor_struct(rows).nb[0]
        vview = C.ggml_view_3d(ctx, rows, hd, n_kv, n_head_kv, f32 * hd * n_head_kv, f32 * hd, 0)
    return C.ggml_cont(ctx, C.ggml_transpose(ctx, vview))


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"attention must be one of {', '.join(MODES)}, not {mode!r}")


def step_path(mode: str, n_tokens: int, types, head_dim: int, on_cpu: bool = True) -> str:
    """The attention path of a step of ``n_tokens`` queries over a cache of ``types``: ``mode``
    itself unless it is "auto", else the fastest for the step by the figures in RULE (the kernel
    only where the cache is in CPU memory)."""
    if mode != "auto":
        return mode
    kernel = attention_kernel() if on_cpu else None
    if kernel is not None and kernel.simd and kernel.supports(types.ggml_k, types.ggml_v, head_dim):
        return KERNEL
    if n_tokens == 1:
        return FLASH
    if types.ggml_k not in FLOAT_TYPES or n_tokens <= MATMUL_F16_MAX_TOKENS:
        return MATMUL
    return FLASH


def check_path(mode: str, types, head_dim: int, on_cpu: bool = True) -> None:
    """A path asked for by name must be able to run this cache (and "auto" builds the kernel now,
    at load, rather than in the first step)."""
    check_mode(mode)
    if mode == "auto" and on_cpu:
        attention_kernel()
    if mode == KERNEL:
        if not on_cpu:
            raise BackendError("attention='kernel' runs on the CPU only (this engine's cache is on a device)")
        kernel = attention_kernel()
        if kernel is None:
            raise BackendError(f"attention='kernel': the attention kernel is {kernel_status()}")
        if not kernel.supports(types.ggml_k, types.ggml_v, head_dim):
            raise UnsupportedCacheTypeError(
                f"attention='kernel' does not run K {types.k} / V {types.v} with {head_dim}-wide heads"
            )


@functools.cache
def attention_kernel() -> Kernel | None:
    """This machine's build of ``ggml_ops/attention_kernel.c`` (None: no compiler; see
    ``kernel_status``)."""
    return load_kernel(cache_dir() / "kernels")
