"""Every notebook runs top to bottom on the default model (CPU); any cell error fails the suite.

Each notebook is run the way the README tells a user to: ``jupyter nbconvert --execute`` on
the file in ``notebooks/`` (so the working directory is ``notebooks/``), the executed copy
written to a temp folder.  The kernel is the interpreter running the tests (a throw-away
kernelspec pointing at ``sys.executable``), so CI needs no registered Jupyter kernel.
A run must leave ``notebooks/`` as git has it (nothing written beside the notebooks) and
print no ``IProgress`` warning.  Notebooks are kept in git without outputs; a test pins that too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "ftlens-pytest"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    """A kernelspec for this interpreter in a private JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "ftlens (pytest)",
                "language": "python",
            }
        )
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.setenv("MPLBACKEND", "Agg")
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_there_are_the_five_notebooks():
    names = [p.name for p in NOTEBOOKS]
    for stem in ("01_quickstart", "02_per_head", "03_recursion", "04_residual_stream", "05_reasoning_flow"):
        assert f"{stem}.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs"


def _notebooks_dir_status() -> str | None:
    """``git status`` of ``notebooks/`` (untracked and ignored files too); None outside a git checkout."""
    if shutil.which("git") is None:
        return None
    res = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", "notebooks"],
        cwd=ROOT, capture_output=True, text=True,
    )
    return res.stdout if res.returncode == 0 else None


def test_the_dev_extra_installs_nbconvert_and_ipywidgets():
    tomllib = pytest.importorskip("tomllib")
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in dev}
    assert {"nbconvert", "ipywidgets", "ipykernel"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel_env, tmp_path):
    before = _notebooks_dir_status()
    cmd = [
        sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
        f"--ExecutePreprocessor.kernel_name={KERNEL}", "--ExecutePreprocessor.timeout=600",
        "--output-dir", str(tmp_path), str(path),
    ]
    res = subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"jupyter nbconvert --execute {path.name} failed:\n{res.stderr[-4000:]}"
    nb = nbformat.read(tmp_path / path.name, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    html = [
        o for o in outputs
        if o.get("output_type") in ("display_data", "execute_result") and "text/html" in o.get("data", {})
    ]
    assert html, f"{path.name}: no rich HTML view was displayed"
    for o in html:
        assert "unpkg.com" not in o["data"]["text/html"]  # offline-safe by default
    streams = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "IProgress" not in streams, f"{path.name}: tqdm's IProgress warning in the outputs"
    after = _notebooks_dir_status()
    assert after == before, f"running {path.name} wrote into notebooks/:\n{after}"
