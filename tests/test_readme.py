"""The README's embedding example runs as printed, on the real default model."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _example(name: str) -> str:
    match = re.search(rf"<!-- readme-example: {name} .*?-->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert match, f"README example {name!r} not found"
    return match.group(1)


def test_the_embedding_example_runs(tmp_path, default_model_path):
    checks = "\nassert answer.strip() and 'Paris' in later.chat(messages, max_tokens=16)\n"
    result = subprocess.run(
        [sys.executable, "-c", _example("embedding") + checks],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "chat.session").exists()
