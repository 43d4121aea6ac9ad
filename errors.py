"""Exceptions raised by indexmem. Every failure a user can cause is one of these."""


class IndexmemError(Exception):
    """Base class of every error indexmem raises on purpose."""


class BackendError(IndexmemError):
    """The ggml libraries are missing, mismatched or failed to compute."""


class ModelFormatError(IndexmemError):
    """A GGUF file is unreadable, truncated, inconsistent or of an unsupported kind."""


class UnsupportedModelError(ModelFormatError):
    """A well-formed GGUF whose architecture or tensor types the engine does not run."""


class ContextOverflowError(IndexmemError):
    """A prompt or generation that does not fit the context the engine was loaded with."""


class RegistryError(IndexmemError):
    """A named model could not be fetched, assembled or verified."""


class GrammarError(IndexmemError):
    """A GBNF grammar or JSON schema that cannot constrain generation (or a reply it cannot finish)."""


class UnsupportedCacheTypeError(IndexmemError):
    """A K/V cache type the engine cannot store or attend over for this model on this backend."""
