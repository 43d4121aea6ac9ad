"""The public engine: load a GGUF (or a registry name), evaluate, generate."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..convert.reader import load_indexmem
from ..convert.schema import fingerprint
from ..errors import ContextOverflowError, IndexmemError, UnsupportedModelError
from ..ggml_ops.backend import Backend
from ..ggml_ops.bindings import C, tensor_struct
from . import session
from .attention import check_mode, check_path
from .cache import KVCache
from .cache_types import CacheTypes, check_for_model, check_on_device, parse_cache_types
from .eviction import BudgetConfig, Evictor, budget_from_ratio
from .forward import ForwardRunner
from .generate import Feeder
from .grammar import GrammarSampler, grammar_text
from .hparams import read_hparams
from .indexmem import IndexMemModules, IndexMemState, find_indexmem
from .loader import Weights, check_tensors, open_gguf
from .models import ARCHITECTURES
from .policies import POLICIES
from .registry import resolve
from .sampler_chain import SamplerChain
from .sampling import GREEDY, SamplingParams, chat_defaults, gguf_sampling
from .tokenizer import StreamDecoder, Tokenizer
from .vocab_prefixes import VocabPrefixes

DEFAULT_N_CTX = 8192
# Recent tokens the indexmem policy always keeps unless told otherwise. A token is judged by the
# queries that came after it, so the newest ones would lose on too few queries. Measured on
# Python source (SmolLM2, 1,024 tokens, evict 0.9, chunks of 64): perplexity ratio to full KV
# 1.57 without a window, 1.27 with 16, 1.23 with 32, 1.18 with 64.
INDEXMEM_WINDOW = 64


class Engine:
    """A loaded model with its own KV cache. Calls are serialized by a lock."""

    def __init__(
        self,
        model_path: Path,
        n_threads: int = 1,
        n_ctx: int | None = None,
        n_batch: int = 512,
        device: str = "cpu",
        budget_config: BudgetConfig | None = None,
        indexmem_path: Path | None = None,
        memory: bool = False,
        extra_bufts: bool = True,
        recall: str | None = None,
        recall_per_step: int | None = None,
        recall_at: str = "every_chunk",
        recall_score: str = "index",
        cache_types: CacheTypes = CacheTypes(),
        attention: str = "auto",
    ):
        if n_batch < 1 or (n_ctx is not None and n_ctx < 1):
            raise ValueError(f"n_batch and n_ctx must be >= 1 (got {n_batch}, {n_ctx})")
        check_mode(attention)
        self.cache_types = cache_types
        self.attention = attention
        self.model_path = Path(model_path)
        self.budget_config = (budget_config or BudgetConfig()).validate()
        needs_modules = memory or POLICIES[self.budget_config.policy].needs_index
        if needs_modules and indexmem_path is None:
            raise ValueError(
                f"policy {self.budget_config.policy!r} with memory={memory} needs IndexMem "
                f"modules: pass indexmem='file.gguf' (or use a registry model)"
            )
        self.indexmem_path = Path(indexmem_path) if indexmem_path else None
        self.memory = bool(memory)
        if recall is not None and (recall not in ("disk", "ram") or self.budget_config.policy != "indexmem"):
            raise ValueError(
                f"recall={recall!r}: the recall tier is 'disk' or 'ram', and needs the indexmem policy "
                f"(its indexer scores the stored tokens), not {self.budget_config.policy!r}"
            )
        self.recall_where = recall
        if recall_per_step is not None and (recall is None or recall_per_step < 1):
            raise ValueError(
                f"recall_per_step={recall_per_step}: a positive count of tokens, with recall='disk' or 'ram'"
            )
        self.recall_per_step = recall_per_step
        from .recall import check_recall_options

        check_recall_options(recall_at, recall_score)
        if recall is None and (recall_at, recall_score) != ("every_chunk", "index"):
            raise ValueError(
                f"recall_at={recall_at!r}, recall_score={recall_score!r} need recall='disk' or 'ram'"
            )
        self.recall_at, self.recall_score = recall_at, recall_score
        # read and pair-check the IndexMem file before any compute or allocation
        imf = load_indexmem(self.indexmem_path, base_path=self.model_path) if self.indexmem_path else None
        self._lock = threading.RLock()
        with open_gguf(self.model_path) as gguf:
            arch = gguf.get("general.architecture")
            cls = ARCHITECTURES.get(arch)
            if cls is None:
                raise UnsupportedModelError(
                    f"{self.model_path}: architecture {arch!r} is not supported "
                    f"(supported: {', '.join(sorted(ARCHITECTURES))})"
                )
            self.hparams = read_hparams(gguf, cls.swa_default_pattern)
            check_for_model(cache_types, self.hparams.head_dim)
            self.model = cls(self.hparams)
            infos = check_tensors(gguf, self.model.tensor_specs())
            self.model_fingerprint = fingerprint(gguf.tensors.values())
            chat_template = gguf.get("tokenizer.chat_template")
            self.model_sampling = gguf_sampling(gguf.get)  # general.sampling.* the file sets
            self.backend = Backend(device=device, n_threads=n_threads)
            self._check_cache_device()
            self.model.weights = Weights(gguf, infos, self.backend, extra_bufts)
        self.indexmem = IndexMemModules(imf, self.backend, self.hparams.n_head_kv) if imf else None
        self.indexmem_fingerprint = self.indexmem.fingerprint if self.indexmem else None
        self.tokenizer = Tokenizer(self.model_path, chat_template, arch)
        # what indexmem-chat and indexmem-serve sample with unless told otherwise
        self.sampling_defaults = chat_defaults(self.model_sampling)
        bounded = self.budget_config.bounded
        # a bounded cache does not grow with the context, so the model's full context is allowed
        self.n_ctx = int(
            n_ctx or (self.hparams.n_ctx_train if bounded else min(self.hparams.n_ctx_train, DEFAULT_N_CTX))
        )
        self.n_batch = n_batch
        self.cache, evictor = self._make_cache()
        self.runner = ForwardRunner(self.model, self.cache, self.backend, evictor, attention)
        self.recall = self._make_recall(evictor) if recall else None
        self.feeder = Feeder(self.runner, n_batch, self.n_ctx, self.budget_config.sinks)
        self._cancel: threading.Event | None = None  # of the generation running now
        self._vocab_prefixes: VocabPrefixes | None = None

    def _check_cache_device(self) -> None:
        """Cache types the backend cannot run, or an attention path it cannot take, are refused
        before any buffer is allocated."""
        hp = self.hparams
        try:
            device = C.ggml_backend_get_device(self.backend.main)
            check_on_device(self.cache_types, device, hp.head_dim, hp.n_head, hp.n_head_kv)
            check_path(self.attention, self.cache_types, hp.head_dim, self.backend.main == self.backend.cpu)
        except IndexmemError:
            self.backend.close()
            raise

    def _make_cache(self) -> tuple[KVCache, Evictor | None]:
        hp, cfg = self.hparams, self.budget_config
        windows = [self.model.layer_window(il) for il in range(hp.n_layer)]
        if not cfg.bounded or cfg.budget >= self.n_ctx:
            return KVCache(self.backend, hp.n_layer, hp.n_embd_kv, self.n_ctx, self.cache_types), None
        # sliding-window layers that keep their window share one slot table; others own theirs
        swa_kept = [w > 0 and cfg.budget >= w for w in windows]
        first_swa = swa_kept.index(True) if any(swa_kept) else None
        layer_table = []
        for il in range(hp.n_layer):
            shared = swa_kept[il] and il != first_swa
            layer_table.append(layer_table[first_swa] if shared else max(layer_table, default=-1) + 1)
        capacity = min(self.n_ctx, cfg.budget + cfg.tau + self.n_batch)
        cache = KVCache(self.backend, hp.n_layer, hp.n_embd_kv, capacity, self.cache_types, layer_table)
        evictor = Evictor(cfg, cache, windows)
        if self.indexmem is not None and (evictor.policy.needs_index or self.memory):
            self._attach_indexmem(cache, evictor)
        return cache, evictor

    def _attach_indexmem(self, cache: KVCache, evictor: Evictor) -> None:
        """Index-key cache for the layers the indexer decides, latent memory for the memory
        layers; both in one buffer sized by the cache capacity."""
        modules = self.indexmem
        index_layers = []
        if evictor.policy.needs_index:
            index_layers = [il for il, rule in enumerate(evictor.rules) if rule.by_policy]
            missing = sorted(set(index_layers) - set(modules.layers))
            if missing:
                raise UnsupportedModelError(f"{modules.path}: no indexer for layer(s) {missing}")
        memory_layers = modules.memory_layers if self.memory else []
        state = IndexMemState(modules, self.backend, cache.capacity, index_layers, memory_layers)
        for il in index_layers:
            cache.layers[il].extra = (state.keys[il],)
        cache.record_evicted = set(memory_layers)
        cache.indexmem = state

    def _make_recall(self, evictor: Evictor | None):
        """The recall tier over the layers the indexer decides (engine/recall.py)."""
        from .recall import Recall
        from .recall_store import RecallStore

        state = self.cache.indexmem
        if evictor is None or state is None or not state.index_layers:
            raise ValueError("recall needs a bounded cache with the indexmem policy")
        layer = self.cache.layers[0]
        row_bytes = (tensor_struct(layer.k).nb[1], tensor_struct(layer.v).nb[1])
        store = RecallStore(state.index_layers, self.indexmem.sizes["d_idx"], row_bytes, self.recall_where)
        pool = self.budget_config.params.get("pool_kernel", 1)
        from .recall_step import default_per_step

        per_step = (
            self.recall_per_step if self.recall_per_step is not None else default_per_step(self.recall_at)
        )
        hp = self.hparams
        recall = Recall(
            store,
            pool_kernel=pool,
            exact_memory=self.indexmem.mem_lambda == 1.0,
            at=self.recall_at,
            score=self.recall_score,
            key_format=(self.cache_types.ggml_k, hp.n_head_kv, hp.head_dim, self.model.qk_logit_scale()),
            per_step=per_step,
        )
        evictor.recall = self.runner.recall = recall
        return recall

    @classmethod
    def load(
        cls,
        model: str = "smollm2-135m-instruct",
        n_threads: int = 1,
        n_ctx: int | None = None,
        progress=lambda msg: None,
        policy: str | None = None,
        budget: int | None = None,
        evict_ratio: float | None = None,
        sinks: int = 4,
        window: int | None = None,
        tau: int | None = None,
        indexmem=None,
        memory: bool | None = None,
        recall: str | None = None,
        recall_per_step: int | None = None,
        recall_at: str = "every_chunk",
        recall_score: str = "index",
        cache_type_k: str = "f16",
        cache_type_v: str = "f16",
        attention: str = "auto",
        **options,
    ) -> Engine:
        """``model``: a registry name (see ``indexmem.engine.registry.MODELS``) or a .gguf path.

        IndexMem: ``indexmem`` is a sidecar GGUF, or None to use the modules merged into the
        model file or shipped with the package for a registry model (False: none). With modules
        the default policy is ``indexmem`` with the sidecar's budget. ``memory=True`` adds the
        latent memory (behind any policy), ``memory=False`` leaves it out. ``None`` (default):
        on with the ``indexmem`` policy and a registry model's shipped sidecar when the model's
        entry says so (``gemma3-270m``, where the memory helped in our benchmarks), else off
        (on SmolLM2 it costs quality: README, "IndexMem results").

        Bounded KV cache: ``policy`` (full, indexmem, streaming, h2o, snapkv, tova, keydiff,
        random), ``budget`` tokens per layer (or ``evict_ratio`` of ``n_ctx``), ``sinks`` first
        tokens and ``window`` recent tokens always kept (default: 0, or with ``indexmem``
        INDEXMEM_WINDOW, at most half the budget), compression every ``tau`` tokens past the
        budget. Policy parameters: ``gamma`` (indexmem), ``pool_kernel`` (indexmem: default the
        IndexMem file's, else 1; snapkv),
        ``seed`` (random), ``obs_window`` (snapkv), ``recent_ratio`` (h2o: the budget share kept for the most
        recent tokens). ``recall`` ("disk" or "ram", with the indexmem policy): evicted tokens are
        stored and brought back when the indexer's later queries want them (engine/recall.py),
        at most ``recall_per_step`` tokens per layer at a compression (default ``recall.PER_STEP``),
        at every compression (``recall_at="every_chunk"``) or only at the one after a prompt's
        last chunk and in decoding (``"prompt_end"``); ranked against the cached tokens by the
        indexer (``recall_score="index"``) or, at a prompt's end, by the attention the prompt's
        last queries give every cached and stored token (``"attention"``). With
        ``recall_at="each_step"`` (and ``recall_score="attention"``) each step from a prompt's
        last token on swaps in the stored tokens its own queries attend (engine/recall_step.py,
        at most ``recall_per_step`` per layer, default ``recall_step.STEP_PER_STEP``) and runs again.
        ``extra_bufts=False`` keeps quantized weights in their file layout
        instead of the CPU's repacked one (to compare with llama.cpp loaded the same way)..

        K/V cache: ``cache_type_k``, ``cache_type_v`` (llama.cpp's names: f16, the default, bf16,
        f32, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1); a type this model or backend cannot run raises
        UnsupportedCacheTypeError before anything is allocated. ``attention``: "auto" (the faster
        path for each step, see ``engine/attention.py``), or always "flash" or "matmul"
        (llama.cpp's ``-fa on`` / ``-fa off``)."""
        engine_opts = {k: options.pop(k) for k in ("n_batch", "device", "extra_bufts") if k in options}
        policy_opts = {
            k: options.pop(k)
            for k in ("seed", "obs_window", "pool_kernel", "recent_ratio", "gamma")
            if k in options
        }
        if options:
            raise TypeError(f"unknown option(s) {sorted(options)}")
        cache_types = parse_cache_types(cache_type_k, cache_type_v)
        check_mode(attention)
        if budget is not None and evict_ratio is not None:
            raise ValueError("give budget or evict_ratio, not both")
        if evict_ratio is not None:
            if n_ctx is None:
                raise ValueError("evict_ratio needs n_ctx (the context the ratio applies to)")
            budget = budget_from_ratio(n_ctx, evict_ratio)
        # everything checkable is checked before a model is read or downloaded; an indexmem
        # budget may still come from the sidecar, so a stand-in that passes is used for it
        stand_in = (
            budget if budget is not None or policy not in (None, "indexmem") else sinks + (window or 0) + 1
        )
        BudgetConfig(
            policy=policy or "full",
            budget=stand_in,
            sinks=sinks,
            window=window or 0,
            tau=16 if tau is None else tau,
            params=policy_opts,
        ).validate()
        model_path = resolve(model, progress)
        indexmem_path, defaults = find_indexmem(model, model_path, indexmem)
        if policy is None:
            policy = "indexmem" if indexmem_path else "full"
        if policy == "indexmem" and budget is None:
            budget = defaults.get("budget")
        if memory is None:
            memory = policy == "indexmem" and bool(defaults.get("memory"))
        if policy == "indexmem" and "pool_kernel" in defaults:
            policy_opts.setdefault("pool_kernel", defaults["pool_kernel"])
        if window is None:
            window = (
                min(INDEXMEM_WINDOW, max(0, (budget - sinks) // 2)) if policy == "indexmem" and budget else 0
            )
        config = BudgetConfig(
            policy=policy,
            budget=budget,
            sinks=sinks,
            window=window,
            tau=tau if tau is not None else defaults.get("tau", 16),
            params=policy_opts,
        ).validate()
        return cls(
            model_path,
            n_threads=n_threads,
            n_ctx=n_ctx,
            budget_config=config,
            indexmem_path=indexmem_path,
            memory=memory,
            recall=recall,
            recall_per_step=recall_per_step,
            recall_at=recall_at,
            recall_score=recall_score,
            cache_types=cache_types,
            attention=attention,
            **engine_opts,
        )

    # --- text --------------------------------------------------------------------------
    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special=add_special)

    def detokenize(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def chat_prompt(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_assistant=True)

    # --- evaluation --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the conversation: empty cache, index keys, memory and policy state."""
        with self._lock:
            self.cache.clear()
            if self.cache.indexmem is not None:
                self.cache.indexmem.clear()
            if self.runner.evictor:
                self.runner.evictor.clear()
            if self.recall is not None:
                self.recall.clear()
            self.feeder.reset()

    def logits(self, tokens) -> np.ndarray:
        """Logits [len(tokens), n_vocab] of every position of ``tokens``, from an empty cache."""
        tokens = self._check_tokens(tokens, self.n_ctx)
        with self._lock:
            self.reset()
            return self.feeder.feed(tokens, all_logits=True)

    def token_nll(self, tokens, on_chunk=None) -> np.ndarray:
        """Negative log-likelihood of ``tokens[1:]``, each given the tokens before it as the
        cache holds them (with a bounded cache: compressed between prefill chunks). A bounded
        cache takes texts of any length (see :mod:`context_shift`)."""
        tokens = self._check_tokens(tokens, None if self.feeder.unbounded else self.n_ctx)
        out = []
        with self._lock:
            self.reset()
            for start in range(0, len(tokens), self.n_batch):
                logits = self.feeder.feed(tokens[start : start + self.n_batch], all_logits=True)
                logits = logits[: len(tokens) - 1 - start]  # the last token predicts nothing
                targets = tokens[start + 1 : start + 1 + len(logits)]
                z = logits.astype(np.float64)
                z -= z.max(axis=1, keepdims=True)
                log_norm = np.log(np.exp(z).sum(axis=1))
                out.append(log_norm - z[np.arange(len(targets)), targets])
                if on_chunk:
                    on_chunk(len(logits))
        return np.concatenate(out)

    def _check_tokens(self, tokens, limit: int | None) -> np.ndarray:
        arr = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if arr.size == 0:
            raise ValueError("empty token sequence")
        if arr.min() < 0 or arr.max() >= self.hparams.n_vocab:
            raise ValueError(f"token ids must be in [0, {self.hparams.n_vocab})")
        if limit is not None and arr.size > limit:
            raise ContextOverflowError(
                f"{arr.size} tokens exceed the context of {limit} "
                f"(load with a larger n_ctx, or a bounded cache)"
            )
        return arr.astype(np.int32)

    def _feed_prompt(self, tokens: np.ndarray, cancel) -> np.ndarray | None:
        """Bring the cache to hold ``tokens``, reusing the longest cached prefix."""
        history = self.feeder.history
        keep = min(history.common_prefix(tokens), len(tokens) - 1)
        if keep < len(history):
            if keep < history.anchor_len or any(self.cache.tokens_evicted):
                self.reset()  # what was evicted depended on the dropped suffix: start over
                keep = 0
            else:
                self.runner.flush()
                self.cache.truncate(keep - self.cache.position_shift)
                history.truncate(keep)
        self.feeder.unfed = []
        return self.feeder.feed(tokens[keep:], cancel=cancel)

    def append(self, tokens) -> None:
        """Feed ``tokens`` (ids, or text tokenized without BOS) after the conversation the
        cache holds, without generating."""
        if isinstance(tokens, str):
            tokens = self.tokenize(tokens, add_special=False)
        tokens = self._check_tokens(tokens, None)
        with self._lock:
            self.feeder.feed(self._take_unfed(tokens))

    def _take_unfed(self, tokens: np.ndarray) -> np.ndarray:
        out = np.concatenate([np.asarray(self.feeder.unfed, dtype=np.int32), tokens])
        self.feeder.unfed = []
        return out

    # --- generation --------------------------------------------------------------------
    def generate_tokens(
        self,
        prompt,
        max_tokens: int = 128,
        stop_at_eog: bool = True,
        append: bool = False,
        cancel: threading.Event | None = None,
        sampling: SamplingParams | None = None,
        grammar: str | None = None,
        json_schema=None,
        **overrides,
    ) -> Iterator[int]:
        """Token ids continuing ``prompt`` (text or ids). The prompt is the whole conversation
        (what the cache already holds of it is reused), or with ``append=True`` only its next
        part. Generation ends at an end-of-generation token, ``max_tokens``, the end of a full
        cache's context, or when ``cancel`` (or :meth:`cancel`) is set.

        Sampling: ``sampling`` (a SamplingParams; default greedy, and
        ``engine.sampling_defaults`` samples as indexmem-chat does) with any of its fields
        overridden by keyword (``temperature=0.7, seed=1``). ``grammar`` (GBNF text) or
        ``json_schema`` (a dict) constrains the reply; a bad one raises GrammarError here,
        before anything is fed."""
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        params = (sampling or GREEDY).with_(**overrides)
        text = grammar_text(grammar if grammar is not None else params.grammar, json_schema)
        if isinstance(prompt, str):
            prompt = self.tokenize(prompt, add_special=not append)
        tokens = self._check_tokens(prompt, None if self.feeder.unbounded else self.n_ctx)
        constraint = (
            GrammarSampler(text, self.tokenizer.vocab, self.model_path, self._prefixes()) if text else None
        )
        return self._generate(tokens, max_tokens, stop_at_eog, append, cancel, params, constraint)

    def _prefixes(self) -> VocabPrefixes:
        """The vocabulary's spelling index for grammars, built at the first grammar."""
        if self._vocab_prefixes is None:
            self._vocab_prefixes = VocabPrefixes(self.tokenizer, self._n_sampled)
        return self._vocab_prefixes

    @property
    def _n_sampled(self) -> int:
        """Tokens the sampler chooses among: those with both a logit and a vocabulary entry."""
        return min(self.hparams.n_vocab, self.tokenizer.n_vocab)

    def _generate(self, tokens, max_tokens, stop_at_eog, append, cancel, params, constraint):
        is_stop = self.tokenizer.is_eog if stop_at_eog else (lambda token: False)
        cancel = cancel or threading.Event()
        chain = None
        with self._lock:
            self._cancel = cancel
            try:
                first = (
                    self.feeder.feed(self._take_unfed(tokens), cancel=cancel)
                    if append
                    else self._feed_prompt(tokens, cancel)
                )
                if first is not None:
                    recent = self.feeder.history.recent(params.history_needed)
                    chain = SamplerChain(params, self.tokenizer.vocab, self._n_sampled, recent, constraint)
                    constraint = None  # the chain owns it now
                    yield from self.feeder.decode(chain, first[-1], max_tokens, is_stop, cancel)
            finally:
                self._cancel = None
                for owned in (chain, constraint):
                    if owned is not None:
                        owned.close()

    def generate(self, prompt, max_tokens: int = 128, stream: bool = False, **options):
        """Text continuation of ``prompt`` (text or token ids): a str, or with ``stream=True``
        an iterator of text pieces (never splitting a UTF-8 character). Options: those of
        :meth:`generate_tokens` (sampling, grammar, json_schema, cancel, ...)."""
        it = self.generate_tokens(prompt, max_tokens, **options)
        pieces = self._stream_text(it)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: list[dict], max_tokens: int = 256, stream: bool = False, **options):
        """The assistant's reply to ``messages`` ([{"role", "content"}], rendered with the
        model's chat template); the cached part of the conversation is reused. For a long
        conversation fed turn by turn, see :meth:`conversation`."""
        return self.generate(self.chat_prompt(messages), max_tokens=max_tokens, stream=stream, **options)

    def conversation(self, system: str | None = None, resume: bool = False):
        """A :class:`Conversation` on this engine: a new one (the cache is reset), or with
        ``resume=True`` the one the cache holds (e.g. after :meth:`load_session`)."""
        from .conversation import Conversation

        return Conversation(self, system, resume=resume)

    def cancel(self) -> None:
        """Stop the generation running now (from any thread); it ends at the next token."""
        event = self._cancel
        if event is not None:
            event.set()

    def _stream_text(self, token_iter) -> Iterator[str]:
        dec = StreamDecoder(self.tokenizer)
        for token in token_iter:
            piece = dec.feed(token)
            if piece:
                yield piece
        tail = dec.flush()
        if tail:
            yield tail

    # --- sessions ----------------------------------------------------------------------
    def save_session(self, path) -> None:
        """Write the whole bounded state (cache, index keys, memory, policy state) atomically;
        the file size depends on the cache capacity, not on the conversation's length."""
        with self._lock:
            session.save(self, path)

    def load_session(self, path) -> None:
        """Restore a session saved by an engine loaded the same way (same model, IndexMem file
        and cache options); a corrupt or foreign file raises SessionError and changes nothing.
        The next prompt continues the conversation when it starts with the saved one."""
        with self._lock:
            session.load(self, path)

    # --- introspection -----------------------------------------------------------------
    def stats(self) -> dict:
        state, recall = self.cache.indexmem, self.recall
        index_bytes = state.index_bytes if state else 0
        memory_bytes = state.memory_bytes if state else 0
        return {
            "model_path": str(self.model_path),
            "arch": self.hparams.arch,
            "device": self.backend.device_name,
            "n_ctx": self.cache.capacity,
            "tokens_seen": self.cache.tokens_seen,
            "conversation_tokens": len(self.feeder.history),
            "position_shift": self.cache.position_shift,
            **self.feeder.speeds(),
            "tokens_cached": self.cache.tokens_cached(),
            "tokens_evicted": list(self.cache.tokens_evicted),
            "policy": self.budget_config.policy,
            "policy_params": dict(
                self.budget_config.params
            ),  # as given or stored in the IndexMem file; others at their defaults
            "budget": self.budget_config.budget if self.runner.evictor else None,
            "indexmem": str(self.indexmem_path) if self.indexmem_path else None,
            "memory": self.cache.indexmem is not None and bool(self.cache.indexmem.memory_layers),
            "cache_type_k": self.cache_types.k,
            "cache_type_v": self.cache_types.v,
            "attention": self.attention,
            "cache_buffers": {"kv": self.cache.nbytes, "index_keys": index_bytes, "memory": memory_bytes},
            # what stays in RAM whatever the conversation's length, and the recall store beside it
            "ram_bytes": self.cache.nbytes
            + index_bytes
            + memory_bytes
            + (recall.store.ram_bytes if recall else 0),
            "recall": self.recall_where,
            "recall_per_step": recall.per_step if recall else None,
            "recall_store_bytes": recall.store.disk_bytes if recall else 0,
            "recall_store_tokens": sum(recall.store.live(il) for il in recall.layers) if recall else 0,
            "tokens_recalled": dict(recall.recalled) if recall else {},
            "kv_bytes": self.cache.nbytes,
            "index_bytes": index_bytes,
            "memory_bytes": memory_bytes,
            "weights_bytes": self.model.weights.nbytes,
            "compute_bytes": self.backend.compute_buffer_bytes(),
            "graphs_built": self.runner.graphs_built,
        }

    def close(self) -> None:
        with self._lock:
            self.runner.invalidate()
            if self.recall is not None:
                self.recall.close()
            if self.cache.indexmem is not None:
                self.cache.indexmem.close()
            if self.indexmem is not None:
                self.indexmem.close()
            self.cache.close()
            self.model.weights.close()
            self.backend.close()
