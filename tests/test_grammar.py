"""Grammar-constrained generation: GBNF and JSON schemas, bad ones refused cleanly (also those that
crash llama.cpp's parser), the shortcut that applies a grammar to a shortlist exact, and grammars
kept out of sessions."""

import json

import numpy as np
import pytest
from indexmem import Engine, GrammarError, ModelFormatError
from indexmem.engine.grammar import GrammarSampler, grammar_from_schema
from indexmem.engine.sampler_chain import SamplerChain
from indexmem.engine.sampling import GREEDY, SamplingParams
from tiny_models import write_tiny_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age"],
}
BAD_GRAMMARS = {
    "undefined rule": "root ::= answer",
    "unterminated string": 'root ::= "yes',
    "left recursion": 'root ::= root "a" | "a"',
    "no root": 'start ::= "a"',
    "unknown token": "root ::= <|no-such-token|>",
    "nesting that overflows llama.cpp's parser stack": "root ::= " + "(" * 200_000 + '"a"' + ")" * 200_000,
}


def conforms(value, schema) -> bool:
    """The parts of JSON Schema these tests use: type, properties, required."""
    kinds = {"object": dict, "string": str, "integer": int, "array": list, "number": (int, float)}
    if "type" in schema and not isinstance(value, kinds[schema["type"]]):
        return False
    if isinstance(value, dict):
        if any(key not in value for key in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        return all(conforms(v, props[k]) for k, v in value.items() if k in props)
    return True


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return Engine.load(str(tiny_llama), n_ctx=256)


@pytest.fixture(scope="module")
def smol(default_model_path):
    return Engine.load(str(default_model_path), n_ctx=2048)


def test_a_gbnf_grammar_decides_the_reply(tiny):
    for seed in range(6):
        tokens = list(
            tiny.generate_tokens([1, 5, 9], grammar='root ::= "yes" | "no"', temperature=1.5, seed=seed)
        )
        assert tiny.detokenize(tokens) in ("yes", "no")
        assert len(tokens) <= 3  # the end of the grammar allows only end-of-generation


@pytest.mark.parametrize("name", list(BAD_GRAMMARS))
def test_bad_grammars_are_refused_and_the_engine_goes_on(tiny, name):
    with pytest.raises(GrammarError) as err:
        tiny.generate([1, 5, 9], grammar=BAD_GRAMMARS[name])
    assert str(err.value)
    assert len(list(tiny.generate_tokens([1, 5, 9], max_tokens=4, stop_at_eog=False))) == 4


@pytest.mark.parametrize(
    "schema", ["{not json", "[1, 2]", {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}]
)
def test_bad_json_schemas_are_refused(tiny, schema):
    with pytest.raises(GrammarError, match="invalid JSON schema"):
        tiny.generate([1, 5, 9], json_schema=schema)


def test_grammar_and_schema_together_are_refused(tiny):
    with pytest.raises(GrammarError):
        tiny.generate([1, 5], grammar='root ::= "a"', json_schema=PERSON)


def test_json_schema_replies_parse_and_validate(smol):
    messages = [{"role": "user", "content": "Describe a person as JSON with a name and an age."}]
    for seed in range(3):
        text = smol.chat(
            messages, max_tokens=200, json_schema=PERSON, sampling=smol.sampling_defaults, seed=seed
        )
        assert conforms(json.loads(text), PERSON), text


SECOND_PASS = {
    "greedy": GREEDY,
    "seeded": SamplingParams(seed=4),
    "top-k 5": SamplingParams(top_k=5, seed=9),
    "chat defaults, penalties": None,
}


@pytest.mark.parametrize("name", list(SECOND_PASS))
def test_the_second_pass_picks_what_the_whole_vocabulary_would(smol, name):
    """The second pass gives the grammar only the tokens whose first bytes it allows; that must
    pick exactly what applying it to the whole vocabulary picks."""
    params = SECOND_PASS[name] or smol.sampling_defaults.with_(seed=2, repeat_penalty=1.2)
    vocab, n = smol.tokenizer.vocab, smol.tokenizer.n_vocab
    grammar = grammar_from_schema(PERSON)

    def chain(prefixes):
        constraint = GrammarSampler(grammar, vocab, smol.model_path, prefixes)
        return SamplerChain(params, vocab, n, history=[28, 29, 30], grammar=constraint)

    fast, full = chain(smol._prefixes()), chain(None)
    assert len(smol._prefixes().candidates(fast._grammar_allows)) < n // 10  # "{" and few others
    second_passes, first_pass = [], fast._sample_constrained
    fast._sample_constrained = lambda logits: second_passes.append(1) or first_pass(logits)
    rng = np.random.default_rng(0)
    picks = []
    for _ in range(60):
        logits = rng.normal(scale=4, size=n).astype(np.float32)
        token = fast.sample(logits)
        assert full.sample(logits) == token
        if smol.tokenizer.is_eog(token):
            break
        fast.accept(token)
        full.accept(token)
        picks.append(token)
    assert len(picks) > 5 and len(second_passes) >= 3
    fast.close()
    full.close()


def test_refused_tokens_are_never_picked(smol):
    """Fewer allowed tokens than top-k: none of the refused ones may be drawn."""
    vocab, n = smol.tokenizer.vocab, smol.tokenizer.n_vocab
    grammar = 'root ::= [a-c]+ "."'
    check = GrammarSampler(grammar, vocab, smol.model_path)
    chain = SamplerChain(
        SamplingParams(temperature=2.0, seed=1),
        vocab,
        n,
        grammar=GrammarSampler(grammar, vocab, smol.model_path),
    )
    rng = np.random.default_rng(1)
    for _ in range(200):
        token = chain.sample(rng.normal(scale=2, size=n).astype(np.float32))
        allowed = chain._one
        allowed.set_one(token)
        allowed.apply(check.sampler)
        assert allowed.n_allowed() == 1, smol.tokenizer.piece(token)
    chain.close()


def test_a_refused_grammar_leaves_the_conversation_untouched(tiny):
    conv = tiny.conversation()
    conv.say("hello", max_tokens=4)
    before = tiny.stats()["conversation_tokens"]
    with pytest.raises(GrammarError):
        conv.say("more", grammar="root ::= nothing")
    assert tiny.stats()["conversation_tokens"] == before


def test_sessions_restore_after_a_constrained_reply(tiny_llama, tmp_path):
    eng = Engine.load(str(tiny_llama), n_ctx=256)
    conv = eng.conversation()
    assert conv.say("hello", max_tokens=6, grammar='root ::= "yes" | "no"') in ("yes", "no")
    eng.save_session(tmp_path / "s.session")
    expected = conv.say("and then?", max_tokens=8)
    fresh = Engine.load(str(tiny_llama), n_ctx=256)
    fresh.load_session(tmp_path / "s.session")
    assert fresh.conversation(resume=True).say("and then?", max_tokens=8) == expected


def test_the_models_sampling_keys_are_its_chat_defaults(tmp_path):
    keys = {"general.sampling.temp": 0.6, "general.sampling.top_k": 20, "general.sampling.sequence": "ekpt"}
    eng = Engine.load(str(write_tiny_model(tmp_path / "m.gguf", "llama", metadata=keys)), n_ctx=128)
    d = eng.sampling_defaults
    assert (d.temperature, d.top_k, d.order, d.top_p) == (pytest.approx(0.6), 20, "ekpt", 0.95)
    bad = write_tiny_model(tmp_path / "bad.gguf", "llama", metadata={"general.sampling.top_p": 5.0})
    with pytest.raises(ModelFormatError, match="top_p"):
        Engine.load(str(bad), n_ctx=128)
