"""Run a notebook's code cells as one Python script, for a machine without Jupyter (a lent GPU machine).

    python benchmarks/exec_notebook.py notebooks/train.ipynb -p k_folds=3 -p device='"0"' [--cwd DIR]

The code cells run in order in one namespace, as a kernel would run them; the parameters cell (the
first code cell, as papermill finds it) runs first and each ``-p NAME=VALUE`` (a Python literal)
replaces its value after it. IPython's line magics and shell lines (``%...``, ``!...``) are left out,
so this is for the project's notebooks, which use none but ``%matplotlib inline``. Prints each cell's
number and seconds; a failing cell stops the run with its number and the error (exit 1). The tests run
the notebooks with a real kernel (``tests/test_notebooks.py``); this runner is for the GPU checks
(``benchmarks/gpu_check.sh``), where Jupyter is not installed.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
import traceback
from pathlib import Path


def code_cells(path: str | Path) -> list[str]:
    """The source of each code cell of the notebook at ``path``, magics and shell lines left out."""
    nb = json.loads(Path(path).read_text())
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        cells.append("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))))
    return cells


def parse_parameters(pairs: list[str]) -> dict:
    """``["k=3", "device='0'"]`` -> ``{"k": 3, "device": "0"}``; each value a Python literal."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise SystemExit(f"exec_notebook: -p takes NAME=VALUE, not {pair!r}")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"exec_notebook: the value of {name} is not a Python literal: {value!r}") from None
    return out


def run(path: str | Path, parameters: dict, namespace: dict | None = None) -> dict:
    """Run the code cells of ``path`` with ``parameters`` set after the first; returns the namespace."""
    cells = code_cells(path)
    ns = {"__name__": "__main__"} if namespace is None else namespace
    for i, src in enumerate(cells):
        t0 = time.perf_counter()
        print(f"[exec_notebook] cell {i + 1}/{len(cells)}", flush=True)
        try:
            exec(compile(src, f"{path}:cell{i + 1}", "exec"), ns)
        except SystemExit as exc:
            raise SystemExit(f"[exec_notebook] {path}: cell {i + 1} stopped: {exc}") from None
        except Exception:  # noqa: BLE001 - any error of the notebook's code stops the run, named
            traceback.print_exc()
            raise SystemExit(f"[exec_notebook] {path}: cell {i + 1} failed") from None
        if i == 0:
            stray = sorted(set(parameters) - set(ns))
            if stray:
                raise SystemExit(f"[exec_notebook] {path}: the parameters cell has no {', '.join(stray)}")
            ns.update(parameters)
        print(f"[exec_notebook] cell {i + 1} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return ns


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--cwd", type=Path, help="run in this folder (default: the notebook's, as Jupyter does)")
    a = ap.parse_args(argv)
    nb = a.notebook.resolve()
    params = parse_parameters(a.parameter)
    os.chdir(a.cwd or nb.parent)
    sys.path.insert(0, os.getcwd())
    run(nb, params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
