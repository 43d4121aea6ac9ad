"""The differentiable student: a frozen torch copy of a GGUF model, computing in float32, that
runs the engine's bounded-cache procedure (``model.Student``), one file per architecture."""
