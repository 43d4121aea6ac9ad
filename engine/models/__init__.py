"""One file per architecture; ARCHITECTURES maps general.architecture to its class."""

from .gemma3 import Gemma3Model
from .llama import LlamaModel
from .qwen2 import Qwen2Model
from .qwen3 import Qwen3Model

ARCHITECTURES = {cls.arch: cls for cls in (LlamaModel, Qwen2Model, Qwen3Model, Gemma3Model)}
