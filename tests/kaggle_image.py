"""A stand-in for Kaggle's notebook image: its Python and its preinstalled packages at its versions.

Building it downloads about 4 GB (torch's CUDA wheel and its nvidia-* libraries), so it is built
once per machine into a cache folder keyed by the Python and the package list, and reused:
``$CZII_KAGGLE_IMAGE_CACHE`` (default ``~/.cache/czii_kaggle/kaggle-image``). Each test run
layers a fresh virtual environment over it (:func:`layered_venv`): a ``.pth`` file puts the
cached site-packages on its path, so pip sees Kaggle's packages as installed and installs
anything new into the fresh environment only. Run as a script to build (or find) the cache::

    .venv/bin/python tests/kaggle_image.py 3.12
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Kaggle's notebook image (December 2025, Python 3.12), as close as PyPI allows: the versions
#: Kaggle reports where known (torch 2.10, torchvision 0.25, numpy 2.0, scipy 1.16, pandas 2.2,
#: matplotlib 3.10, opencv-python 4.13, protobuf 5.29), a release of the same months otherwise.
#: torch is PyPI's CUDA 12.8 build, as Kaggle's; no test here runs CUDA.
KAGGLE_PACKAGES = (
    "pip==25.3", "torch==2.10.0", "torchvision==0.25.0", "numpy==2.0.2", "scipy==1.16.3",
    "pandas==2.2.3", "matplotlib==3.10.7", "opencv-python==4.13.0.92", "polars==1.35.2",
    "psutil==7.1.3", "httpx==0.28.1", "protobuf==5.29.5", "pyyaml==6.0.3", "tqdm==4.67.1",
    "pillow==11.3.0", "requests==2.32.5", "packaging==25.0",
)


def find_python(version: str) -> str | None:
    """A working CPython ``version`` ("3.12"): ``$CZII_PYTHON3.12``, pyenv's, or ``python3.12`` on PATH."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [os.environ.get(f"CZII_PYTHON{version}"),
                  *map(str, sorted(pyenv_root.glob(f"versions/{version}.*/bin/python{version}"))[::-1]),
                  shutil.which(f"python{version}")]
    for python in filter(None, candidates):
        try:
            ok = subprocess.run([python, "-c", f"import sys; assert sys.version.startswith('{version}.')"],
                                capture_output=True, timeout=60).returncode == 0
        except OSError:
            ok = False
        if ok:
            return python
    return None


def _python_facts(python: str) -> tuple[str, str]:
    """(full version, purelib path of a venv-relative layout) of ``python``."""
    out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    return out, f"lib/python{'.'.join(out.split('.')[:2])}/site-packages"


def cache_root() -> Path:
    return Path(os.environ.get("CZII_KAGGLE_IMAGE_CACHE", Path.home() / ".cache" / "czii_kaggle" / "kaggle-image"))


def image_site(python: str, packages=KAGGLE_PACKAGES, log=print) -> Path:
    """Site-packages of a cached environment of ``python`` holding ``packages``; built when absent.

    Built into a temporary folder and renamed into place (a crashed or concurrent build never
    leaves a half-built cache).
    """
    full_version, purelib = _python_facts(python)
    key = hashlib.sha256("\n".join((full_version, *packages)).encode()).hexdigest()[:16]
    root = cache_root()
    env_dir = root / f"py{full_version}-{key}"
    if (env_dir / "COMPLETE").is_file():
        return env_dir / purelib
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".building-py{full_version}-", dir=root))
    try:
        start = time.monotonic()
        log(f"building the Kaggle image stand-in (Python {full_version}) in {env_dir}: downloads ~4 GB once")
        subprocess.run([python, "-m", "venv", str(building)], check=True, timeout=600)
        env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        proc = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", *packages],
                              env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"building the Kaggle image stand-in failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        (building / "PACKAGES.txt").write_text("\n".join(packages) + "\n")
        (building / "COMPLETE").write_text(f"built in {time.monotonic() - start:.0f} s\n")
        try:
            building.rename(env_dir)
        except OSError:  # another process finished first: use theirs
            if not (env_dir / "COMPLETE").is_file():
                raise
        log(f"built in {time.monotonic() - start:.0f} s")
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return env_dir / purelib


def layered_venv(dest: Path, python: str, site: Path) -> Path:
    """A fresh venv at ``dest`` (no packages of its own) that sees ``site``'s packages; returns its python."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(dest)], check=True, timeout=300)
    py = dest / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    (Path(own) / "kaggle_image.pth").write_text(f"{site}\n")
    return py


if __name__ == "__main__":
    version = sys.argv[1] if len(sys.argv) > 1 else "3.12"
    python = find_python(version)
    if python is None:
        raise SystemExit(f"no Python {version} found (set CZII_PYTHON{version})")
    print(image_site(python))
