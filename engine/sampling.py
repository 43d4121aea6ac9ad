"""The sampling parameters: one object shared by the Python API, indexmem-chat and the server.

Field defaults are llama.cpp's own (``common_params_sampling``): temperature 0.8, top-k 40,
top-p 0.95, min-p 0.05, penalties and DRY off. What each front end starts from:

- the Python API decodes greedily unless told otherwise (:data:`GREEDY`), so results are
  reproducible and benchmarks compare like with like;
- indexmem-chat and indexmem-serve start from :func:`chat_defaults`: llama.cpp's values, DRY on
  (small models otherwise repeat one sentence for the whole reply), and whatever the model file
  sets under ``general.sampling.*`` (``engine.sampling_defaults``).

The samplers themselves are llama.cpp's (:mod:`sampler_chain`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..errors import ModelFormatError

# llama.cpp's sampler letters (--sampling-seq): penalties, DRY, top-n-sigma, top-k, typical,
# top-p, min-p, XTC, temperature; the final pick (distribution, greedy or mirostat) comes last
ORDER_LETTERS = "edskypmxt"
MAX_LAST_N = 1 << 16
DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's "pick a random seed"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # 0: greedy
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_k: int = 40  # 0: off
    top_p: float = 0.95  # 1: off
    min_p: float = 0.05  # 0: off
    typical_p: float = 1.0  # 1: off
    top_n_sigma: float = -1.0  # <= 0: off
    xtc_probability: float = 0.0  # 0: off
    xtc_threshold: float = 0.1
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # tokens the penalties look back over
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    dry_multiplier: float = 0.0  # 0: off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    # tokens DRY looks back over (llama.cpp: the whole context); 256 is what a restored session
    # remembers (history.RECENT), so a restored conversation samples as the uninterrupted one
    dry_last_n: int = 256
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    mirostat: int = 0  # 1, 2: mirostat v1 / v2 instead of top-k ... temperature
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    min_keep: int = 0
    seed: int | None = None  # None: a random seed
    order: str = ORDER_LETTERS
    grammar: str | None = None  # GBNF text; per request, never part of a session

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 and self.mirostat == 0

    @property
    def history_needed(self) -> int:
        """How many recent tokens the penalties and DRY look at."""
        pen = self.repeat_last_n if self.penalties_on else 0
        dry = self.dry_last_n if self.dry_multiplier > 0 else 0
        return max(pen, dry)

    @property
    def penalties_on(self) -> bool:
        return self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0

    def with_(self, **changes) -> SamplingParams:
        """A copy with ``changes`` (unknown names raise TypeError), validated."""
        return replace(self, **changes).validate()

    def validate(self) -> SamplingParams:
        problems = [msg for ok, msg in self._checks() if not ok]
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))
        return self

    def _checks(self):
        finite = all(
            math.isfinite(getattr(self, f.name))
            for f in fields(self)
            if isinstance(getattr(self, f.name), float)
        )
        yield finite, "every number must be finite"
        yield self.temperature >= 0.0, f"temperature must be >= 0 (got {self.temperature})"
        yield self.top_k >= 0, f"top_k must be >= 0 (got {self.top_k})"
        yield 0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1] (got {self.top_p})"
        yield 0.0 <= self.min_p <= 1.0, f"min_p must be in [0, 1] (got {self.min_p})"
        yield 0.0 < self.typical_p <= 1.0, f"typical_p must be in (0, 1] (got {self.typical_p})"
        yield 0.0 <= self.xtc_probability <= 1.0, "xtc_probability must be in [0, 1]"
        yield 0.0 <= self.xtc_threshold <= 1.0, "xtc_threshold must be in [0, 1]"
        yield self.repeat_penalty > 0.0, f"repeat_penalty must be > 0 (got {self.repeat_penalty})"
        yield -2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"
        yield -2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"
        yield 0 <= self.repeat_last_n <= MAX_LAST_N, f"repeat_last_n must be in [0, {MAX_LAST_N}]"
        yield 0 <= self.dry_last_n <= MAX_LAST_N, f"dry_last_n must be in [0, {MAX_LAST_N}]"
        yield (
            self.dry_multiplier >= 0.0 and self.dry_base >= 1.0,
            "dry_multiplier must be >= 0, dry_base >= 1",
        )
        yield self.dry_allowed_length >= 0, "dry_allowed_length must be >= 0"
        yield (
            all(isinstance(b, str) and b for b in self.dry_sequence_breakers),
            "DRY breakers: non-empty strings",
        )
        yield self.mirostat in (0, 1, 2), f"mirostat must be 0, 1 or 2 (got {self.mirostat})"
        yield self.mirostat_tau > 0.0 and self.mirostat_eta > 0.0, "mirostat_tau and mirostat_eta must be > 0"
        yield 0 <= self.min_keep <= 1024, "min_keep must be in [0, 1024]"
        yield self.seed is None or 0 <= self.seed < DEFAULT_SEED, f"seed must be in [0, {DEFAULT_SEED})"
        yield set(self.order) <= set(ORDER_LETTERS), f"order takes the letters {ORDER_LETTERS!r}"
        yield self.grammar is None or isinstance(self.grammar, str), "grammar must be GBNF text"


GREEDY = SamplingParams(temperature=0.0)

# DRY (llama.cpp's recommended multiplier) stops the verbatim loops small models fall into; unlike a
# repetition penalty it leaves the common words of a reply alone. A newline does not break a
# sequence here (in llama.cpp it does): SmolLM2's loops are whole lines repeated, which DRY would
# otherwise only see a line at a time (tests/test_chat_defaults.py).
CHAT_BREAKERS = (":", '"', "*")
CHAT_DEFAULTS = SamplingParams(dry_multiplier=0.8, dry_sequence_breakers=CHAT_BREAKERS)

# GGUF key under general.sampling. -> (field, type)
GGUF_KEYS = {
    "sequence": ("order", str),
    "top_k": ("top_k", int),
    "top_p": ("top_p", float),
    "min_p": ("min_p", float),
    "temp": ("temperature", float),
    "mirostat": ("mirostat", int),
    "mirostat_tau": ("mirostat_tau", float),
    "mirostat_eta": ("mirostat_eta", float),
    "xtc_probability": ("xtc_probability", float),
    "xtc_threshold": ("xtc_threshold", float),
    "penalty_last_n": ("repeat_last_n", int),
    "penalty_repeat": ("repeat_penalty", float),
}


def gguf_sampling(get) -> dict:
    """The sampling fields a model file sets (``general.sampling.*``); ``get(key)`` reads one."""
    out = {}
    for key, (name, kind) in GGUF_KEYS.items():
        value = get(f"general.sampling.{key}")
        if value is None:
            continue
        if kind is str and isinstance(value, str):
            out[name] = _sequence_letters(value)
        elif kind is not str and isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = kind(value)
        else:
            raise ModelFormatError(f"general.sampling.{key} has type {type(value).__name__}")
    try:
        CHAT_DEFAULTS.with_(**out)
    except ValueError as exc:
        raise ModelFormatError(f"the model's general.sampling.* keys: {exc}") from exc
    return out


def _sequence_letters(value: str) -> str:
    """llama.cpp writes the sequence as letters ('edskypmxt'); a sequence of names is not read."""
    if not set(value) <= set(ORDER_LETTERS):
        raise ModelFormatError(
            f"general.sampling.sequence {value!r}: only the letters {ORDER_LETTERS!r} are read"
        )
    return value


def chat_defaults(model_sampling: dict) -> SamplingParams:
    """What indexmem-chat and indexmem-serve sample with when a request does not say."""
    return CHAT_DEFAULTS.with_(**model_sampling)
