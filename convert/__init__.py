"""GGUF tools: inspection now; IndexMem checkpoint → GGUF conversion and its schema later."""
