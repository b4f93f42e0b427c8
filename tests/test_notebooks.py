"""Run the notebooks' code cells in-process at a small size, so they never rot (no Jupyter)."""

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
SMALL = {
    "N_PROBLEMS": 12,
    "N_SAMPLES": 4,
    "POOL": 12,
    "K": 2,
    "HELD_OUT": 6,
    "STEPS": 1,
    "SUPPORT": 3,
    "VALIDATION": 4,
    "TEST": 6,
    "SEEDS": 2,
    "P_GRID": (2,),
    "GAMMA_GRID": (1.5,),
    "SUPPORT_SIZES": (6,),
    "OUT": "experiments",
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_at_a_small_size(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert any("parameters" in c["metadata"].get("tags", []) for c in cells), "no parameters cell"
    namespace: dict = {}
    for cell in cells:
        source = "".join(cell["source"])
        exec(compile(ast.parse(source), f"{path.name}", "exec"), namespace)
        if "parameters" in cell["metadata"].get("tags", []):
            namespace.update({k: v for k, v in SMALL.items() if k in namespace})


def test_there_is_a_notebook():
    assert NOTEBOOKS
