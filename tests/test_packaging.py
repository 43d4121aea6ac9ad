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


def test_every_source_folder_is_a_package():
    """A folder of modules without ``__init__.py`` imports from a checkout (a namespace package)
    but is left out of an installed wheel."""
    skip = {"tests", "build", ".git", "docs", "checkpoints", "sidecars"}
    folders = {
        py.parent
        for py in ROOT.rglob("*.py")
        if not skip & set(py.relative_to(ROOT).parts)
        and not any(p.startswith(".") for p in py.relative_to(ROOT).parts)
    }
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert not missing, f"folders of modules without __init__.py: {missing}"


def test_every_console_script_runs_its_command():
    """Each [project.scripts] entry, called as the installed script calls it (no arguments;
    argv from the command line), prints its usage for --help."""
    import subprocess
    import sys

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, attr = target.split(":")
        code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {attr}; {attr}()"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Usage" in result.stdout, (name, result.stderr[-2000:])


def test_the_kernel_sources_are_installed():
    """ggml_ops/kernel.py compiles the CPU kernels' sources on first use: the wheel must carry them."""
    from fnmatch import fnmatch

    import indexmem.ggml_ops
    from indexmem.ggml_ops.kernel import HEADERS, SOURCES

    package_dir = Path(indexmem.ggml_ops.__file__).parent  # site-packages when installed from the wheel
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for source in SOURCES + HEADERS:
        assert source.is_file() and source.parent == package_dir, source
        assert any(fnmatch(source.name, pattern) for pattern in data["indexmem.ggml_ops"]), source.name
