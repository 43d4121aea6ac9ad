"""Step graphs whose layers' caches hold different numbers of tokens, wired differently from one
step to the next (the recall tier and sliding-window layers give layers their own lengths).

ggml's allocator reuses its last placement for any graph with as many nodes and leaves, without
looking at how they are wired: before the backend planned every new graph's placement, such a
sequence of steps crashed in ``ggml_gallocr_alloc_graph``. The steps run in a child process so
that a crash is a failed test, not a dead test run."""

import subprocess
import sys
from pathlib import Path

import numpy as np

STEPS = 120


def run_steps(model_path: str) -> int:
    """Step after step, give each layer 100, 107 or 114 cached tokens at random; compare each
    step's logits with the same step on a freshly built graph. Returns the mismatches."""
    sys.path.insert(0, str(Path(__file__).parent))
    from indexmem import Engine
    from tiny_models import random_prompt

    engine = Engine.load(
        model_path, n_threads=1, n_ctx=512, n_batch=64, policy="streaming", budget=200, sinks=2, tau=4
    )
    tokens = random_prompt(256 + STEPS, seed=0)
    engine.feeder.feed(tokens[:256])
    runner, cache = engine.runner, engine.cache
    full = [t.positions.copy() for t in cache.tables]  # 200 packed slots each
    rng = np.random.default_rng(0)
    mismatches = 0
    for j in range(STEPS):
        for table, positions in zip(cache.tables, full):
            n = 100 + 7 * int(rng.integers(0, 3))
            table.positions[:] = positions
            table.positions[n:] = -1
            table.n_used = n
        token, pos = np.array([tokens[256 + j]], np.int32), np.array([256 + j], np.int32)
        reused, _ = runner.step(token, pos)
        for table in cache.tables:
            table.truncate(256 + j)
        runner.invalidate()
        fresh, _ = runner.step(token, pos)
        mismatches += not np.array_equal(reused, fresh)
    engine.close()
    return mismatches


def test_steps_with_rewired_layer_lengths_match_fresh_graphs(tmp_path):
    from tiny_models import write_tiny_model

    path = write_tiny_model(tmp_path / "tiny-6-layers.gguf", "llama", seed=1, n_layer=6)
    child = subprocess.run([sys.executable, __file__, str(path)], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, f"the steps' process ended with {child.returncode}: {child.stderr[-2000:]}"
    assert child.stdout.split()[-1] == "0", child.stdout  # mismatched steps


if __name__ == "__main__":
    print(run_steps(sys.argv[1]))
