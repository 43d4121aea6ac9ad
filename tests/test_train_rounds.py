"""The offline chunked-prefill simulation (train/rounds.py) against the engine itself: the first
layer's inputs do not depend on what was evicted, so there the simulated cache must be exactly
the engine's after the same chunks, for every scorer."""

import numpy as np
import pytest
import torch
from indexmem import Engine
from indexmem.convert.writer import convert
from indexmem.train.features import FeatureSet, extract
from indexmem.train.modules import IndexMemSizes
from indexmem.train.rounds import SCORERS, chunked_cache
from test_indexmem import _kept, random_modules, write_checkpoint
from tiny_models import random_prompt, write_tiny_model

CHUNK, BUDGET, RECENT, SINKS, N = 16, 28, 6, 4, 90


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("rounds")
    base = write_tiny_model(root / "tiny-f32.gguf", "llama", seed=5, all_f32=True)
    sizes = IndexMemSizes(d_model=64, n_head=4, d_head=16, n_idx_heads=2, d_idx=8, d_mem=16)
    modules = random_modules(2, sizes, seed=1)
    side = convert(write_checkpoint(modules, "llama", root / "ckpt"), base, root / "side.gguf", dtype="f32")
    tokens = random_prompt(N, seed=4)
    extract(
        Engine.load(str(base), n_ctx=256, n_batch=CHUNK, policy="full"), [tokens], root / "feat", chunk=CHUNK
    )
    return base, side, modules, tokens, FeatureSet(root / "feat")


def _engine_cache(base, side, scorer, tokens, layer, **opts):
    if scorer == "indexmem":
        opts["indexmem"] = str(side)
    eng = Engine.load(
        str(base), n_ctx=256, n_batch=CHUNK, policy=scorer, budget=BUDGET, sinks=SINKS, window=RECENT, **opts
    )
    for start in range(0, len(tokens), CHUNK):
        piece = tokens[start : start + CHUNK]
        eng.runner.step(np.array(piece), np.arange(start, start + len(piece)))
    return sorted(_kept(eng, layer))


@pytest.mark.parametrize("scorer", SCORERS)
def test_first_layer_cache_is_the_engines(case, scorer):
    base, side, modules, tokens, fs = case
    f = fs.layer(0, 0)
    simulated = chunked_cache(
        f, scorer, BUDGET, CHUNK, fs.manifest["kq_scale"], SINKS, RECENT, modules.indexers[0]
    )
    assert len(simulated) == BUDGET
    assert simulated.tolist() == _engine_cache(base, side, scorer, tokens, layer=0)


def test_streaming_keeps_the_sinks_and_the_newest(case):
    *_, fs = case
    kept = chunked_cache(fs.layer(0, 1), "streaming", BUDGET, CHUNK, fs.manifest["kq_scale"], SINKS, RECENT)
    assert kept.tolist() == list(range(SINKS)) + list(range(N - BUDGET + SINKS, N))


def test_a_carried_importance_changes_what_indexmem_keeps(case):
    base, side, modules, tokens, fs = case
    f, scale = fs.layer(0, 0), fs.manifest["kq_scale"]
    fresh = chunked_cache(f, "indexmem", BUDGET, CHUNK, scale, SINKS, RECENT, modules.indexers[0], gamma=0.0)
    carried = chunked_cache(
        f, "indexmem", BUDGET, CHUNK, scale, SINKS, RECENT, modules.indexers[0], gamma=1.0
    )
    assert not torch.equal(fresh, carried)
    assert carried.tolist() == _engine_cache(base, side, "indexmem", tokens, layer=0, gamma=1.0)
    with pytest.raises(ValueError, match="indexer"):
        chunked_cache(f, "indexmem", BUDGET, CHUNK, scale)
    with pytest.raises(ValueError, match="unknown scorer"):
        chunked_cache(f, "bogus", BUDGET, CHUNK, scale)
