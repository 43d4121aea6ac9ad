"""Every source package of the repository is installed (pyproject lists them explicitly)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"indexmem"} | {
        "indexmem." + ".".join(init.parent.relative_to(ROOT).parts)
        for init in ROOT.rglob("__init__.py")
        if init.parent != ROOT and not {"tests", "build", ".git"} & set(init.parent.relative_to(ROOT).parts)
    }
    assert found == listed
