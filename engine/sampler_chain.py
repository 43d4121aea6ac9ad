"""llama.cpp's sampler chain (``llama_sampler_*``) over the engine's logits.

The chain is built as llama.cpp's ``common_sampler`` builds it: the samplers of
``SamplingParams.order`` (penalties, DRY, top-n-sigma, top-k, typical, top-p, min-p, XTC,
temperature), then the seeded distribution, or greedy, or mirostat. It is split in two: ``pre``,
the leading penalties/DRY (they only change logits), and ``post``, the rest.

A grammar is checked the way llama.cpp's ``common_sampler`` does it: sample without it, and only
if the grammar refuses that token, sample again with the grammar applied first. That second pass
picks what the whole vocabulary would give, with less work for the grammar:

- it gives the grammar only the tokens whose first bytes it allows (:mod:`vocab_prefixes`): the
  others it would refuse anyway, and penalties and DRY treat each candidate on its own;
- when the chain goes on with top-k (or greedy), the grammar first sees only the best
  ``SHORTLIST`` candidates: if k of them are allowed, they are the k best allowed tokens, and
  nothing after top-k looks at any other token.
"""

from __future__ import annotations

import ctypes

import numpy as np

from ..errors import GrammarError
from .sampling import DEFAULT_SEED, SamplingParams
from .token_data import TokenData
from .tokenizer import _import_llama_cpp

SHORTLIST = 256
MIROSTAT_M = 100  # llama.cpp's


class SamplerChain:
    """Samples tokens from logits rows; ``accept`` tells it which token was fed."""

    def __init__(self, params: SamplingParams, vocab, n_vocab: int, history=(), grammar=None):
        self._lib = _import_llama_cpp()
        self.params = params.validate()
        self.n_vocab = int(n_vocab)
        self.pre = self.post = self.grammar = self._shortlist = None
        self._top_k = None  # k when top-k (greedy: 1) is the first thing the chain does after pre
        try:
            self._build(vocab)
            self.grammar = grammar  # a checked llama_sampler (grammar.GrammarSampler), owned by us
            for token in history:
                if 0 <= int(token) < self.n_vocab:
                    self._accept_chain(int(token))
        except BaseException:
            self.close()
            raise
        self.data = TokenData(self.n_vocab)
        self._one = TokenData(1, self.n_vocab)
        self._probes = TokenData(self.n_vocab)

    # --- building ----------------------------------------------------------------------------
    def _build(self, vocab) -> None:
        p, lib = self.params, self._lib
        letters = p.order
        n_pre = len(letters) - len(letters.lstrip("ed"))
        self.pre = self._chain(self._sampler(c, vocab) for c in letters[:n_pre])
        post_letters = letters[n_pre:]
        seed = DEFAULT_SEED if p.seed is None else p.seed
        if p.greedy:
            post = [self._sampler(c, vocab) for c in post_letters if c in "ed"]
            self._top_k = None if any(post) else 1
            post.append(lib.llama_sampler_init_greedy())
        elif p.mirostat:
            post = [lib.llama_sampler_init_temp(p.temperature), self._mirostat(seed)]
        else:
            post = [self._sampler(c, vocab) for c in post_letters]
            active = [c for c, s in zip(post_letters, post) if s is not None]
            self._top_k = p.top_k if active[:1] == ["k"] else None
            post.append(lib.llama_sampler_init_dist(seed))
        self.post = self._chain(post)
        if self._top_k:
            self._shortlist = self._checked(lib.llama_sampler_init_top_k(max(SHORTLIST, 4 * self._top_k)))

    def _mirostat(self, seed: int):
        p, lib = self.params, self._lib
        if p.mirostat == 1:
            return lib.llama_sampler_init_mirostat(
                self.n_vocab, seed, p.mirostat_tau, p.mirostat_eta, MIROSTAT_M
            )
        return lib.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta)

    def _sampler(self, letter: str, vocab):
        """The llama.cpp sampler for one letter of ``order``, or None where it would do nothing."""
        p, lib = self.params, self._lib
        keep = p.min_keep
        seed = DEFAULT_SEED if p.seed is None else p.seed
        if letter == "e" and p.penalties_on:
            return lib.llama_sampler_init_penalties(
                self.n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
        if letter == "d" and p.dry_multiplier > 0.0:
            return self._dry(vocab)
        if letter == "s" and p.top_n_sigma > 0.0:
            return lib.llama_sampler_init_top_n_sigma(p.top_n_sigma)
        if letter == "k" and p.top_k > 0:
            return lib.llama_sampler_init_top_k(p.top_k)
        if letter == "y" and p.typical_p < 1.0:
            return lib.llama_sampler_init_typical(p.typical_p, keep)
        if letter == "p" and p.top_p < 1.0:
            return lib.llama_sampler_init_top_p(p.top_p, keep)
        if letter == "m" and p.min_p > 0.0:
            return lib.llama_sampler_init_min_p(p.min_p, keep)
        if letter == "x" and p.xtc_probability > 0.0:
            return lib.llama_sampler_init_xtc(p.xtc_probability, p.xtc_threshold, keep, seed)
        if letter == "t":
            return lib.llama_sampler_init_temp_ext(p.temperature, p.dynatemp_range, p.dynatemp_exponent)
        return None

    def _dry(self, vocab):
        p = self.params
        breakers = [b.encode() for b in p.dry_sequence_breakers]
        array = (ctypes.c_char_p * len(breakers))(*breakers)  # llama.cpp copies them
        return self._lib.llama_sampler_init_dry(
            vocab, p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_last_n, array, len(breakers)
        )

    def _chain(self, samplers):
        lib = self._lib
        chain = self._checked(lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params()))
        for s in samplers:
            if s is not None:
                lib.llama_sampler_chain_add(chain, self._checked(s))
        return chain

    @staticmethod
    def _checked(sampler):
        if not sampler:
            raise RuntimeError("llama.cpp could not create a sampler")
        return sampler

    # --- sampling ----------------------------------------------------------------------------
    def sample(self, logits: np.ndarray) -> int:
        """The next token from one row of logits (not yet accepted)."""
        data = self.data
        data.fill(logits)
        data.apply(self.pre)
        data.apply(self.post)
        token = data.selected()
        if self.grammar is None or self._allows(token):
            return token
        return self._sample_constrained(logits)

    def _allows(self, token: int) -> bool:
        self._one.set_one(token)
        self._one.apply(self.grammar.sampler)
        return self._one.n_allowed() == 1

    def _sample_constrained(self, logits: np.ndarray) -> int:
        data, prefixes = self.data, self.grammar.prefixes
        ids = None if prefixes is None else prefixes.candidates(self._grammar_allows)
        self._candidates(logits, ids)
        if self._shortlist is not None and data.struct.size > SHORTLIST:
            data.apply(self._shortlist)
            data.apply(self.grammar.sampler)
            if data.n_allowed() < self._top_k:  # too few allowed among the best: all of them
                self._candidates(logits, ids)
                data.apply(self.grammar.sampler)
        else:
            data.apply(self.grammar.sampler)
        # refused candidates go: left at -inf, llama.cpp's distribution can still pick one
        if data.keep_allowed() == 0:
            raise GrammarError("the grammar allows no token at this point of the reply")
        data.apply(self.post)
        return data.selected()

    def _candidates(self, logits: np.ndarray, ids: np.ndarray | None) -> None:
        """The tokens ``ids`` (None: all) with their logits, penalties and DRY applied."""
        if ids is None:
            self.data.fill(logits)
        else:
            self.data.fill_ids(ids, logits)
        self.data.apply(self.pre)

    def _grammar_allows(self, ids: np.ndarray) -> np.ndarray:
        self._probes.fill_ids(ids)
        self._probes.apply(self.grammar.sampler)
        return np.isfinite(self._probes.view()["logit"])

    def accept(self, token: int) -> None:
        """``token`` was chosen: penalties, DRY, mirostat and the grammar move on."""
        self._accept_chain(token)
        if self.grammar is not None:
            self.grammar.accept(token)

    def _accept_chain(self, token: int) -> None:
        self._lib.llama_sampler_accept(self.pre, token)
        self._lib.llama_sampler_accept(self.post, token)

    def close(self) -> None:
        for name in ("pre", "post", "_shortlist"):
            sampler = getattr(self, name, None)
            if sampler:
                self._lib.llama_sampler_free(sampler)
            setattr(self, name, None)
        if getattr(self, "grammar", None) is not None:
            self.grammar.close()
            self.grammar = None

    def __del__(self):
        self.close()
