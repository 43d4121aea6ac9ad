"""Our sampler chain against llama.cpp's own: the same logits and seed give the same tokens.

The reference is llama-cpp-python's ``LlamaSampler`` (its own chain code) sampling with
``llama_sampler_sample`` from llama.cpp's context, which reads the logits llama.cpp computed;
ours gets a copy of the same logits row. Both see the same prompt tokens as history and accept
the same sampled tokens, step after step, for 64 steps.
"""

import numpy as np
import pytest
from conftest import llama_cpp_reference
from indexmem.engine.sampler_chain import SamplerChain
from indexmem.engine.sampling import GREEDY, SamplingParams
from indexmem.engine.tokenizer import Tokenizer
from llama_cpp._internals import LlamaSampler

STEPS = 64
CONFIGS = {
    "greedy": GREEDY,
    "top-k/top-p/min-p/temperature": SamplingParams(temperature=0.9, top_k=30, top_p=0.9, min_p=0.02, seed=7),
    "hot, wide": SamplingParams(temperature=1.6, top_k=0, top_p=1.0, min_p=0.0, seed=11),
    "penalties": SamplingParams(
        temperature=0.7,
        repeat_penalty=1.3,
        frequency_penalty=0.4,
        presence_penalty=0.3,
        repeat_last_n=32,
        seed=5,
    ),
    "greedy with penalties": GREEDY.with_(repeat_penalty=1.5, presence_penalty=0.5),
    "DRY": SamplingParams(temperature=0.8, dry_multiplier=0.8, seed=3),
}


def reference_chain(p: SamplingParams, n_vocab: int, model) -> LlamaSampler:
    """The chain as llama.cpp's common_sampler orders it, built with llama-cpp-python's API."""
    s = LlamaSampler()
    if p.penalties_on:
        s.add_penalties(n_vocab, p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
    if p.dry_multiplier > 0:
        s.add_dry(
            model, p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_last_n, ["\n", ":", '"', "*"]
        )
    if p.temperature <= 0:
        s.add_greedy()
        return s
    if p.top_k > 0:
        s.add_top_k(p.top_k)
    s.add_top_p(p.top_p, 1)
    s.add_min_p(p.min_p, 1)
    s.add_temp(p.temperature)
    s.add_dist(p.seed)
    return s


def lockstep(path, prompt: list[int], params: SamplingParams) -> tuple[list[int], list[int]]:
    """64 tokens sampled by llama.cpp and by our chain from the same logits."""
    llm = llama_cpp_reference(path, n_ctx=512)
    llm.eval(prompt)
    n_vocab = llm.n_vocab()
    ref = reference_chain(params, n_vocab, llm._model)
    history = prompt[-params.history_needed :] if params.history_needed else []
    for t in history:
        ref.accept(t)
    tokenizer = Tokenizer(path)
    ours = SamplerChain(params, tokenizer.vocab, n_vocab, history)
    theirs, mine = [], []
    for _ in range(STEPS):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        mine.append(ours.sample(logits))
        theirs.append(ref.sample(llm._ctx, -1))  # samples and accepts
        ours.accept(theirs[-1])
        llm.eval([theirs[-1]])
    ours.close()
    return mine, theirs


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_tokens_as_llama_cpp_on_a_tiny_model(tiny_llama, name):
    prompt = [1] + [(17 * i) % 200 + 3 for i in range(40)]
    mine, theirs = lockstep(tiny_llama, prompt, CONFIGS[name])
    assert mine == theirs
    if name != "greedy" and "greedy" not in name:
        assert len(set(theirs)) > 8  # a sampled sequence, not one token over and over


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_tokens_as_llama_cpp_on_smollm2(default_model_path, name):
    tok = Tokenizer(default_model_path)
    prompt = tok.encode(
        "<|im_start|>user\nWrite a story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"
    )
    mine, theirs = lockstep(default_model_path, prompt, CONFIGS[name])
    assert mine == theirs


def test_seed_reproduces_and_differs(tiny_llama):
    from indexmem import Engine

    eng = Engine.load(str(tiny_llama), n_ctx=256)
    prompt = [1, 5, 9, 30, 41]

    def draw(seed):
        return list(eng.generate_tokens(prompt, max_tokens=40, stop_at_eog=False, temperature=1.5, seed=seed))

    assert draw(11) == draw(11)
    assert draw(11) != draw(12)


def test_greedy_is_argmax_of_the_logits(tiny_llama):
    rng = np.random.default_rng(0)
    tokenizer = Tokenizer(tiny_llama)
    chain = SamplerChain(GREEDY, tokenizer.vocab, tokenizer.n_vocab)
    for _ in range(20):
        logits = rng.normal(size=tokenizer.n_vocab).astype(np.float32)
        assert chain.sample(logits) == int(np.argmax(logits))


def test_every_sampler_of_the_issue_builds_and_samples(tiny_llama):
    tokenizer = Tokenizer(tiny_llama)
    logits = np.random.default_rng(1).normal(scale=3, size=tokenizer.n_vocab).astype(np.float32)
    variants = [
        dict(typical_p=0.9),
        dict(xtc_probability=0.5, xtc_threshold=0.05),
        dict(mirostat=1),
        dict(mirostat=2),
        dict(top_n_sigma=1.5),
        dict(dynatemp_range=0.5),
        dict(order="kt"),
    ]
    for v in variants:
        chain = SamplerChain(
            SamplingParams(seed=1, **v), tokenizer.vocab, tokenizer.n_vocab, history=[3, 4, 5]
        )
        tokens = [chain.sample(logits) for _ in range(10)]
        assert all(0 <= t < tokenizer.n_vocab for t in tokens), v
        chain.close()


@pytest.mark.parametrize(
    "bad",
    [
        dict(top_p=0.0),
        dict(repeat_penalty=0.0),
        dict(temperature=-1.0),
        dict(temperature=float("nan")),
        dict(mirostat=3),
        dict(seed=-1),
        dict(seed=2**32),
        dict(order="kq"),
        dict(repeat_last_n=-1),
        dict(frequency_penalty=3.0),
    ],
)
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad).validate()


def test_unknown_parameter_names_are_refused():
    with pytest.raises(TypeError):
        GREEDY.with_(temprature=0.5)
