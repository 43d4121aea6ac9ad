"""Checkpoint (``weights.safetensors`` + ``config.json``) → IndexMem GGUF, sidecar or merged.

Everything is validated before a byte is written, and the output appears atomically: it is
written to a temporary file next to it, synced, then renamed; an interrupted conversion
(SIGINT/SIGTERM) removes its temporary file. The base model is only ever read.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..engine.loader import open_gguf
from ..engine.registry import sha256_of
from ..errors import ModelFormatError
from . import schema as S

DTYPES = ("f32", "f16", "q8_0")


def read_checkpoint(ckpt_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    ckpt_dir = Path(ckpt_dir)
    try:
        config = json.loads((ckpt_dir / "config.json").read_text())
        from safetensors.numpy import load_file

        weights = load_file(str(ckpt_dir / "weights.safetensors"))
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{ckpt_dir}: not a checkpoint folder ({exc.filename} missing)") from exc
    except (ValueError, json.JSONDecodeError, OSError) as exc:
        raise ModelFormatError(f"{ckpt_dir}: unreadable checkpoint ({exc})") from exc
    return config, weights


def _check_against_base(config: dict, base, base_path: Path) -> None:
    from ..engine.hparams import read_hparams

    hp = read_hparams(base)
    sizes = config["sizes"]
    pairs = [
        ("architecture", config.get("arch"), hp.arch),
        ("block_count", config["n_layer"], hp.n_layer),
        ("embedding_length", sizes["d_model"], hp.n_embd),
        ("head_count", sizes["n_head"], hp.n_head),
        ("key_length", sizes["d_head"], hp.head_dim),
    ]
    for what, ours, theirs in pairs:
        if ours != theirs:
            raise ModelFormatError(
                f"checkpoint {what} is {ours} but base model {base_path} has {theirs}: "
                f"the checkpoint was trained for another model"
            )
    if config.get("base_sha256") and config["base_sha256"] != sha256_of(base_path):
        raise ModelFormatError(
            f"base model {base_path} is not the file the checkpoint was trained on "
            f"(sha256 differs from {config['base_sha256'][:16]}…)"
        )


def _layer_arrays(config: dict, weights: dict) -> dict[str, np.ndarray]:
    expected = {
        S.tensor_name(il, suffix): param.format(il=il)
        for il in range(config["n_layer"])
        for suffix, (param, _) in S.LAYER_TENSORS.items()
    }
    missing = sorted(set(expected.values()) - set(weights))
    extra = sorted(set(weights) - set(expected.values()))
    if missing or extra:
        raise ModelFormatError(
            f"checkpoint tensors do not match the schema: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    shapes = S.expected_shapes(config["sizes"])
    arrays = {}
    for name, param in expected.items():
        arr = np.ascontiguousarray(weights[param], dtype=np.float32)
        want = shapes[name.split(".", 2)[2]][::-1]  # numpy order
        if tuple(arr.shape) != tuple(want):
            raise ModelFormatError(
                f"checkpoint tensor {param} has shape {list(arr.shape)}, expected {list(want)}"
            )
        arrays[name] = arr
    return arrays


def _add_metadata(w, config: dict, base_fingerprint: str, base_hp, pool_kernel: int | None) -> None:
    sizes = config["sizes"]
    layers = list(range(config["n_layer"]))
    w.add_uint32(S.K_VERSION, S.FORMAT_VERSION)
    w.add_string(S.K_BASE_ARCH, base_hp.arch)
    for key, value in (
        (S.K_BASE_LAYERS, base_hp.n_layer),
        (S.K_BASE_EMBD, base_hp.n_embd),
        (S.K_BASE_HEADS, base_hp.n_head),
        (S.K_BASE_HEADS_KV, base_hp.n_head_kv),
        (S.K_BASE_HEAD_DIM, base_hp.head_dim),
        (S.K_IDX_HEADS, sizes["n_idx_heads"]),
        (S.K_IDX_DIM, sizes["d_idx"]),
        (S.K_MEM_DIM, sizes["d_mem"]),
        (S.K_SINKS, config.get("fit", {}).get("sinks", 4)),
        (S.K_BUDGET, 1024),
        (S.K_TAU, 16),
    ):
        w.add_uint32(key, int(value))
    pool_kernel = pool_kernel if pool_kernel is not None else config.get("pool_kernel")
    # absent, the engine does not pool (files converted before the key stay as they were)
    if pool_kernel is not None:
        w.add_uint32(S.K_POOL, int(pool_kernel))
    w.add_string(S.K_BASE_FINGERPRINT, base_fingerprint)
    w.add_string(S.K_BASE_SHA256, config.get("base_sha256", ""))
    if config.get("indexer_from"):
        w.add_string(S.K_INDEXER_FROM, config["indexer_from"])
    w.add_array(S.K_LAYERS, layers)
    # the end-to-end memory fit records the layers whose memory earned its keep
    memory_layers = list(config.get("memory_layers", config.get("global_layers", layers)))
    if memory_layers:
        w.add_array(S.K_MEMORY_LAYERS, memory_layers)
    else:
        w.add_bool(S.K_MEM_SHUT, True)
    for key, value in (
        (S.K_MEM_LAMBDA, sizes["mem_lambda"]),
        (S.K_MEM_ETA, sizes["mem_eta"]),
        (S.K_MEM_EPS, sizes["mem_eps"]),
        (S.K_NORM_EPS, sizes["norm_eps"]),
    ):
        w.add_float32(key, float(value))
    # absent means "add": files of the paper's rule stay byte for byte what they were
    if sizes.get("mem_combine", "add") != "add":
        w.add_string(S.K_MEM_COMBINE, sizes["mem_combine"])


def _encode(arr: np.ndarray, dtype: str):
    """(ggml type, payload) of one tensor: matrices in ``dtype``, vectors always f32."""
    import gguf

    Q = gguf.GGMLQuantizationType
    is_matrix = arr.ndim == 2
    if dtype == "q8_0" and is_matrix and arr.shape[-1] % 32 == 0:
        return Q.Q8_0, gguf.quants.quantize(arr, Q.Q8_0)
    if dtype in ("f16", "q8_0") and is_matrix:
        return Q.F16, arr.astype(np.float16)
    return Q.F32, arr


def _add_tensor(w, name: str, arr: np.ndarray, dtype: str, as_metadata: bool) -> None:
    import gguf

    ggml_type, payload = _encode(arr, dtype)
    if not as_metadata:
        if ggml_type == gguf.GGMLQuantizationType.Q8_0:
            w.add_tensor(name, payload, raw_dtype=ggml_type)
        else:
            w.add_tensor(name, payload)
        return
    V = gguf.GGUFValueType
    flat = payload.reshape(-1)
    sub = {np.dtype(np.float32): V.FLOAT32, np.dtype(np.float16): V.UINT16, np.dtype(np.uint8): V.UINT8}
    if payload.dtype == np.float16:
        flat = flat.view(np.uint16)
    w.add_key_value(S.K_TENSOR + name, flat.tolist(), V.ARRAY, sub_type=sub[payload.dtype])
    w.add_uint32(S.K_TENSOR + name + ".type", int(ggml_type))
    w.add_array(S.K_TENSOR + name + ".shape", [int(d) for d in reversed(arr.shape)])


def _copy_base(w, base_path: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(base_path))
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(field.name, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(field.name, field.contents(), vtype)
    for t in reader.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)


def convert(
    ckpt_dir: Path,
    base_path: Path,
    out_path: Path,
    merge: bool = False,
    dtype: str = "f32",
    progress: bool = False,
    pool_kernel: int | None = None,
) -> Path:
    """``pool_kernel``: the engine's default max-pool width over the indexer's scores, stored in
    the file (None: the checkpoint's ``pool_kernel`` if its config has one, else not stored and
    the engine does not pool)."""
    import gguf

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if pool_kernel is not None and S.value_problem(S.K_POOL, pool_kernel):
        raise ValueError(S.value_problem(S.K_POOL, pool_kernel))
    out_path, base_path = Path(out_path), Path(base_path)
    if out_path.resolve() == base_path.resolve():
        raise ValueError("the output would overwrite the base model")
    config, weights = read_checkpoint(ckpt_dir)
    with open_gguf(base_path) as base:
        from ..engine.hparams import read_hparams

        _check_against_base(config, base, base_path)
        if any(k.startswith(S.PREFIX) for k in base.keys()):
            raise ModelFormatError(f"{base_path} already carries IndexMem modules")
        base_hp = read_hparams(base)
        base_fp = S.fingerprint(base.tensors.values())
    arrays = _layer_arrays(config, weights)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def abort(signum, frame):
        raise KeyboardInterrupt(f"conversion interrupted by signal {signum}")

    for sig in previous:
        signal.signal(sig, abort)
    try:
        with atomic_path(out_path) as tmp:
            w = gguf.GGUFWriter(str(tmp), base_hp.arch if merge else "indexmem")
            if merge:
                _copy_base(w, base_path)
            _add_metadata(w, config, base_fp, base_hp, pool_kernel)
            for name, arr in arrays.items():
                _add_tensor(w, name, arr, dtype, as_metadata=merge)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file(progress=progress)
            w.close()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return out_path
