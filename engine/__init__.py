"""The inference engine: GGUF loading, per-architecture graphs, KV cache, sampling, generation."""
