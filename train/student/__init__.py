"""The differentiable student: a frozen float32 torch copy of a GGUF model running the engine's
bounded-cache procedure (``model.Student``), one file per architecture."""
