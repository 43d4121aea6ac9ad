"""The request bodies the server accepts, as pydantic models (the OpenAI API's subset we serve).

Fields we do not implement but that clients commonly send are accepted and ignored; a value we
cannot honour (several choices, image content) is refused. Sampling fields left out take the
engine's chat defaults (``engine.sampling_defaults``); besides OpenAI's, llama.cpp's server
fields (``top_k``, ``min_p``, ``repeat_penalty``, ``dry_multiplier``, ``grammar``,
``json_schema`` ...) are read too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..engine.grammar import JSON_OBJECT_SCHEMA, grammar_text
from ..engine.sampling import SamplingParams

# request field -> SamplingParams field
SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "top_n_sigma": "top_n_sigma",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "dry_multiplier": "dry_multiplier",
    "dry_base": "dry_base",
    "dry_allowed_length": "dry_allowed_length",
    "dry_penalty_last_n": "dry_last_n",
    "xtc_probability": "xtc_probability",
    "xtc_threshold": "xtc_threshold",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "dynatemp_range": "dynatemp_range",
    "dynatemp_exponent": "dynatemp_exponent",
}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = None
    json_schema: dict | bool = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError('"json_schema" goes with (and only with) type "json_schema"')
        return self

    def schema(self) -> dict | bool | None:
        if self.type == "json_object":
            return JSON_OBJECT_SCHEMA
        return self.json_schema.json_schema if self.json_schema else None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    top_n_sigma: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_penalty_last_n: int | None = None
    xtc_probability: float | None = None
    xtc_threshold: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    dynatemp_range: float | None = None
    dynatemp_exponent: float | None = None
    response_format: ResponseFormat | None = None
    grammar: str | None = None
    json_schema: dict | bool | None = None
    stop: str | list[str] | None = Field(None, validate_default=True)
    stream: bool = False
    n: Literal[1] = 1

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def sampling(self, defaults: SamplingParams) -> SamplingParams:
        """``defaults`` with the sampling fields this request gives (ValueError if out of range)."""
        given = {ours: getattr(self, field) for field, ours in SAMPLING_FIELDS.items()}
        return defaults.with_(**{k: v for k, v in given.items() if v is not None})

    def grammar_text(self) -> str | None:
        """The GBNF the reply is held to (GrammarError for a bad grammar or schema)."""
        schema = self.response_format.schema() if self.response_format else None
        asked = [x for x in (schema, self.json_schema, self.grammar) if x is not None]
        if len(asked) > 1:
            raise ValueError("give one of response_format (JSON), json_schema and grammar")
        return grammar_text(self.grammar, schema if schema is not None else self.json_schema)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # the OpenAI default for completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("one prompt per request")
            v = v[0]
        if not v:
            raise ValueError("the prompt is empty")
        return v

    def token_limit(self) -> int | None:
        return self.max_tokens
