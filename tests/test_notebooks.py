"""The notebooks run top to bottom with small settings (nbclient), and are committed as
`notebooks/build.py` writes them (outputs stripped)."""

import importlib.util
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# Small settings: each notebook runs in well under a minute or two on 2 CPU cores.
SMALL = {
    "DATA": "bundled", "TRAIN_IMAGES": 600, "TEST_IMAGES": 200, "CALIBRATION_IMAGES": 128,
    "EPOCHS": 1, "FINETUNE_EPOCHS": 1, "TIME_BUDGET": 5, "TRAINED": True,
    "TRAINED_EPOCHS": 1, "TRIALS": 3, "VAL_IMAGES": 300, "SAMPLERS": ("xgboost", "random"),
    "LATENCY_IMAGES": 20,
}


def _builder():
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _small(notebook):
    """Adds a cell after the `parameters` cell that sets the small values it defines."""
    index = next(i for i, c in enumerate(notebook.cells)
                 if "parameters" in c.metadata.get("tags", []))
    names = [line.split("=")[0].strip() for line in notebook.cells[index].source.splitlines()
             if "=" in line and not line.startswith("#")]
    source = "\n".join(f"{n} = {SMALL[n]!r}" for n in names if n in SMALL)
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source))
    return notebook


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_with_small_settings(name, tmp_path, monkeypatch):
    notebook = _small(nbformat.read(NOTEBOOKS / name, as_version=4))
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", pythonpath)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors


def test_committed_notebooks_are_what_build_writes_without_outputs():
    build = _builder()
    assert sorted(build.NOTEBOOKS) == sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    for name in build.NOTEBOOKS:
        committed = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert committed == build.build(name), f"rebuild with python notebooks/build.py: {name}"
        for cell in committed.cells:
            assert not cell.get("outputs") and not cell.get("execution_count")
