"""indexmem: on-device LLM inference on GGML with a KV cache that stays inside a fixed budget.

from indexmem import Engine
eng = Engine.load("smollm2-135m-instruct")
print(eng.generate("The capital of France is", max_tokens=16))
"""

from .errors import (
    BackendError,
    ContextOverflowError,
    GrammarError,
    IndexmemError,
    ModelFormatError,
    RegistryError,
    UnsupportedModelError,
)

__version__ = "0.1.0"
__all__ = [
    "Engine",
    "IndexmemError",
    "BackendError",
    "ModelFormatError",
    "UnsupportedModelError",
    "ContextOverflowError",
    "GrammarError",
    "RegistryError",
]


def __getattr__(name):
    # Engine pulls in the ggml bindings; importing indexmem alone (e.g. for errors) stays cheap.
    if name == "Engine":
        from .engine.api import Engine

        return Engine
    raise AttributeError(f"module 'indexmem' has no attribute {name!r}")
