"""ctypes bindings over the ggml libraries of llama-cpp-python, and IndexMem's ggml ops.
Nothing model-specific lives here."""
