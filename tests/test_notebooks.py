"""The three notebooks: stored clean, and executed headlessly on tiny simulated data.

Execution uses nbclient with a kernel spec (written to a temporary ``JUPYTER_PATH``)
that runs this interpreter, so the kernel sees the same ``czii_kaggle`` and packages.
Parameters are injected papermill-style: the overrides are appended to the cell tagged
``parameters``.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("eda", "train", "inference", "train_heatmap")
TINY_SHAPE = (48, 128, 128)

#: Prepended to the inference notebook: records (and refuses) every attempt to reach a
#: non-local address through Python's socket module. The kernel's own ZMQ channels do
#: not go through it.
NETWORK_GUARD = '''
import socket as _socket
_NET_ATTEMPTS = []
_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}
_orig_connect, _orig_getaddrinfo = _socket.socket.connect, _socket.getaddrinfo
def _guard_connect(self, address):
    if self.family != getattr(_socket, "AF_UNIX", None) and str(address[0]) not in _LOCAL:
        _NET_ATTEMPTS.append(("connect", str(address)))
        raise OSError(f"network blocked by the test: {address}")
    return _orig_connect(self, address)
def _guard_getaddrinfo(host, *args, **kwargs):
    if str(host) not in _LOCAL:
        _NET_ATTEMPTS.append(("getaddrinfo", str(host)))
        raise _socket.gaierror(f"network blocked by the test: {host}")
    return _orig_getaddrinfo(host, *args, **kwargs)
_socket.socket.connect = _guard_connect
_socket.getaddrinfo = _guard_getaddrinfo
'''
NETWORK_CHECK = "assert not _NET_ATTEMPTS, _NET_ATTEMPTS"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


# --------------------------------------------------------------------------- stored form (fast)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    cells = _code_cells(nb)
    assert "parameters" in cells[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
    for c in cells:
        assert c.outputs == [] and c.execution_count is None, f"stored output in {name}: {c.source[:60]!r}"
    text = "\n".join(c.source for c in nb.cells)
    # no machine-specific paths; Kaggle's own mount points are the only absolute paths
    for path in re.findall(r"""["'](/[^"']*)["']""", text):
        assert path.startswith("/kaggle/"), f"machine-specific path {path!r} in {name}.ipynb"
    # the parameters cell holds plain assignments only
    for line in cells[0].source.splitlines():
        assert not line.strip() or line.startswith("#") or re.match(r"^\w+ = ", line), line


def test_inference_installs_offline_only_when_needed():
    src = "\n".join(c.source for c in _code_cells(_read("inference")))
    # any dataset under Kaggle's inputs; the archive's install.py runs pip --no-index (tests/test_kaggle_install.py)
    assert '"CZII_KAGGLE_INPUT", "/kaggle/input"' in src and "czii_kaggle_offline/install.py" in src
    assert 'find_spec("czii_kaggle") is None' in src and '["install"]' in src
    assert "http" not in src.lower()


def _code_lines(text: str) -> list[str]:
    """Statements without indentation, comments or blank lines."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_inference_install_cell_is_the_documented_one():
    """The notebook installs exactly as wheels/README.md tells a Kaggle user to."""
    readme = (NOTEBOOKS.parent / "wheels" / "README.md").read_text()
    block = re.search(r"## First cell of the inference notebook.*?```python\n(.*?)```", readme, re.S).group(1)
    cell = next(c.source for c in _code_cells(_read("inference")) if "czii_kaggle_offline" in c.source)
    documented, used = _code_lines(block), _code_lines(cell)
    it = iter(used)
    assert all(line in it for line in documented), (documented, used)  # same statements, same order


# --------------------------------------------------------------------------- execution (slow)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    """A kernel spec running this interpreter, in a temporary JUPYTER_PATH."""
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    spec_dir = jupyter_dir / "kernels" / "czii-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "czii_kaggle test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(jupyter_dir))
    yield "czii-test"
    mp.undo()


def _execute(name: str, params: dict, cwd: Path, kernel_name: str, prepend: str = "", append: str = ""):
    """Execute a notebook with ``params`` appended to its parameters cell; returns the executed notebook."""
    from nbclient import NotebookClient

    nb = _read(name)
    cell = _code_cells(nb)[0]
    cell.source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    if prepend:
        nb.cells.insert(0, nbformat.v4.new_code_cell(prepend))
    if append:
        nb.cells.append(nbformat.v4.new_code_cell(append))
    for i, c in enumerate(nb.cells):
        c["id"] = f"test-{i}"
    NotebookClient(nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(cwd)}}).execute()
    nbformat.write(nb, cwd / f"{name}.executed.ipynb")  # left for inspection
    return nb


def _outputs(nb, kind: str) -> list:
    """Every output of the executed notebook carrying MIME type / stream text ``kind``."""
    found = []
    for c in _code_cells(nb):
        for o in c.outputs:
            if kind == "stream" and o.output_type == "stream":
                found.append(o.text)
            elif kind in o.get("data", {}):
                found.append(o["data"][kind])
    return found


@pytest.mark.slow
def test_eda_notebook_draws_every_figure(tmp_path, kernel_name):
    out = tmp_path / "figures"
    nb = _execute(
        "eda",
        dict(sim_dir="data", sim_n_train=2, sim_shape_vox=TINY_SHAPE, sim_real_layouts=False,
             sim_count_scale=20.0, seed=3, crop_size_vox=16, out_dir=str(out)),
        tmp_path,
        kernel_name,
    )
    import matplotlib.image

    expected = {"pick_counts", "orthoslices", "z_distribution", "nearest_neighbours", "crop_gallery",
                "intensity_histogram", "picks_3d"}
    assert {p.stem for p in out.glob("*.png")} == expected
    for p in out.glob("*.png"):
        image = matplotlib.image.imread(p)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image[..., :3].std() > 0.01, p.name
    # each figure is also displayed inline
    assert len(_outputs(nb, "image/png")) == len(expected)
    # the counts table shows the simulated picks of both runs
    from czii_kaggle.picks import read_all_picks
    from czii_kaggle.viz import pick_counts

    counts = pick_counts(read_all_picks(tmp_path / "data" / "czii-cryo-et-object-identification"))
    assert len(counts) == 2 and counts.to_numpy().sum() > 0
    html = _outputs(nb, "text/html")
    assert any(counts.index[0] in h and "virus-like-particle" in h for h in html)


@pytest.mark.slow
def test_train_notebook_fine_tunes_in_kaggles_layout(tmp_path, kernel_name):
    """The train notebook on training runs laid out as Kaggle mounts them (a temporary
    kaggle/input/czii-cryo-et-object-identification tree, simulated voxels): k folds from the
    shipped model, out-of-fold tuning, a final fit, a bundle in kaggle/working that predicts."""
    from czii_kaggle import layout
    from czii_kaggle.predict import DEFAULT_BUNDLE, load_bundle
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    kaggle = tmp_path / "kaggle"
    ds = simulate_dataset(kaggle / "input", n_train=3, n_test=1, seed=4, count_scale=20.0,
                          config=SimConfig(shape_vox=TINY_SHAPE))
    assert ds.root == kaggle / "input" / layout.KAGGLE_ROOT.name
    out = kaggle / "working" / "czii_finetuned"
    nb = _execute(
        "train",
        dict(data_root=str(ds.root), k_folds=3, fold_epochs=1, final_epochs=1, n_sim_runs=2, sim_val_runs=1,
             sim_runs_shape_vox=TINY_SHAPE, imgsz=128, batch=8, workers=0, device="cpu", heatmap_steps=2,
             work_dir=str(tmp_path / "tmp" / "czii_finetune"), out_dir=str(out)),
        tmp_path,
        kernel_name,
    )
    record = json.loads((out / "FINETUNE.json").read_text())
    runs = layout.list_pick_runs(ds.root)
    held = [f["val_real"] for f in record["folds"]]
    assert sorted(r for h in held for r in h) == runs and all(len(h) == 1 for h in held)  # leave-one-run-out
    assert record["sim_runs"] == ["TS_sim_21_0", "TS_sim_21_1"] and record["sim_val_runs"] == ["TS_sim_21_1"]
    assert len(record["scores"]) == 3 and all(0.0 <= v <= 1.0 for v in record["scores"].values())
    # these tiny runs are smaller than one window of either heatmap network: both fine-tunings fail (said), the
    # start's networks cannot read them either, and the bundle runs YOLO alone, and says why
    streams = "".join(_outputs(nb, "stream"))
    for net in ("heatmap", "heatmap_l0"):
        assert f"the fine-tuning of {net} in fold0 failed" in streams
        assert f"{net} failed on {runs[0]}" in record["heatmap_note"]
    assert record["default_detectors"] == ["yolo"] and "smaller than one heatmap window" in record["heatmap_note"]
    assert not (out / "ensemble.json").exists()
    assert {r["particle_type"] for r in record["tuned_table"]} <= {"apo-ferritin", "beta-amylase",
                                                                   "beta-galactosidase", "ribosome",
                                                                   "thyroglobulin", "virus-like-particle"}
    # every training started from the shipped model, on its preprocessing (2.5D offset 3)
    work = tmp_path / "tmp" / "czii_finetune"
    for name in ("fold0", "fold1", "fold2", "final"):
        cfg = json.loads((work / name / "bundle" / "czii_config.json").read_text())
        assert cfg["train"]["model"] == "czii_kaggle/models/model.pt" and cfg["train"]["epochs"] == 1
        assert cfg["preprocess"] == json.loads((DEFAULT_BUNDLE / "czii_config.json").read_text())["preprocess"]
    # a fold validates on the real run it holds out, and never trains on it
    fold0 = record["folds"][0]
    train_txt = (work / "fold0" / "train.txt").read_text()
    val_lines = (work / "fold0" / "val.txt").read_text().split()
    assert val_lines and all(Path(p).name.startswith(fold0["val_real"][0] + "_z") for p in val_lines)
    assert f"/{fold0['val_real'][0]}_z" not in train_txt and "/TS_sim_21_1_z" not in train_txt
    # the bundle holds the tuned thresholds, and the inference notebook takes it as `weights`
    bundle = load_bundle(out)
    assert json.loads((out / "czii_config.json").read_text())["aggregate"] == bundle.aggregate.to_dict()
    inference = _execute("inference", dict(data_root=str(ds.root), weights=str(out), out_csv="submission.csv"),
                         tmp_path, kernel_name)
    assert "1/1 runs predicted" in "".join(_outputs(inference, "stream"))
    assert (tmp_path / "submission.csv").is_file()
    assert "estimate on one T4" in streams and "fold2: holds out" in streams and "start model, its own" in streams


@pytest.mark.slow
def test_train_heatmap_notebook_saves_a_tuned_bundle(tmp_path, kernel_name):
    nb = _execute(
        "train_heatmap",
        dict(sim_dir="data", sim_n_train=2, sim_shape_vox=TINY_SHAPE, seed=2, steps=3, batch=1,
             patch_vox=(16, 32, 32), window_vox=(24, 64, 64), bundle_dir="bundle"),
        tmp_path,
        kernel_name,
    )
    from czii_kaggle.bundle import load_heatmap_bundle

    bundle = load_heatmap_bundle(tmp_path / "bundle")
    assert bundle.record["steps"] == 3 and bundle.config.window_vox == (24, 64, 64)
    shipped = load_heatmap_bundle()  # by default it fine-tunes the shipped network, with its config
    assert bundle.record["init"] == str(shipped.weights) and bundle.config.channels == shipped.config.channels
    assert bundle.config.tta_views == shipped.config.tta_views and bundle.record["train_config"]["lr"] == 3e-4
    # the bundle holds the trained weights with whole-tomogram statistics and test-time adaptation
    assert bundle.record["recalibration"]["runs"] == 1 and bundle.config.bn_adapt == 0.5
    assert (tmp_path / "bundle_training" / "checkpoint.pt").is_file() and not (tmp_path / "bundle" / "checkpoint.pt").exists()
    assert bundle.onnx == tmp_path / "bundle" / "heatmap.onnx"
    doc = json.loads((tmp_path / "bundle" / "heatmap.json").read_text())
    from czii_kaggle import layout

    runs = layout.list_pick_runs(tmp_path / "data" / "czii-cryo-et-object-identification")
    assert doc["tuned_on"][0]["runs"] == runs[-1:] and bundle.record["sources"][0]["runs"] == runs[:-1]
    assert any("score on 1 held-out run(s):" in s for s in _outputs(nb, "stream"))


@pytest.fixture(scope="module")
def throwaway_weights(tmp_path_factory) -> Path:
    """An untrained six-class model built from the package's yaml (the shipped one may not exist yet)."""
    from czii_kaggle import offline, particles

    cfg = Path(__file__).resolve().parents[1] / "czii_kaggle" / "model_cfg" / "yolo11p-czii.yaml"
    model = offline.import_ultralytics().YOLO(str(cfg))
    model.model.names = dict(enumerate(particles.NAMES))
    path = tmp_path_factory.mktemp("weights") / "throwaway.pt"
    model.save(str(path))
    return path


@pytest.mark.slow
def test_inference_notebook_writes_a_valid_submission_offline(tmp_path, kernel_name, throwaway_weights):
    nb = _execute(
        "inference",
        dict(weights=str(throwaway_weights), sim_dir="data", sim_n_test=1, sim_shape_vox=TINY_SHAPE,
             seed=5, out_csv="out/submission.csv"),
        tmp_path,
        kernel_name,
        prepend=NETWORK_GUARD,
        append=NETWORK_CHECK,
    )
    from czii_kaggle.submission import SUBMISSION_COLUMNS, validate_submission

    csv = tmp_path / "out" / "submission.csv"
    sub = validate_submission(csv)
    assert list(pd.read_csv(csv).columns) == SUBMISSION_COLUMNS
    from czii_kaggle import layout

    test_runs = layout.list_runs(tmp_path / "data" / "czii-cryo-et-object-identification", "test")
    assert len(test_runs) == 1 and set(sub["experiment"]) <= set(test_runs)
    streams = "".join(_outputs(nb, "stream"))
    assert "1/1 runs predicted" in streams
    match = re.search(r"score against the simulated truth: ([0-9.]+)", streams)
    assert match and 0.0 <= float(match.group(1)) <= 1.0


@pytest.mark.slow
def test_inference_notebook_on_kaggle_without_the_data_stops_and_writes_nothing(tmp_path, kernel_name, monkeypatch):
    """A Kaggle kernel (recognised by its env var) without the competition data attached stops with
    the one-line reason; it never simulates a test set nor writes a submission."""
    from nbclient.exceptions import CellExecutionError

    from czii_kaggle import layout

    if layout.KAGGLE_ROOT.is_dir():
        pytest.skip("the competition data is attached here")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # inherited by the kernel
    with pytest.raises(CellExecutionError) as err:
        _execute("inference", dict(sim_dir="data", sim_n_test=1, sim_shape_vox=TINY_SHAPE, out_csv="submission.csv"),
                 tmp_path, kernel_name)
    assert err.value.ename == "CziiInputError"
    assert err.value.evalue.startswith(f"{layout.KAGGLE_ROOT}: the competition data is not attached")
    assert not (tmp_path / "data").exists() and not (tmp_path / "submission.csv").exists()


@pytest.mark.slow
def test_inference_notebook_on_kaggle_stops_on_runs_without_picks(tmp_path, kernel_name, throwaway_weights,
                                                                    monkeypatch):
    """On Kaggle a run that gives no picks (an untrained model here) is shown with the reason and
    stops the notebook, after the other runs' submission is written; allow_failed_runs goes on."""
    from nbclient.exceptions import CellExecutionError

    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path / "data", n_train=0, n_test=1, seed=2, config=SimConfig(shape_vox=TINY_SHAPE))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    params = dict(data_root=str(ds.root), weights=str(throwaway_weights), out_csv="submission.csv")
    with pytest.raises(CellExecutionError) as err:
        _execute("inference", params, tmp_path, kernel_name)
    assert err.value.ename == "CziiRunError"
    assert err.value.evalue.startswith(f"1 of 1 run(s) failed or gave no picks ({ds.test_runs[0]}; first: no picks:")
    assert (tmp_path / "submission.csv").is_file()
    nb = _execute("inference", {**params, "allow_failed_runs": True, "out_csv": "allowed.csv"}, tmp_path, kernel_name)
    assert any("1 run(s) failed or gave no picks" in s for s in _outputs(nb, "stream"))
    assert any("no picks: the model found nothing" in h for h in _outputs(nb, "text/html"))


SHIPPED = Path(__file__).resolve().parents[1] / "czii_kaggle" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / "TRAINING.json").is_file(),
                    reason="no trained shipped model yet (czii_kaggle/models/TRAINING.json absent)")
@pytest.mark.parametrize("detectors", [None, "yolo,heatmap"], ids=["default", "ensemble"])
def test_inference_notebook_with_the_shipped_model_finds_particles(tmp_path, kernel_name, detectors):
    nb = _execute(
        "inference",
        dict(sim_dir="data", sim_n_test=1, sim_shape_vox=(64, 320, 320), seed=11, out_csv="submission.csv",
             detectors=detectors),
        tmp_path,
        kernel_name,
        prepend=NETWORK_GUARD,
        append=NETWORK_CHECK,
    )
    from czii_kaggle import metric
    from czii_kaggle.submission import read_solution, validate_submission

    sub = validate_submission(tmp_path / "submission.csv")
    truth = read_solution(tmp_path / "data" / "test_solution.csv")
    assert len(sub) > 0
    score = metric.score(truth, sub)
    assert score > 0.0
    assert f"score against the simulated truth: {score:.4f}" in "".join(_outputs(nb, "stream"))
    if detectors is not None:  # the shipped bundle's ensemble of both detectors ran
        assert "detectors: yolo + heatmap" in "".join(_outputs(nb, "stream"))
