"""benchmarks/exec_notebook.py: a notebook's code cells as one script (the GPU checks' runner, no Jupyter)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import exec_notebook  # noqa: E402


def _notebook(path: Path, *cells: str) -> Path:
    nb = {"cells": [{"cell_type": "markdown", "source": ["# title"]}]
          + [{"cell_type": "code", "source": c.splitlines(keepends=True), "outputs": []} for c in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_cells_run_in_order_with_the_parameters_replaced(tmp_path, capsys):
    nb = _notebook(tmp_path / "nb.ipynb", "a = 1\nb = 'x'", "%matplotlib inline\n!ls\nc = a * 2", "result = (b, c)")
    ns = exec_notebook.run(nb, exec_notebook.parse_parameters(["a=5"]))
    assert ns["result"] == ("x", 10)
    assert "cell 3 done" in capsys.readouterr().out
    assert exec_notebook.run(nb, {})["result"] == ("x", 2)


def test_a_failing_cell_and_bad_parameters_are_named(tmp_path):
    nb = _notebook(tmp_path / "nb.ipynb", "a = 1", "raise ValueError('boom')", "never = True")
    with pytest.raises(SystemExit, match="cell 2 failed"):
        exec_notebook.run(nb, {})
    with pytest.raises(SystemExit, match="has no z"):
        exec_notebook.run(nb, {"z": 1})
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        exec_notebook.parse_parameters(["k"])
    with pytest.raises(SystemExit, match="not a Python literal"):
        exec_notebook.parse_parameters(["k=open('x')"])
    stop = _notebook(tmp_path / "stop.ipynb", "a = 1", "raise SystemExit('no data here')")
    with pytest.raises(SystemExit, match="cell 2 stopped: no data here"):
        exec_notebook.run(stop, {})
