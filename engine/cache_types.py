"""K/V cache element types: the names users give (llama.cpp's ``--cache-type-k/-v``), and the
checks that a type can run for this model on this backend, made before anything is allocated.

Every type here survives the cache's own row moves bit for bit: compaction gathers rows with
``get_rows`` (dequantized to f32) and scatters them back with ``set_rows`` (requantized), and for
these formats requantizing a dequantized row gives the same bytes (``tests/test_cache_types.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedCacheTypeError
from ..ggml_ops.bindings import C
from ..ggml_ops.graph import new_context
from ..ggml_ops.structs import GGMLType

# the types llama.cpp accepts for its K/V cache (common/arg.cpp), by the names it uses
CACHE_TYPES = {
    "f32": GGMLType.F32,
    "f16": GGMLType.F16,
    "bf16": GGMLType.BF16,
    "q8_0": GGMLType.Q8_0,
    "q4_0": GGMLType.Q4_0,
    "q4_1": GGMLType.Q4_1,
    "iq4_nl": GGMLType.IQ4_NL,
    "q5_0": GGMLType.Q5_0,
    "q5_1": GGMLType.Q5_1,
}
FLOAT_TYPES = frozenset({GGMLType.F32, GGMLType.F16, GGMLType.BF16})


@dataclass(frozen=True)
class CacheTypes:
    k: str = "f16"
    v: str = "f16"

    @property
    def ggml_k(self) -> int:
        return CACHE_TYPES[self.k]

    @property
    def ggml_v(self) -> int:
        return CACHE_TYPES[self.v]

    @property
    def quantized(self) -> bool:
        return self.ggml_k not in FLOAT_TYPES or self.ggml_v not in FLOAT_TYPES

    def as_dict(self) -> dict[str, str]:
        return {"k": self.k, "v": self.v}


def parse_cache_types(k: str | None, v: str | None) -> CacheTypes:
    """Names → CacheTypes (None: f16), refusing names that are not cache types at all."""
    names = []
    for which, name in (("K", k), ("V", v)):
        name = "f16" if name is None else str(name).lower()
        if name not in CACHE_TYPES:
            raise UnsupportedCacheTypeError(
                f"{which} cache type {name!r} is not one of {', '.join(CACHE_TYPES)}"
            )
        names.append(name)
    return CacheTypes(*names)


def check_for_model(types: CacheTypes, head_dim: int) -> None:
    """A quantized row is whole blocks, and attention views one head at a time: the head size
    must be a multiple of the type's block (llama.cpp would abort on an assertion here)."""
    for which, name, t in (("K", types.k, types.ggml_k), ("V", types.v, types.ggml_v)):
        block = C.ggml_blck_size(t)
        if head_dim % block:
            raise UnsupportedCacheTypeError(
                f"{which} cache type {name} stores blocks of {block} values, but this model's "
                f"attention heads have {head_dim}: use f16, bf16 or f32"
            )


def check_on_device(types: CacheTypes, device, head_dim: int, n_head: int, n_head_kv: int) -> None:
    """Ask the backend whether it runs every op the cache needs with these types: writes
    (set_rows), gathers (get_rows), dequantizing copies and back (context shift), both ggml
    attention paths (flash attention, K·Q product). Built in a tensor-less context: nothing is
    allocated."""
    from .cache import head_view  # cache.py imports this module

    ctx = new_context(32)
    try:
        f32, width = GGMLType.F32, head_dim * n_head_kv
        rows, rows32 = C.ggml_new_tensor_1d(ctx, GGMLType.I64, 2), C.ggml_new_tensor_1d(ctx, GGMLType.I32, 2)
        q = C.ggml_new_tensor_3d(ctx, f32, head_dim, 2, n_head)  # [hd, T, H], as attention permutes it
        mask = C.ggml_new_tensor_2d(ctx, GGMLType.F16, 256, 2)
        views, ops = {}, []
        for which, t in (("K", types.ggml_k), ("V", types.ggml_v)):
            cache = C.ggml_new_tensor_2d(ctx, t, width, 256)
            src = C.ggml_new_tensor_2d(ctx, f32, width, 2)
            first_rows = C.ggml_view_2d(ctx, cache, width, 2, C.ggml_row_size(t, width), 0)
            ops += [
                (which, "set_rows", C.ggml_set_rows(ctx, cache, src, rows)),
                (which, "get_rows", C.ggml_get_rows(ctx, cache, rows32)),
                (which, "copy to f32", C.ggml_cast(ctx, cache, f32)),
                (which, "copy from f32", C.ggml_cpy(ctx, src, first_rows)),
            ]
            views[which] = head_view(ctx, cache, head_dim, 256)
        ops.append(("K", "K·Q product", C.ggml_mul_mat(ctx, views["K"], q)))
        flash = C.ggml_flash_attn_ext(ctx, q, views["K"], views["V"], mask, 1.0, 0.0, 0.0)
        ops.append(("K/V", "flash attention", flash))
        missing = [
            f"{what} ({which})" for which, what, op in ops if not C.ggml_backend_dev_supports_op(device, op)
        ]
        if missing:
            raise UnsupportedCacheTypeError(
                f"cache types K {types.k} / V {types.v}: the backend cannot run {', '.join(missing)}"
            )
    finally:
        C.ggml_free(ctx)
