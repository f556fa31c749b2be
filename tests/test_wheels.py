"""The offline install archive of ``build_wheels.sh``, installed the way Kaggle does it.

The archive is built for CPython 3.11, 3.12 and 3.13 (or taken from ``$CZII_WHEELS_DIR``), then
installed, inside a network namespace with no network (``unshare -n``), twice:

- on this interpreter (3.11, torch 2.14.1): ``pip install --no-index --find-links`` into a fresh
  virtual environment that holds only Kaggle's preinstalled packages (symlinked from this
  repository's ``.venv``);
- on Kaggle's Python 3.12 with Kaggle's packages at Kaggle's versions (torch 2.10, numpy 2.0, ...;
  ``tests/kaggle_image.py``, cached once per machine), by the inference notebook's own install
  cell finding the ``.tar.gz`` under an arbitrary dataset name.

Still without network, each installed package predicts a small simulated tomogram with its
bundled weights (on 3.12 with ONNX Runtime and with torch, and the torch picks equal those of
torch 2.14.1 here) and writes a valid submission.

Set ``CZII_WHEELS_DIR`` to a folder holding a prebuilt ``czii_kaggle_offline.tar.gz``
to skip the build; otherwise the archive is built into the repository's ``wheels/``,
which caches the downloaded wheels between runs.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name

from czii_kaggle.kaggle_install import wheel_tags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kaggle_image  # noqa: E402  (tests/kaggle_image.py)
from test_kaggle_install import install_cell  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "czii_kaggle_offline.tar.gz"
#: The Pythons build_wheels.sh targets by default (Kaggle's image runs 3.12).
TARGET_PYTHONS = ("3.11", "3.12", "3.13")
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
#: What Kaggle's image has (build_wheels.sh leaves these and their dependencies out).
KAGGLE_PREINSTALLED = (
    "torch", "torchvision", "numpy", "scipy", "pandas", "matplotlib", "opencv-python",
    "polars", "pyyaml", "tqdm", "pillow", "requests", "psutil",
)
#: What the archive must bring.
MUST_BRING = ("czii-kaggle", "ultralytics", "ultralytics-thop", "onnxruntime", "zarr", "numcodecs", "asciitree")


def _closure(roots) -> dict[str, md.Distribution]:
    """Installed distributions of ``roots`` and everything they need (extras followed), by canonical name."""
    installed = {canonicalize_name(d.metadata["Name"]): d for d in md.distributions()}
    extras_of: dict[str, set[str]] = {}
    todo = [(canonicalize_name(r), set()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if name not in installed or (name in extras_of and extras <= extras_of[name]):
            continue
        extras_of[name] = extras_of.get(name, set()) | extras
        for text in installed[name].requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras_of[name])):
                todo.append((canonicalize_name(req.name), set(req.extras)))
    return {name: installed[name] for name in extras_of}


def _link_preinstalled(links: Path) -> list[str]:
    """Symlink the top-level files and folders of Kaggle's preinstalled packages (and pip) into ``links``."""
    links.mkdir()
    names = []
    for name, dist in sorted(_closure(KAGGLE_PREINSTALLED + ("pip",)).items()):
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops - {"__pycache__"}):
            if top.endswith(".pth") or (links / top).exists():
                continue
            (links / top).symlink_to(site / top)
        names.append(name)
    return names


def _run(cmd, env, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def archive_dir() -> Path:
    """A folder holding czii_kaggle_offline.tar.gz: $CZII_WHEELS_DIR, else freshly built in wheels/."""
    prebuilt = os.environ.get("CZII_WHEELS_DIR")
    if prebuilt:
        folder = Path(prebuilt).resolve()
        assert (folder / ARCHIVE).is_file(), f"CZII_WHEELS_DIR={prebuilt} holds no {ARCHIVE}"
        return folder
    proc = subprocess.run(
        [str(REPO / "build_wheels.sh"), "--out", str(REPO / "wheels")],
        env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, f"build_wheels.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return REPO / "wheels"


def _build(tmp_path: Path, seed_from: Path, *args: str) -> subprocess.CompletedProcess:
    """Run build_wheels.sh into ``tmp_path/out``, seeded with the wheels already in ``seed_from``."""
    out = tmp_path / "out"
    out.mkdir()
    for wheel in seed_from.glob("*.whl"):
        try:
            os.link(wheel, out / wheel.name)
        except OSError:
            (out / wheel.name).write_bytes(wheel.read_bytes())
    return subprocess.run([str(REPO / "build_wheels.sh"), "--out", str(out), *args],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def no_network() -> list[str]:
    """The command prefix that runs a command with no network (loopback only)."""
    try:
        proc = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("`unshare` (util-linux) is not installed: cannot run the install with no network")
    if proc.returncode != 0:
        pytest.skip(f"`unshare -n` is not permitted here ({proc.stderr.strip()}): "
                    "cannot run the install with no network")
    return ["unshare", "-n"]


@pytest.fixture(scope="module")
def installed(archive_dir, no_network, tmp_path_factory):
    """Extract the archive, make a Kaggle-like venv and pip install czii_kaggle from it offline."""
    tmp = tmp_path_factory.mktemp("kaggle")
    with tarfile.open(archive_dir / ARCHIVE) as tar:
        tar.extractall(tmp / "input", filter="data")
    wheels = tmp / "input" / "czii_kaggle_offline"
    manifest = _manifest_for(wheels / "MANIFEST.tsv", HERE)

    venv = tmp / "venv"
    # No pip or setuptools of its own (Python 3.11's ensurepip brings an old setuptools that
    # torch's requirements reject): Kaggle's pip comes with its preinstalled packages.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     None, tmp).stdout.strip())
    preinstalled = _link_preinstalled(tmp / "preinstalled")
    (site / "kaggle_preinstalled.pth").write_text(str(tmp / "preinstalled") + "\n")

    (tmp / "home").mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp / "home"), "TMPDIR": str(tmp),
        "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
        # Kaggle's pip knows no config of this machine (its constraint, find-links, local indexes).
        "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
    }
    before = json.loads(_run([str(py), "-m", "pip", "list", "--format=json"], env, tmp).stdout)
    install = _run(no_network + [str(py), "-m", "pip", "install", "--no-index", "--no-cache-dir",
                                 "--find-links", str(wheels), "czii_kaggle[detect]"], env, tmp)
    after = json.loads(_run([str(py), "-m", "pip", "list", "--format=json", "--path", str(site)], env, tmp).stdout)
    return {
        "tmp": tmp, "wheels": wheels, "manifest": manifest, "py": py, "site": site, "env": env,
        "preinstalled": preinstalled, "before": {canonicalize_name(p["name"]): p["version"] for p in before},
        "install": install, "after": {canonicalize_name(p["name"]): p["version"] for p in after},
    }


def _manifest_for(path: Path, python: str) -> dict[str, tuple[str, str]]:
    """{distribution: (file, version)} of the manifest's wheels chosen for ``python``."""
    manifest = {}
    for line in path.read_text().splitlines()[1:]:
        file, dist, version, pythons, _ = line.split("\t")
        if python in pythons.split():
            assert canonicalize_name(dist) not in manifest, f"two wheels of {dist} for Python {python}"
            manifest[canonicalize_name(dist)] = (file, version)
    return manifest


def _cpython_tags(version: str) -> set[str]:
    """Every tag CPython ``version`` accepts on x86_64 glibc 2.28 (Kaggle's machine or newer)."""
    major, minor = map(int, version.split("."))
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(28, 4, -1)] + [
        "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    tags = list(cpython_tags((major, minor), platforms=platforms))
    tags += compatible_tags((major, minor), f"cp{major}{minor}", platforms=platforms)
    return {str(t) for t in tags}


def test_archive_holds_manifest_and_the_shipped_weights(archive_dir):
    with tarfile.open(archive_dir / ARCHIVE) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("czii_kaggle_offline/MANIFEST.tsv").read().decode().splitlines()
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert all(n.startswith("czii_kaggle_offline/") or n == "czii_kaggle_offline" for n in names)
    assert manifest[0].split("\t") == ["file", "distribution", "version", "python", "sha256"]
    rows = [line.split("\t") for line in manifest[1:]]
    assert {r[0] for r in rows} == {f for f in files if f.endswith(".whl")}
    assert set(files) - {r[0] for r in rows} == {"MANIFEST.tsv", "install.py"}
    assert files["install.py"] == (REPO / "czii_kaggle" / "kaggle_install.py").read_bytes()
    for file, _, _, _, digest in rows:
        assert hashlib.sha256(files[file]).hexdigest() == digest, file
    rows = [(file, dist, version, digest) for file, dist, version, _, digest in rows]
    dists = {canonicalize_name(r[1]): r[2] for r in rows}
    assert set(MUST_BRING) <= set(dists)
    assert dists["ultralytics"] == next(
        line.split("==")[1].strip() for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.startswith("ultralytics==")
    )
    assert dists["zarr"].startswith("2.18.")
    assert tuple(int(p) for p in dists["numcodecs"].split(".")[:2]) < (0, 16)
    # Kaggle's heavy packages stay out.
    assert not set(dists) & {canonicalize_name(n) for n in KAGGLE_PREINSTALLED}
    assert not any(d.startswith("nvidia-") and d != "nvidia-ml-py" or d == "triton" for d in dists)
    czii = next(f for f, _, _, _ in rows if f.startswith("czii_kaggle-"))
    with zipfile.ZipFile(io.BytesIO(files[czii])) as zf:
        shipped = zf.read("czii_kaggle/models/model.pt")
        assert "czii_kaggle/models/czii_config.json" in zf.namelist()
        shipped_onnx = zf.read("czii_kaggle/models/model.onnx")
    assert shipped == (REPO / "czii_kaggle" / "models" / "model.pt").read_bytes()
    assert shipped_onnx == (REPO / "czii_kaggle" / "models" / "model.onnx").read_bytes()


def test_every_package_has_a_wheel_for_every_target_python(archive_dir):
    """Each distribution of the archive has, for each target Python, a wheel that Python installs."""
    rows = [line.split("\t") for line in (archive_dir / "MANIFEST.tsv").read_text().splitlines()[1:]]
    chosen: dict[str, set[str]] = {}
    for file, dist, _, pythons, _ in rows:
        for python in pythons.split():
            assert python in TARGET_PYTHONS, (file, python)
            assert wheel_tags(file) & _cpython_tags(python), f"{file} is listed for Python {python} but does not fit it"
            chosen.setdefault(canonicalize_name(dist), set()).add(python)
    lacking = {dist: sorted(set(TARGET_PYTHONS) - pythons) for dist, pythons in chosen.items() if pythons != set(TARGET_PYTHONS)}
    assert not lacking, f"packages without a wheel for some target Python: {lacking}"
    # the compiled ones really come once per Python
    for dist in ("numcodecs", "onnxruntime"):
        files = {file for file, d, _, _, _ in rows if canonicalize_name(d) == dist}
        assert {next(t.split("-")[0] for t in wheel_tags(f)) for f in files} == {"cp311", "cp312", "cp313"}, files


def test_building_one_python_keeps_the_other_pythons_wheels(archive_dir, tmp_path):
    proc = _build(tmp_path, archive_dir, "--python-version", "3.12")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    for cp in ("cp311", "cp313"):  # the other Pythons' wheels stay (not in this archive)
        assert list(out.glob(f"numcodecs-*-{cp}-*.whl")), cp
    rows = [line.split("\t") for line in (out / "MANIFEST.tsv").read_text().splitlines()[1:]]
    assert {r[3] for r in rows} == {"3.12"}
    with tarfile.open(out / ARCHIVE) as tar:
        in_archive = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert in_archive == {r[0] for r in rows} | {"MANIFEST.tsv", "install.py"}
    assert not any("-cp311-" in n or "-cp313-" in n for n in in_archive)


def test_install_uses_only_the_archive(installed):
    before, after, manifest = installed["before"], installed["after"], installed["manifest"]
    # The fresh venv sees Kaggle's packages but none of what the archive brings.
    for name in ("torch", "torchvision", "numpy", "pandas"):
        assert name in before, f"{name} missing from the Kaggle-like venv"
    assert not set(MUST_BRING) & set(before)
    install = installed["install"]
    out = install.stdout + install.stderr
    assert install.returncode == 0, f"offline pip install failed:\n{out[-4000:]}"
    installed_line = re.search(r"^Successfully installed (.+)$", out, re.M)
    assert installed_line, out[-2000:]
    newly = {canonicalize_name(item.rsplit("-", 1)[0]): item.rsplit("-", 1)[1] for item in installed_line[1].split()}
    # Every wheel of the archive was needed and nothing else was installed: no Kaggle package replaced.
    assert newly == {name: version for name, (_, version) in manifest.items()}
    assert {n: after[n] for n in newly} == newly
    # pip took every one of them from the extracted archive.
    for file, _ in manifest.values():
        assert re.search(rf"^Processing \S*czii_kaggle_offline/{re.escape(file)}\b", out, re.M), file


def test_offline_predict_with_bundled_weights(installed, no_network):
    tmp = installed["tmp"]
    assert installed["install"].returncode == 0, "the offline install failed (see test_install_uses_only_the_archive)"
    script = tmp / "kaggle_predict.py"
    script.write_text(textwrap.dedent("""
        import json, socket, sys
        from pathlib import Path

        try:
            socket.create_connection(("1.1.1.1", 443), timeout=3).close()
            network = "reachable"
        except OSError as exc:
            network = f"unreachable: {exc}"

        import czii_kaggle  # first: it switches Ultralytics' network touchpoints off before importing it
        from czii_kaggle import bundle, predict, submission
        from czii_kaggle.simulate import SimConfig, simulate_dataset

        out = Path(sys.argv[1])
        sim = simulate_dataset(out / "data", n_train=0, n_test=1, config=SimConfig(shape_vox=(32, 128, 128)), seed=3)
        pred = predict.predict_runs(sim.root, "test", progress=False)
        sub = submission.write_submission(pred.picks, out / "submission.csv")
        checked = submission.validate_submission(out / "submission.csv")
        import numcodecs, onnxruntime, torch, ultralytics, zarr
        print("RESULT " + json.dumps({
            "network": network,
            "files": {m.__name__: m.__file__ for m in (czii_kaggle, ultralytics, zarr, numcodecs, torch, onnxruntime)},
            "versions": {m.__name__: m.__version__ for m in (ultralytics, zarr, numcodecs)},
            "weights": str(bundle.load_bundle().weights),
            "test_runs": sim.test_runs,
            "report": pred.report.to_dict(orient="records"),
            "n_rows": len(sub), "n_checked": len(checked),
        }, default=str))
    """))
    proc = _run(no_network + [str(installed["py"]), "-I", str(script), str(tmp / "predict")],
                installed["env"], tmp)
    assert proc.returncode == 0, f"offline predict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["network"].startswith("unreachable")
    site = str(installed["site"])
    for module in ("czii_kaggle", "ultralytics", "zarr", "numcodecs"):
        assert result["files"][module].startswith(site), (module, result["files"][module])
    assert not result["files"]["torch"].startswith(site)  # Kaggle's own torch
    assert result["weights"].startswith(site)
    assert result["versions"]["zarr"].startswith("2.18.")
    assert [r["experiment"] for r in result["report"]] == result["test_runs"]
    assert all(r["status"] == "ok" for r in result["report"]), result["report"]
    # a CPU-only Kaggle kernel runs the bundled ONNX copy with the bundled onnxruntime (no onnx package needed)
    assert all(r["backend"] == "onnx" for r in result["report"]), result["report"]
    assert result["files"]["onnxruntime"].startswith(site)
    assert result["n_rows"] == result["n_checked"] == sum(r["n_picks"] for r in result["report"])
    assert (tmp / "predict" / "submission.csv").read_text().startswith("id,experiment,particle_type,x,y,z")


def test_sdist_only_dependency_is_built_into_a_wheel(archive_dir, tmp_path):
    # asciitree 0.3.3 was published as a source archive only.
    proc = _build(tmp_path, archive_dir, "--require", "asciitree==0.3.3", "--python-version", "3.12")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "asciitree publishes no wheel ('asciitree==0.3.3'): building one from its source archive" in proc.stdout
    rows = [line.split("\t") for line in (tmp_path / "out" / "MANIFEST.tsv").read_text().splitlines()[1:]]
    built = [r for r in rows if r[1] == "asciitree"]
    assert [(r[0], r[2], r[3]) for r in built] == [("asciitree-0.3.3-py3-none-any.whl", "0.3.3", "3.12")]
    # The wheel of an earlier build that this bundle no longer needs is gone.
    assert not list((tmp_path / "out").glob("asciitree-1.*.whl"))
    with tarfile.open(tmp_path / "out" / ARCHIVE) as tar:
        assert "czii_kaggle_offline/asciitree-0.3.3-py3-none-any.whl" in tar.getnames()


def test_unavailable_wheel_fails_naming_the_package(archive_dir, tmp_path):
    proc = _build(tmp_path, archive_dir, "--platform", "linux_armv7l", "--python-version", "3.13")
    assert proc.returncode != 0
    found = re.search(r"ERROR: cannot get a wheel of (\S+) for CPython 3\.13 on linux_armv7l", proc.stderr)
    assert found, proc.stderr[-2000:]
    assert found[1] in _requirement_names()
    assert not (tmp_path / "out" / ARCHIVE).exists()


def _requirement_names() -> set[str]:
    """Everything czii_kaggle[detect] needs, as installed here (canonical names)."""
    names = {"czii-kaggle"}
    todo = [Requirement("czii_kaggle[detect]")]
    while todo:
        req = todo.pop()
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            dep = Requirement(text)
            name = canonicalize_name(dep.name)
            if name not in names and (dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *req.extras))):
                names.add(name)
                todo.append(dep)
    return names


def test_missing_weights_stop_the_build(tmp_path):
    # A copy of the repository without czii_kaggle/models/.
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("build_wheels.sh", "pyproject.toml", "README.md", "requirements.txt"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, repo / name)
    shutil.copytree(REPO / "czii_kaggle", repo / "czii_kaggle",
                    ignore=shutil.ignore_patterns("models", "__pycache__"))
    proc = subprocess.run([str(repo / "build_wheels.sh"), "--out", str(tmp_path / "out")],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"the shipped model is missing: {repo}/czii_kaggle/models/model.pt" in proc.stderr
    assert not list((tmp_path / "out").glob("*"))


# --------------------------------------------------------------------------- Kaggle's Python 3.12 image

#: Predicts the simulated test set with one backend and prints what ran (run inside the Kaggle-like env).
PREDICT_SCRIPT = """
import json, socket, sys
from pathlib import Path

try:
    socket.create_connection(("1.1.1.1", 443), timeout=3).close()
    network = "reachable"
except OSError as exc:
    network = f"unreachable: {exc}"

import czii_kaggle  # first: it switches Ultralytics' network touchpoints off before importing it
from czii_kaggle import bundle, predict, submission

root, backend, out_csv = sys.argv[1], sys.argv[2], Path(sys.argv[3])
pred = predict.predict_runs(root, "test", progress=False, backend=backend, devices=["cpu"])
submission.write_submission(pred.picks, out_csv)
checked = submission.validate_submission(out_csv)
pred.picks.to_csv(out_csv.with_suffix(".picks.csv"), index=False)
import numpy, onnxruntime, torch, ultralytics, zarr
mods = (czii_kaggle, ultralytics, zarr, torch, numpy, onnxruntime)
print("RESULT " + json.dumps({
    "network": network, "python": sys.version.split()[0],
    "files": {m.__name__: m.__file__ for m in mods}, "versions": {m.__name__: m.__version__ for m in mods},
    "weights": str(bundle.load_bundle().weights),
    "report": pred.report.to_dict(orient="records"), "n_checked": len(checked),
}, default=str))
"""


@pytest.fixture(scope="module")
def kaggle312(archive_dir, no_network, tmp_path_factory):
    """Kaggle's Python 3.12 image (cached), a fresh env over it, and the notebook's install cell run there offline."""
    python = kaggle_image.find_python("3.12")
    if python is None:
        pytest.skip("no CPython 3.12 here (pyenv, python3.12 on PATH or $CZII_PYTHON3.12)")
    start = time.monotonic()
    site = kaggle_image.image_site(python)
    image_s = time.monotonic() - start
    tmp = tmp_path_factory.mktemp("kaggle312")
    py = kaggle_image.layered_venv(tmp / "venv", python, site)
    own_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], None, tmp).stdout.strip())
    # the .tar.gz as uploaded, in a dataset of an arbitrary name
    dataset = tmp / "input" / "anything-v3"
    dataset.mkdir(parents=True)
    shutil.copy2(archive_dir / ARCHIVE, dataset / ARCHIVE)
    (tmp / "home").mkdir()
    env = {
        "PATH": f"{py.parent}:/usr/bin:/bin", "HOME": str(tmp / "home"), "TMPDIR": str(tmp), "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1", "CZII_KAGGLE_INPUT": str(tmp / "input"),
    }
    before = json.loads(_run([str(py), "-m", "pip", "list", "--format=json"], env, tmp).stdout)
    (tmp / "install_cell.py").write_text(install_cell())
    start = time.monotonic()
    install = _run(no_network + [str(py), str(tmp / "install_cell.py")], env, tmp)
    install_s = time.monotonic() - start
    after = json.loads(_run([str(py), "-m", "pip", "list", "--format=json", "--path", str(own_site)], env, tmp).stdout)
    print(f"\nKaggle image (Python 3.12): ready in {image_s:.0f} s; install cell ran in {install_s:.0f} s")
    return {
        "tmp": tmp, "py": py, "env": env, "image_site": site, "site": own_site, "install": install,
        "before": {canonicalize_name(p["name"]): p["version"] for p in before},
        "after": {canonicalize_name(p["name"]): p["version"] for p in after},
        "manifest": _manifest_for(archive_dir / "MANIFEST.tsv", "3.12"),
    }


def test_install_cell_on_kaggle_python312(kaggle312):
    before, install = kaggle312["before"], kaggle312["install"]
    # the env is Kaggle's: its packages at its versions, none of what the archive brings
    for spec in kaggle_image.KAGGLE_PACKAGES:
        name, version = spec.split("==")
        assert before.get(canonicalize_name(name)) == version, (spec, before.get(canonicalize_name(name)))
    assert not {"czii-kaggle", "ultralytics", "onnxruntime", "zarr", "numcodecs"} & set(before)
    out = install.stdout + install.stderr
    assert install.returncode == 0, f"the install cell failed on Python 3.12:\n{out[-4000:]}"
    assert out.startswith("czii_kaggle offline install: Python 3.12."), out[:500]
    assert re.search(r"^the archive's \d+ wheels for Python 3\.12 ", out, re.M), out[:2000]
    newly = re.search(r"^Successfully installed (.+)$", out, re.M)[1].split()
    newly = {canonicalize_name(item.rsplit("-", 1)[0]): item.rsplit("-", 1)[1] for item in newly}
    manifest = kaggle312["manifest"]
    # everything installed came from the archive's 3.12 wheels, and nothing of Kaggle's was replaced
    assert {n: manifest[n][1] for n in newly} == newly
    assert {n: kaggle312["after"][n] for n in newly} == newly
    assert not set(newly) & {canonicalize_name(s.split("==")[0]) for s in kaggle_image.KAGGLE_PACKAGES}
    # what the archive holds for 3.12 but pip did not install, Kaggle's image has already
    assert set(manifest) - set(newly) <= set(before), set(manifest) - set(newly)
    for file, _ in (manifest[n] for n in newly):
        assert re.search(rf"^Processing \S*czii_kaggle_offline/{re.escape(file)}\b", out, re.M), file


def test_shipped_model_predicts_on_kaggle_python312_with_torch_210_and_onnxruntime(kaggle312, no_network, tmp_path):
    """model.pt loads and predicts under Kaggle's torch 2.10 (and our 2.14.1) alike; ONNX Runtime too."""
    assert kaggle312["install"].returncode == 0, "the install failed (see test_install_cell_on_kaggle_python312)"
    from czii_kaggle import predict
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    sim = simulate_dataset(tmp_path / "data", n_train=0, n_test=1, config=SimConfig(shape_vox=(48, 256, 256)), seed=11)
    (tmp_path / "predict.py").write_text(PREDICT_SCRIPT)
    results = {}
    for backend in ("torch", "onnx"):
        proc = _run(no_network + [str(kaggle312["py"]), "-I", str(tmp_path / "predict.py"), str(sim.root), backend,
                                  str(tmp_path / f"{backend}.csv")], kaggle312["env"], tmp_path)
        assert proc.returncode == 0, f"{backend} predict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        results[backend] = json.loads(proc.stdout.split("RESULT ", 1)[1])
    for backend, result in results.items():
        assert result["network"].startswith("unreachable")
        assert result["python"].startswith("3.12.")
        assert result["versions"]["torch"].startswith("2.10.0") and result["versions"]["numpy"] == "2.0.2"
        assert result["files"]["torch"].startswith(str(kaggle312["image_site"]))  # Kaggle's own torch
        for module in ("czii_kaggle", "ultralytics", "zarr", "onnxruntime"):
            assert result["files"][module].startswith(str(kaggle312["site"])), (module, result["files"][module])
        assert result["weights"].startswith(str(kaggle312["site"]))
        assert [(r["status"], r["backend"]) for r in result["report"]] == [("ok", backend)], result["report"]
        assert result["n_checked"] == result["report"][0]["n_picks"]
    # the same tomogram predicted here with torch 2.14.1 gives the same picks as torch 2.10 there
    ours = predict.predict_runs(sim.root, "test", progress=False, backend="torch", devices=["cpu"]).picks
    theirs = pd.read_csv(tmp_path / "torch.picks.csv")
    onnx = pd.read_csv(tmp_path / "onnx.picks.csv")
    assert len(ours) > 0, "the shipped model found nothing on the simulated tomogram: the comparison proves little"
    print(f"\npicks: torch 2.14.1 (py{HERE}) {len(ours)}, torch 2.10 (py3.12) {len(theirs)}, onnxruntime (py3.12) {len(onnx)}")
    assert len(theirs) == len(ours) and _matched_share(ours, theirs) == 1.0
    for kind, group in ours.groupby("particle_type"):  # and the same scores
        other = theirs[theirs["particle_type"] == kind]
        assert np.allclose(np.sort(group["score"]), np.sort(other["score"]), atol=1e-3), kind
    assert abs(len(onnx) - len(ours)) <= max(1, 0.02 * len(ours)) and _matched_share(ours, onnx) >= 0.98


def _matched_share(a: pd.DataFrame, b: pd.DataFrame, tol_A: float = 5.0) -> float:
    """Share of the picks of ``a`` with a pick of the same type in ``b`` within ``tol_A`` Angstrom."""
    from scipy.spatial import cKDTree

    hits = 0
    for kind, group in a.groupby("particle_type"):
        other = b[b["particle_type"] == kind][["x", "y", "z"]].to_numpy()
        if len(other):
            dist, _ = cKDTree(other).query(group[["x", "y", "z"]].to_numpy())
            hits += int((dist <= tol_A).sum())
    return hits / len(a)


# --------------------------------------------------------------------------- Python 3.13 (likely Kaggle's next)

#: Runs the archive's compiled wheels on Python 3.13: a Blosc-compressed zarr round trip and model.onnx in ONNX Runtime.
PY313_SCRIPT = """
import json, sys
import numpy as np
import numcodecs, onnxruntime, wrapt, zarr

data = (np.arange(1 << 16, dtype=np.float32) % 251).reshape(64, 1024)
store = zarr.DirectoryStore(sys.argv[2] + ".zarr")
zarr.array(data, chunks=(16, 256), compressor=numcodecs.Blosc(cname="zstd", clevel=3), store=store)
assert np.array_equal(zarr.open(store, mode="r")[:], data)
image = (np.arange(3 * 128 * 128, dtype=np.float32).reshape(1, 3, 128, 128) % 97) / 97
out = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"images": image})[0]
np.save(sys.argv[2], out)
print("RESULT " + json.dumps({"python": sys.version.split()[0],
                             "files": {m.__name__: m.__file__ for m in (numcodecs, onnxruntime, wrapt, zarr)}}))
"""


def test_compiled_wheels_run_on_python313(archive_dir, no_network, tmp_path):
    """zarr and onnxruntime install offline from the archive on Python 3.13 and run (no torch on 3.13 here)."""
    python = kaggle_image.find_python("3.13")
    if python is None:
        pytest.skip("no CPython 3.13 here (pyenv, python3.13 on PATH or $CZII_PYTHON3.13)")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    # what Kaggle's image would have, from the registry (the archive leaves them out)
    got = _run([py, "-m", "pip", "install", "-q", "numpy==2.3.5", "packaging==25.0"],
               {**os.environ, "PIP_NO_CACHE_DIR": "1"}, tmp_path)
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    manifest = _manifest_for(archive_dir / "MANIFEST.tsv", "3.13")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    install = _run(no_network + [py, "-m", "pip", "install", "--no-index", "--find-links", str(archive_dir),
                                 "zarr", "onnxruntime"], env, tmp_path)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    for name in ("numcodecs", "onnxruntime", "wrapt"):  # the cp313 wheels of the archive
        assert re.search(rf"^Processing \S*/{re.escape(manifest[name][0])}\b", install.stdout, re.M), name
    (tmp_path / "check.py").write_text(PY313_SCRIPT)
    model = REPO / "czii_kaggle" / "models" / "model.onnx"
    proc = _run(no_network + [py, "-I", str(tmp_path / "check.py"), str(model), str(tmp_path / "out313.npy")], env, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["python"].startswith("3.13.")
    assert all(f.startswith(str(venv)) for f in result["files"].values()), result["files"]
    # the same output as ONNX Runtime gives here
    import onnxruntime

    image = (np.arange(3 * 128 * 128, dtype=np.float32).reshape(1, 3, 128, 128) % 97) / 97
    ours = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": image})[0]
    assert np.allclose(np.load(tmp_path / "out313.npy"), ours, atol=1e-4)
