"""Hardening tools: the fuzz harness for the files the engine reads (GGUF models, IndexMem
sidecars, session files; ``python -m indexmem.hardening.fuzz --help``) and the memory soak run
(``python -m indexmem.hardening.soak``)."""
