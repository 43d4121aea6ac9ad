"""Re-run one saved failing case in this process, to see its traceback or debug it.

A saved case is ``<name>.json`` (the request, the mutation, the result) next to the input: the
mutated file itself, or for a big model patched in place the bytes written over its start
(``<name>.prefix.bin``) or the length it was cut to.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .worker import Engines, handle


def rebuild_input(record: dict, folder: Path, work_dir: Path) -> Path:
    if "file" in record:
        return folder / record["file"]
    patch = record["patch"]
    path = work_dir / Path(patch["source"]).name
    shutil.copyfile(patch["source"], path)
    if "truncate_at" in patch:
        with open(path, "r+b") as f:
            f.truncate(patch["truncate_at"])
    else:
        with open(path, "r+b") as f:
            f.write((folder / patch["prefix"]).read_bytes())
    return path


def replay_case(case_json: Path) -> dict:
    case_json = Path(case_json)
    record = json.loads(case_json.read_text())
    with tempfile.TemporaryDirectory(prefix="indexmem-replay-") as tmp:
        request = {**record["request"], "path": str(rebuild_input(record, case_json.parent, Path(tmp)))}
        result = handle(request, Engines())
    return {"mutation": record["mutation"], "recorded": record["result"]["outcome"], "now": result}
