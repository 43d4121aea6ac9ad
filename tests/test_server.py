"""indexmem-serve in its own process, tested with the openai client and raw HTTP (httpx):
streaming and not, chat and text completions, and bad requests that get 4xx while the server
keeps serving."""

import httpx
import pytest
from serving import running_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(tiny_llama):
    options = ["--n-ctx", "256", "--batch", "32", "--max-request-bytes", "4096", "--max-tokens", "64"]
    with running_server(tiny_llama, *options) as (base, _):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-llama-single"]
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}


def test_chat_streaming_and_not_agree(client):
    whole = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=24, temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 24 and whole.usage.prompt_tokens > 5
    stream = client.chat.completions.create(
        model="any", messages=MESSAGES, max_tokens=24, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_text_completions_and_stop_strings(client):
    whole = client.completions.create(model="any", prompt="Once upon a time", max_tokens=30, temperature=0)
    text = whole.choices[0].text
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="any", prompt="Once upon a time", max_tokens=30, temperature=0, stream=True
        )
    )
    assert streamed == text and len(text) > 10
    stop = text[5:9]
    cut = client.completions.create(
        model="any", prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{not json", 400),
        (b'{"messages": []}', 400),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413),
        (b'{"messages": [{"role": "user", "content": "' + b"word " * 600 + b'"}]}', 400),  # over the context
    ],
    ids=[
        "malformed",
        "no-messages",
        "bad-role",
        "too-many-tokens",
        "several-choices",
        "bad-temperature",
        "oversized",
        "over-the-context",
    ],
)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, client, body, status):
    r = httpx.post(
        f"{server}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    ok = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=4, temperature=0)
    assert ok.choices[0].message.content is not None


def test_oversized_body_without_a_length_header(server):
    def body():
        for _ in range(10):
            yield b"x" * 1000

    r = httpx.post(f"{server}/v1/completions", content=body(), timeout=60)
    assert r.status_code == 413


def test_a_client_that_leaves_mid_stream_does_not_stop_the_server(server, client):
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 64,
        "stream": True,
    }
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("data: ")
    ok = client.chat.completions.create(model="any", messages=MESSAGES, max_tokens=4, temperature=0)
    assert ok.choices[0].message.content is not None
