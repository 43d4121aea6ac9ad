"""Tokenizer and chat template come from llama.cpp; streaming never splits a UTF-8 character."""

import pytest
from indexmem import Engine
from indexmem.engine.tokenizer import StreamDecoder

TEXT = "Grüße aus Köln! 東京タワー 🚀🌊 naïve café — ok."


@pytest.fixture(scope="module")
def engine(default_model_path):
    return Engine.load(str(default_model_path), n_ctx=512)


def test_tokens_match_llama_cpp(engine, default_model_path):
    from conftest import llama_cpp_reference

    ref = llama_cpp_reference(default_model_path, n_ctx=512)
    assert engine.tokenize(TEXT) == ref.tokenize(TEXT.encode(), add_bos=True, special=True)
    assert engine.detokenize(engine.tokenize(TEXT, add_special=False)) == TEXT


def test_stream_decoder_never_emits_half_a_character(engine):
    tokens = engine.tokenize(TEXT, add_special=False)
    pieces_bytes = [engine.tokenizer.piece(t) for t in tokens]
    # the test only means something if some token ends inside a multi-byte character
    assert any(_splits_a_character(b) for b in pieces_bytes)
    dec = StreamDecoder(engine.tokenizer)
    pieces = [dec.feed(t) for t in tokens] + [dec.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == TEXT


def _splits_a_character(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_chatml_template(engine):
    prompt = engine.chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
