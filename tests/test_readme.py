"""Every code block of the README runs, as printed.

The Python blocks run on the real default model with this checkout's code. The shell blocks run
in a copy of this checkout with a virtual environment of its own on PATH, into which the install
block installs the copy with pip (the venv sees the test environment's packages, so pip builds
indexmem without downloading anything; the training block's corpus is the one download). Where a
block would take hours or needs a free port, the test says what it changes: the training sizes,
the server's port, and the test command only collects the suite, which `.ci/run` runs whole.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
NAMED = re.compile(r"^<!-- readme-example: (\S+) .*?-->\n```(\w*)\n(.*?)^```$", re.S | re.M)
RUN_HERE = {
    "install",
    "test",
    "chat",
    "embedding",
    "configurations",
    "serve",
    "client",
    "convert",
    "train",
    "docs",
    "json",
}


def _examples() -> dict[str, str]:
    return {m[1]: m[3] for m in NAMED.finditer(README.read_text())}


def _example(name: str) -> str:
    examples = _examples()
    assert name in examples, f"README example {name!r} not found"
    return examples[name]


def test_every_code_block_of_the_readme_is_named_and_run_here():
    text = README.read_text()
    assert len(FENCE.findall(text)) == len(NAMED.findall(text)), (
        "a README code block has no readme-example name"
    )
    assert set(_examples()) == RUN_HERE


@dataclass
class Checkout:
    dir: Path
    env: dict
    installed: subprocess.CompletedProcess


def _run(command: str, checkout: Checkout, timeout: int = 900, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", command],
        cwd=checkout.dir,
        env={**checkout.env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, default_model_path) -> Checkout:
    """A copy of this checkout, a venv on PATH, and the install block run in them."""
    tmp = tmp_path_factory.mktemp("readme")
    copy = tmp / "checkout"
    ignore = shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".*_cache", ".benchmarks", "data"
    )
    shutil.copytree(ROOT, copy, ignore=ignore)
    (copy / default_model_path.name).symlink_to(default_model_path)  # the blocks' --base, as a user has it
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # the venv's bundled setuptools would shadow the environment's (which builds wheels)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "uninstall", "-y", "-q", "setuptools"], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{venv / 'bin'}:{env['PATH']}",
        VIRTUAL_ENV=str(venv),
        PIP_NO_BUILD_ISOLATION="0",  # pip's spelling of --no-build-isolation: nothing to download
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        OMP_NUM_THREADS="1",
    )
    ready = Checkout(copy, env, None)
    ready.installed = _run(_example("install"), ready)
    return ready


def test_the_install_block_installs_the_checkout_and_answers(checkout):
    assert checkout.installed.returncode == 0, checkout.installed.stderr[-3000:]
    assert len(checkout.installed.stdout.split()) > 5  # an answer
    where = _run("python -c 'import indexmem; print(indexmem.__file__)'", checkout).stdout
    assert where.startswith(checkout.env["VIRTUAL_ENV"]), where  # the venv's copy, not an editable one


def test_the_test_block_installs_the_dev_extra_and_collects_the_suite(checkout):
    block = _example("test").strip()
    assert block in (ROOT / ".ci" / "run").read_text()  # CI runs it whole
    result = _run(block, checkout, PYTEST_ADDOPTS="--collect-only -q -p no:cacheprovider")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    per_file = [int(n) for n in re.findall(r"^tests/test_\w+\.py: (\d+)$", result.stdout, re.M)]
    assert len(per_file) == len(list((ROOT / "tests").glob("test_*.py"))) and sum(per_file) > 200


def test_the_chat_block_runs(checkout):
    result = _run(_example("chat"), checkout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Paris" in result.stdout


def _python(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_the_embedding_example_runs(tmp_path, default_model_path):
    checks = "\nassert answer.strip() and 'Paris' in later.chat(messages, max_tokens=16)\n"
    result = _python(_example("embedding") + checks, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "chat.session").exists()


def test_the_configurations_example_runs_and_the_full_cache_is_the_largest(tmp_path, default_model_path):
    result = _python(_example("configurations"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    kv_bytes = [int(line.split()[0].replace(",", "")) for line in result.stdout.splitlines()]
    assert len(kv_bytes) == 4 and kv_bytes[-1] > max(kv_bytes[:-1])  # full KV last
    assert kv_bytes[2] < kv_bytes[0]  # SnapKV's budget of 512 below IndexMem's default


def test_the_json_example_prints_json_that_follows_its_schema(tmp_path, default_model_path):
    result = _python(_example("json"), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reply = json.loads(result.stdout)
    assert isinstance(reply["city"], str) and isinstance(reply["country"], str)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_block_serves_the_client_block(checkout):
    port = str(_free_port())  # the blocks' 8080 may be taken on a test machine
    serve = _example("serve").replace("8080", port)
    assert serve != _example("serve")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {serve}"],
        cwd=checkout.dir,
        env=checkout.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-3000:]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        result = _python(_example("client").replace("8080", port), checkout.dir)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_convert_block_rebuilds_the_shipped_sidecar(checkout):
    result = _run(_example("convert"), checkout)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "indexmem.default_pool_kernel" in result.stdout
    shipped = ROOT / "sidecars" / "smollm2-135m-instruct.indexmem.gguf"
    assert _sha256(checkout.dir / "smollm2.indexmem.gguf") == _sha256(shipped)


# The training block on a tiny model, in a minute: the same command with a smaller budget, and an
# offline corpus already in the cache (the real one is built from registry packages).
SMALLER = {"--hours 3": "--hours 0.0005 --tokens 24576 --seq-len 2048 --threads 1"}


def test_the_train_block_runs_on_a_tiny_model(checkout, tmp_path):
    from test_train_auto import small_corpus
    from tiny_models import write_tiny_model

    block = _example("train")
    for option, smaller in SMALLER.items():
        assert option in block, f"the README's training block no longer says {option}"
        block = block.replace(option, smaller)
    tiny = write_tiny_model(tmp_path / "tiny.gguf", "llama", seed=5, all_f32=True, n_ctx_train=4096)
    block = block.replace("smollm2-135m-instruct", str(tiny))
    small_corpus(tmp_path / "cache" / "corpus")
    result = _run(block, checkout, INDEXMEM_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (checkout.dir / "my.indexmem.gguf").stat().st_size > 0
    report = json.loads((checkout.dir / "my.indexmem.report.json").read_text())
    assert set(report["stage_seconds"]) == {"corpus", "indexer", "memory", "validate"}
    assert result.stdout.strip().splitlines()[-1].strip()  # the chat answered with the new sidecar


def test_the_docs_block_leaves_a_clean_checkout_unchanged(checkout):
    generated = [checkout.dir / "README.md", *sorted((checkout.dir / "docs").rglob("*.*"))]
    before = {p: p.read_bytes() for p in generated}
    result = _run(_example("docs"), checkout)
    assert result.returncode == 0, result.stderr[-3000:]
    after = [checkout.dir / "README.md", *sorted((checkout.dir / "docs").rglob("*.*"))]
    assert after == generated and all(p.read_bytes() == before[p] for p in after)
