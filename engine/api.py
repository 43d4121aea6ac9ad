"""The public engine: load a GGUF (or a registry name), evaluate, generate."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ContextOverflowError, UnsupportedModelError
from ..ggml_ops.backend import Backend
from .cache import KVCache
from .eviction import BudgetConfig, Evictor, budget_from_ratio
from .forward import ForwardRunner
from .generate import decode, prefill
from .hparams import read_hparams
from .loader import Weights, check_tensors, open_gguf
from .models import ARCHITECTURES
from .registry import resolve
from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder, Tokenizer

DEFAULT_N_CTX = 8192


class Engine:
    """A loaded model with its own KV cache. Calls are serialized by a lock."""

    def __init__(self, model_path: Path, n_threads: int = 1, n_ctx: int | None = None,
                 n_batch: int = 512, device: str = "cpu", budget_config: BudgetConfig | None = None):
        if n_batch < 1 or (n_ctx is not None and n_ctx < 1):
            raise ValueError(f"n_batch and n_ctx must be >= 1 (got {n_batch}, {n_ctx})")
        self.model_path = Path(model_path)
        self.budget_config = (budget_config or BudgetConfig()).validate()
        self._lock = threading.RLock()
        with open_gguf(self.model_path) as gguf:
            arch = gguf.get("general.architecture")
            cls = ARCHITECTURES.get(arch)
            if cls is None:
                raise UnsupportedModelError(
                    f"{self.model_path}: architecture {arch!r} is not supported "
                    f"(supported: {', '.join(sorted(ARCHITECTURES))})")
            self.hparams = read_hparams(gguf, cls.swa_default_pattern)
            self.model = cls(self.hparams)
            infos = check_tensors(gguf, self.model.tensor_specs())
            chat_template = gguf.get("tokenizer.chat_template")
            self.backend = Backend(device=device, n_threads=n_threads)
            self.model.weights = Weights(gguf, infos, self.backend)
        self.tokenizer = Tokenizer(self.model_path, chat_template)
        bounded = self.budget_config.bounded
        # a bounded cache does not grow with the context, so the model's full context is allowed
        self.n_ctx = int(n_ctx or (self.hparams.n_ctx_train if bounded
                                   else min(self.hparams.n_ctx_train, DEFAULT_N_CTX)))
        self.n_batch = n_batch
        self.cache, evictor = self._make_cache()
        self.runner = ForwardRunner(self.model, self.cache, self.backend, evictor)
        self._history: list[int] = []  # tokens whose K/V are in the cache, in order

    def _make_cache(self) -> tuple[KVCache, Evictor | None]:
        hp, cfg = self.hparams, self.budget_config
        windows = [self.model.layer_window(il) for il in range(hp.n_layer)]
        if not cfg.bounded or cfg.budget >= self.n_ctx:
            return KVCache(self.backend, hp.n_layer, hp.n_embd_kv, self.n_ctx), None
        # sliding-window layers that keep their window share one slot table; others own theirs
        swa_kept = [w > 0 and cfg.budget >= w for w in windows]
        first_swa = swa_kept.index(True) if any(swa_kept) else None
        layer_table = []
        for il in range(hp.n_layer):
            shared = swa_kept[il] and il != first_swa
            layer_table.append(layer_table[first_swa] if shared else max(layer_table, default=-1) + 1)
        capacity = min(self.n_ctx, cfg.budget + cfg.tau + self.n_batch)
        cache = KVCache(self.backend, hp.n_layer, hp.n_embd_kv, capacity, layer_table=layer_table)
        return cache, Evictor(cfg, cache, windows)

    @classmethod
    def load(cls, model: str = "smollm2-135m-instruct", n_threads: int = 1, n_ctx: int | None = None,
             progress=lambda msg: None, policy: str = "full", budget: int | None = None,
             evict_ratio: float | None = None, sinks: int = 4, window: int = 0, tau: int = 16,
             **options) -> "Engine":
        """``model``: a registry name (see ``indexmem.engine.registry.MODELS``) or a .gguf path.

        Bounded KV cache: ``policy`` (full, streaming, h2o, snapkv, tova, keydiff, random),
        ``budget`` tokens per layer (or ``evict_ratio`` of ``n_ctx``), ``sinks`` first tokens and
        ``window`` recent tokens always kept, compression every ``tau`` tokens past the budget.
        Policy parameters: ``seed`` (random), ``obs_window`` and ``pool_kernel`` (snapkv),
        ``recent_ratio`` (h2o: the share of the budget kept for the most recent tokens)."""
        engine_opts = {k: options.pop(k) for k in ("n_batch", "device") if k in options}
        policy_opts = {k: options.pop(k) for k in ("seed", "obs_window", "pool_kernel", "recent_ratio")
                       if k in options}
        if options:
            raise TypeError(f"unknown option(s) {sorted(options)}")
        if budget is not None and evict_ratio is not None:
            raise ValueError("give budget or evict_ratio, not both")
        if evict_ratio is not None:
            if n_ctx is None:
                raise ValueError("evict_ratio needs n_ctx (the context the ratio applies to)")
            budget = budget_from_ratio(n_ctx, evict_ratio)
        config = BudgetConfig(policy=policy, budget=budget, sinks=sinks, window=window, tau=tau,
                              params=policy_opts).validate()
        return cls(resolve(model, progress), n_threads=n_threads, n_ctx=n_ctx, budget_config=config,
                   **engine_opts)

    # --- text --------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_assistant=True)

    # --- evaluation --------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.cache.clear()
            if self.runner.evictor:
                self.runner.evictor.clear()
            self._history = []

    def logits(self, tokens) -> np.ndarray:
        """Logits [len(tokens), n_vocab] of every position of ``tokens``, from an empty cache."""
        tokens = self._check_tokens(tokens)
        with self._lock:
            self.reset()
            out = prefill(self.runner, tokens, 0, self.n_batch, all_logits=True)
            self._history = list(tokens)
            return out

    def token_nll(self, tokens) -> np.ndarray:
        """Negative log-likelihood of ``tokens[1:]``, each given the tokens before it as the
        cache holds them (with a bounded cache: compressed between prefill chunks)."""
        tokens = self._check_tokens(tokens)
        out = []
        with self._lock:
            self.reset()
            for start in range(0, len(tokens), self.n_batch):
                chunk = tokens[start: start + self.n_batch]
                logits, _ = self.runner.step(chunk, np.arange(start, start + len(chunk)), all_logits=True)
                logits = logits[: len(tokens) - 1 - start]  # the last token predicts nothing
                targets = tokens[start + 1: start + 1 + len(logits)]
                z = logits.astype(np.float64)
                z -= z.max(axis=1, keepdims=True)
                log_norm = np.log(np.exp(z).sum(axis=1))
                out.append(log_norm - z[np.arange(len(targets)), targets])
            self._history = list(tokens)
        return np.concatenate(out)

    def _check_tokens(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if arr.size == 0:
            raise ValueError("empty token sequence")
        if arr.min() < 0 or arr.max() >= self.hparams.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.hparams.n_vocab})")
        if arr.size > self.n_ctx:
            raise ContextOverflowError(f"{arr.size} tokens exceed the context of {self.n_ctx} "
                                       f"(load with a larger n_ctx)")
        return arr.astype(np.int32)

    def _feed_prompt(self, tokens: np.ndarray) -> np.ndarray:
        """Bring the cache to hold ``tokens``, reusing the longest cached prefix."""
        keep = 0
        for a, b in zip(self._history, tokens[:-1]):
            if a != b:
                break
            keep += 1
        if keep < len(self._history):
            if any(self.cache.tokens_evicted):
                self.reset()  # what was evicted depended on the dropped suffix: start over
                keep = 0
            else:
                self.cache.truncate(keep)
        logits = prefill(self.runner, tokens[keep:], keep, self.n_batch)
        self._history = list(tokens)
        return logits[-1]

    # --- generation --------------------------------------------------------------------
    def generate_tokens(self, prompt, max_tokens: int = 128, stop_at_eog: bool = True,
                        **sampling) -> Iterator[int]:
        """Token ids continuing ``prompt`` (text or ids). Sampling options: see SamplingParams."""
        tokens = self._check_tokens(self.tokenize(prompt) if isinstance(prompt, str) else prompt)
        sampler = Sampler(SamplingParams(**sampling))
        is_stop = self.tokenizer.is_eog if stop_at_eog else (lambda token: False)
        with self._lock:
            first = self._feed_prompt(tokens)
            yield from decode(self.runner, sampler, first, self._history, max_tokens, is_stop, self.n_ctx)

    def generate(self, prompt, max_tokens: int = 128, temperature: float = 0.0, seed: int | None = None,
                 stream: bool = False, **sampling):
        """Text continuation of ``prompt`` (text or token ids): a str, or with ``stream=True``
        an iterator of text pieces (never splitting a UTF-8 character)."""
        it = self.generate_tokens(prompt, max_tokens, temperature=temperature, seed=seed, **sampling)
        pieces = self._stream_text(it)
        return pieces if stream else "".join(pieces)

    def _stream_text(self, token_iter) -> Iterator[str]:
        dec = StreamDecoder(self.tokenizer)
        for token in token_iter:
            piece = dec.feed(token)
            if piece:
                yield piece
        tail = dec.flush()
        if tail:
            yield tail

    # --- introspection -----------------------------------------------------------------
    def stats(self) -> dict:
        return {
            "model_path": str(self.model_path),
            "arch": self.hparams.arch,
            "device": self.backend.device_name,
            "n_ctx": self.cache.capacity,
            "tokens_seen": self.cache.tokens_seen,
            "tokens_cached": self.cache.tokens_cached(),
            "tokens_evicted": list(self.cache.tokens_evicted),
            "policy": self.budget_config.policy,
            "budget": self.budget_config.budget if self.runner.evictor else None,
            "cache_buffers": {"kv": self.cache.nbytes},
            "kv_bytes": self.cache.nbytes,
            "weights_bytes": self.model.weights.nbytes,
            "compute_bytes": self.backend.compute_buffer_bytes(),
            "graphs_built": self.runner.graphs_built,
        }

    def close(self) -> None:
        with self._lock:
            self.runner.invalidate()
            self.cache.close()
            self.model.weights.close()
            self.backend.close()
