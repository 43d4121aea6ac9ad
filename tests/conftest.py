import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import ARCH_DEFAULTS, write_tiny_model  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session", params=sorted(ARCH_DEFAULTS))
def tiny_model(request, tiny_model_dir):
    """(arch, path) of a tiny random-weight GGUF, for every supported architecture."""
    arch = request.param
    return arch, write_tiny_model(tiny_model_dir / f"tiny-{arch}.gguf", arch, seed=1)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dir):
    return write_tiny_model(tiny_model_dir / "tiny-llama-single.gguf", "llama", seed=2)


@pytest.fixture(scope="session")
def default_model_path():
    """The real default model (SmolLM2-135M-Instruct), fetched once through the registry."""
    from indexmem.engine.registry import DEFAULT_MODEL, resolve

    return resolve(DEFAULT_MODEL)


def match_llama_cpp() -> dict:
    """Engine options under which our weights sit in the same layout as in llama_cpp_reference:
    on CPUs with AMX llama.cpp is loaded without extra buffer types, so ours is too."""
    from indexmem.bench.llama_cpp_ref import amx_present

    return {"extra_bufts": not amx_present()}


def llama_cpp_reference(path, n_ctx=512, n_batch=512, flash_attn=True, **kw):
    """llama.cpp on ``path`` (flash attention unless told; ``type_k``/``type_v`` as ggml types)."""
    from indexmem.bench.llama_cpp_ref import open_llama_cpp

    return open_llama_cpp(
        path,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_threads=1,
        n_threads_batch=1,
        logits_all=True,
        flash_attn=flash_attn,
        verbose=False,
        **kw,
    )


# the engine's attention path that computes what llama.cpp computes with flash attention on / off
LLAMA_CPP_PATH = {True: "flash", False: "matmul"}
