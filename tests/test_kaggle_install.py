"""The inference notebook's install cell and the archive's install.py, on fake Kaggle input roots.

The archive here is a fake: a MANIFEST.tsv, empty files named like wheels and the real
install.py (``czii_kaggle/kaggle_install.py``). These tests reach every way the cell can
stop before pip runs; tests/test_wheels.py installs the real archive with the real cell.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import pytest

from czii_kaggle import kaggle_install

REPO = Path(__file__).resolve().parents[1]
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
#: Two CPython versions that are not the one running the tests.
OTHERS = [f"3.{m}" for m in range(11, 16) if f"3.{m}" != HERE][:2]
PLATFORM = "manylinux_2_17_x86_64.manylinux2014_x86_64"


def install_cell() -> str:
    """The inference notebook's install cell (the one naming the archive)."""
    nb = nbformat.read(REPO / "notebooks" / "inference.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code" and "czii_kaggle_offline" in c.source)


def fake_archive(folder: Path, pythons: list[str], absent: tuple[str, ...] = ()) -> Path:
    """A czii_kaggle_offline/ folder in ``folder``: manifest, empty wheel files, the real install.py."""
    wheels = folder / "czii_kaggle_offline"
    wheels.mkdir(parents=True)
    rows = [("czii_kaggle-0.1.0-py3-none-any.whl", "czii_kaggle", "0.1.0", " ".join(pythons))]
    for v in pythons:
        cp = "cp" + v.replace(".", "")
        rows.append((f"numcodecs-0.15.2-{cp}-{cp}-{PLATFORM}.whl", "numcodecs", "0.15.2", v))
    lines = ["file\tdistribution\tversion\tpython\tsha256"]
    for file, dist, version, py in rows:
        if file not in absent:
            (wheels / file).write_bytes(b"")
        lines.append(f"{file}\t{dist}\t{version}\t{py}\t{'0' * 64}")
    (wheels / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")
    shutil.copy2(REPO / "czii_kaggle" / "kaggle_install.py", wheels / "install.py")
    return wheels


def run_cell(input_root: Path) -> subprocess.CompletedProcess:
    """Run the install cell in a fresh interpreter that believes czii_kaggle is not installed."""
    driver = (
        "import importlib.util\n"
        "_real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'czii_kaggle' else _real(name, *a)\n"
        f"exec(compile({install_cell()!r}, 'install_cell', 'exec'))\n"
    )
    return subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120,
                          cwd=input_root.parent, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(input_root.parent),
                               "CZII_KAGGLE_INPUT": str(input_root)})


def tags_of(*pythons: str) -> set[str]:
    tags = {"py3-none-any"}
    for v in pythons:
        cp = "cp" + v.replace(".", "")
        tags |= {f"{cp}-{cp}-manylinux_2_17_x86_64", f"{cp}-{cp}-manylinux2014_x86_64"}
    return tags


# --------------------------------------------------------------------------- install.py's plan


def test_plan_takes_the_wheels_chosen_for_the_python(tmp_path):
    wheels = fake_archive(tmp_path, ["3.11", "3.12", "3.13"])
    rows = kaggle_install.plan(str(wheels), "3.12", tags_of("3.12"))
    assert [(r["distribution"], r["file"].split("-")[2]) for r in rows] == [("czii_kaggle", "py3"), ("numcodecs", "cp312")]


def test_plan_names_package_and_python_without_a_wheel(tmp_path):
    wheels = fake_archive(tmp_path, ["3.11", "3.12"])
    with pytest.raises(kaggle_install.InstallError) as err:
        kaggle_install.plan(str(wheels), "3.13", tags_of("3.13"))
    msg = str(err.value)
    assert msg.startswith(f"no wheel of numcodecs for Python 3.13 in {wheels} (the archive was built for Python 3.11, 3.12)")
    assert "./build_wheels.sh --python-version 3.13" in msg and "\n" not in msg


def test_plan_names_a_wheel_missing_from_the_folder(tmp_path):
    missing = f"numcodecs-0.15.2-cp312-cp312-{PLATFORM}.whl"
    wheels = fake_archive(tmp_path, ["3.11", "3.12"], absent=(missing,))
    with pytest.raises(kaggle_install.InstallError, match=rf"^no wheel of numcodecs for Python 3\.12 in .*{missing} "
                                                          "listed in MANIFEST.tsv is missing"):
        kaggle_install.plan(str(wheels), "3.12", tags_of("3.12"))


def test_plan_names_a_wheel_for_another_platform(tmp_path):
    wheels = fake_archive(tmp_path, ["3.12"])
    arm = {"py3-none-any", "cp312-cp312-manylinux_2_17_aarch64"}
    with pytest.raises(kaggle_install.InstallError, match=r"^no wheel of numcodecs for this Python 3\.12 on .*--platform"):
        kaggle_install.plan(str(wheels), "3.12", arm)


def test_plan_refuses_a_folder_without_manifest_or_python_column(tmp_path):
    with pytest.raises(kaggle_install.InstallError, match=r"has no MANIFEST\.tsv: not a czii_kaggle_offline archive"):
        kaggle_install.plan(str(tmp_path), "3.12", tags_of("3.12"))
    (tmp_path / "MANIFEST.tsv").write_text("file\tdistribution\tversion\tsha256\nx.whl\tx\t1\t00\n")
    with pytest.raises(kaggle_install.InstallError, match=r"names no Python per wheel .*--python-version 3\.1"):
        kaggle_install.plan(str(tmp_path), None, tags_of("3.12"))


def test_wheel_tags_expand_compressed_tag_sets():
    assert kaggle_install.wheel_tags(f"numcodecs-0.15.2-cp312-cp312-{PLATFORM}.whl") == {
        "cp312-cp312-manylinux_2_17_x86_64", "cp312-cp312-manylinux2014_x86_64"}
    assert kaggle_install.wheel_tags("a-1-2-py2.py3-none-any.whl") == {"py2-none-any", "py3-none-any"}


# --------------------------------------------------------------------------- the notebook cell


def test_cell_without_archive_says_what_to_attach(tmp_path):
    root = tmp_path / "input"
    (root / "czii-cryo-et-object-identification").mkdir(parents=True)
    deep = root / "a" / "b" / "c" / "d" / "too-deep"  # 5 folders down: not searched
    fake_archive(deep, OTHERS)
    proc = run_cell(root)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"no czii_kaggle_offline archive under {root}: add the dataset holding czii_kaggle_offline.tar.gz "
        "of build_wheels.sh as an input (wheels/README.md)"]


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "tar.gz"])
def test_cell_finds_the_archive_under_any_dataset_name(tmp_path, packed):
    root = tmp_path / "input"
    # any name; 3 folders deep packed, 4 unpacked (a folder named after the archive, as Kaggle may make)
    dataset = root / "datasets" / "someone" / "my-wheels-v7"
    if not packed:
        dataset = dataset / "czii_kaggle_offline.tar.gz"
    wheels = fake_archive(tmp_path / "build", OTHERS)
    if packed:
        dataset.mkdir(parents=True)
        with tarfile.open(dataset / "czii_kaggle_offline.tar.gz", "w:gz") as tar:
            tar.add(wheels, arcname="czii_kaggle_offline")
    else:
        shutil.copytree(wheels, dataset / "czii_kaggle_offline")
    proc = run_cell(root)
    # found, unpacked when packed, and install.py ran: it prints the Python, then stops before pip
    # naming the package and the Python that lacks a wheel
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"czii_kaggle offline install: Python {HERE}.")
    folder = proc.stdout.split("archive ", 1)[1].split("\n", 1)[0]
    if packed:
        assert Path(folder).parent.parent == tmp_path and Path(folder).parent.name.startswith("czii_wheels_")
    else:
        assert folder == str(dataset / "czii_kaggle_offline")
    assert proc.stderr.strip().splitlines() == [
        f"no wheel of numcodecs for Python {HERE} in {folder} (the archive was built for Python "
        f"{', '.join(OTHERS)}): rebuild it with ./build_wheels.sh --python-version {HERE} and attach the "
        "new version (wheels/README.md)"]
    assert "running:" not in proc.stdout  # pip never ran


# --------------------------------------------------------------------------- pip against the image's packages


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real, tiny pure-Python wheel ``name`` (one module) requiring ``requires``."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                            + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(scope="module")
def image_env(tmp_path_factory):
    """A fresh virtual environment standing for Kaggle's image, with pip (no network used)."""
    env = tmp_path_factory.mktemp("image") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    return env


@pytest.mark.parametrize("image_has", ["excluded", "absent"])
def test_install_keeps_an_image_package_the_archive_excludes(tmp_path, image_env, image_has):
    """ultralytics 8.4.190 asks opencv-python!=4.13.0.90; an image holding just that build must still install.

    Stand-ins: ``fakecv`` (the image's OpenCV), ``fakeultra`` (asks ``fakecv!=1.0.90,>=1.0``), ``fakezarr``
    (a package the image lacks) and ``fakeczii`` (the project, needing both).
    """
    env = tmp_path / "env"
    shutil.copytree(image_env, env, symlinks=True)
    python = env / "bin" / "python"
    image = tmp_path / "image"
    image.mkdir()
    if image_has == "excluded":
        cv = make_wheel(image, "fakecv", "1.0.90")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", str(cv)], check=True, timeout=300)
    archive = tmp_path / "czii_kaggle_offline"
    archive.mkdir()
    wheels = [make_wheel(archive, "fakeultra", "8.4.190", ("fakecv!=1.0.90,>=1.0",)),
              make_wheel(archive, "fakezarr", "2.18.3"),
              make_wheel(archive, "fakeczii", "0.1.0", ("fakeultra", "fakezarr"))]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    (archive / "MANIFEST.tsv").write_text("file\tdistribution\tversion\tpython\tsha256\n" + "".join(
        f"{w.name}\t{w.name.split('-')[0]}\t{w.name.split('-')[1]}\t{py}\t{'0' * 64}\n" for w in wheels))
    shutil.copy2(REPO / "czii_kaggle" / "kaggle_install.py", archive / "install.py")
    proc = subprocess.run([str(python), "-c", f"import sys; sys.path.insert(0, {str(archive)!r}); import install; "
                                              f"install.install({str(archive)!r}, 'fakeczii')"],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    if image_has == "excluded":
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ("warning: this image's fakecv 1.0.90 does not meet fakecv!=1.0.90,>=1.0 (asked by a package of the "
                "archive, which brings no other version): keeping the image's") in proc.stdout
        assert {"fakecv==1.0.90", "fakeultra==8.4.190", "fakezarr==2.18.3", "fakeczii==0.1.0"} <= set(listed)
    else:  # nothing to keep: a real missing dependency still stops with pip's reason, in one line
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"pip install --no-index from {archive} failed (exit 1): ERROR:")
        assert "fakecv" in last and not any(p.startswith("fake") for p in listed)
