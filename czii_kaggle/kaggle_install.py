"""Install czii_kaggle from its offline archive; ``build_wheels.sh`` ships this file in it as ``install.py``.

It runs before czii_kaggle is installed, so it needs nothing but the standard library and pip.
The inference notebook's install cell finds the archive under any ``/kaggle/input/*`` dataset
and calls :func:`install` on its folder; by hand: ``python czii_kaggle_offline/install.py``.

:func:`install` prints the running Python and what the archive offers it, stops with one line
naming the package and the Python when a wheel is missing (before pip touches anything),
then runs ``pip install --no-index --find-links <folder> "czii_kaggle[detect]"``; when a package
the image already has stands in the way (see :func:`install`) it keeps the image's and installs
the rest with ``--no-deps``.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys

ARCHIVE = "czii_kaggle_offline"
REQUIREMENT = "czii_kaggle[detect]"
REBUILD = "rebuild it with ./build_wheels.sh --python-version {py} and attach the new version (wheels/README.md)"


class InstallError(SystemExit):
    """A one-line reason the install cannot go on (a notebook shows just the message)."""


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def supported_tags() -> set[str]:
    """The wheel tags this interpreter accepts, as pip computes them."""
    try:
        from packaging.tags import sys_tags
    except ImportError:  # pip carries its own copy
        from pip._vendor.packaging.tags import sys_tags
    return {str(t) for t in sys_tags()}


def wheel_tags(filename: str) -> set[str]:
    """Tags of a wheel file name ``name-version[-build]-python-abi-platform.whl``."""
    python, abi, plat = filename[: -len(".whl")].split("-")[-3:]
    return {f"{p}-{a}-{t}" for p in python.split(".") for a in abi.split(".") for t in plat.split(".")}


def read_manifest(folder: str) -> list[dict]:
    """Rows of the archive's MANIFEST.tsv (file, distribution, version, python, sha256)."""
    path = os.path.join(folder, "MANIFEST.tsv")
    if not os.path.isfile(path):
        raise InstallError(f"{folder} has no MANIFEST.tsv: not a czii_kaggle_offline archive of build_wheels.sh; "
                           "attach the dataset made from wheels/czii_kaggle_offline.tar.gz (wheels/README.md)")
    lines = open(path, encoding="utf-8").read().splitlines()
    header = lines[0].split("\t")
    if "python" not in header:
        raise InstallError(f"{path} names no Python per wheel (an archive from before multi-Python builds): "
                           + REBUILD.format(py=running_python()))
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def plan(folder: str, python: str | None = None, tags: set[str] | None = None) -> list[dict]:
    """The manifest rows to install for ``python`` ("3.12"); stops naming each package without a usable wheel."""
    python = python or running_python()
    tags = supported_tags() if tags is None else tags
    rows = read_manifest(folder)
    built_for = sorted({v for r in rows for v in r["python"].split()}, key=lambda v: tuple(map(int, v.split("."))))
    usable = [r for r in rows if wheel_tags(r["file"]) & tags]
    if python not in built_for:
        lacking = sorted({r["distribution"] for r in rows} - {r["distribution"] for r in usable})
        if lacking:
            raise InstallError(f"no wheel of {', '.join(lacking)} for Python {python} in {folder} (the archive "
                               f"was built for Python {', '.join(built_for)}): " + REBUILD.format(py=python))
        print(f"warning: the archive was built for Python {', '.join(built_for)}, not {python}; "
              "its wheels fit this one, trying", flush=True)
        return usable
    needed = [r for r in rows if python in r["python"].split()]
    absent = [r for r in needed if not os.path.isfile(os.path.join(folder, r["file"]))]
    if absent:
        raise InstallError(f"no wheel of {', '.join(r['distribution'] for r in absent)} for Python {python} in "
                           f"{folder}: {', '.join(r['file'] for r in absent)} listed in MANIFEST.tsv is missing; "
                           "upload the whole archive again")
    unfit = [r for r in needed if r not in usable]
    if unfit:
        raise InstallError(f"no wheel of {', '.join(r['distribution'] for r in unfit)} for this Python {python} "
                           f"on {platform.machine()} in {folder} ({', '.join(r['file'] for r in unfit)} does not "
                           "fit it): rebuild the archive with ./build_wheels.sh --platform for this machine")
    return needed


def _run_pip(args: list[str]) -> tuple[int, list[str]]:
    """Run ``python -m pip ARGS`` printing its output (a notebook shows it); exit code and its lines."""
    cmd = [sys.executable, "-m", "pip", *args]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    return proc.wait(), lines


def installed_version(distribution: str) -> str | None:
    """The version of ``distribution`` this interpreter has installed, or None."""
    from importlib import metadata
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements(pip_lines: list[str]) -> list[str]:
    """The requirements pip found no candidate for ("No matching distribution found for X")."""
    found = []
    for line in pip_lines:
        m = re.search(r"No matching distribution found for (\S+)", line)
        if m and m.group(1) not in found:
            found.append(m.group(1))
    return found


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement.strip(), maxsplit=1)[0]


def install(folder: str | None = None, requirement: str = REQUIREMENT) -> None:
    """Install ``requirement`` from the archive folder with pip, offline; prints what it does.

    When the image already holds a package in a version that one of the archive's packages excludes
    (ultralytics 8.4.190 asks ``opencv-python!=4.13.0.90``) and the archive brings no other version,
    pip's resolver gives up; then the image's version is kept, said in one line, and the archive's
    wheels of packages the image lacks are installed without dependency resolution (``--no-deps``).
    """
    folder = os.path.abspath(folder or os.path.dirname(os.path.abspath(__file__)))
    python = running_python()
    print(f"czii_kaggle offline install: Python {platform.python_version()} ({sys.executable}), "
          f"archive {folder}", flush=True)
    rows = plan(folder, python)
    print(f"the archive's {len(rows)} wheels for Python {python} (pip keeps what this image has already): "
          + ", ".join(f"{r['distribution']} {r['version']}" for r in rows), flush=True)
    code, lines = _run_pip(["install", "--no-index", "--find-links", folder, requirement])
    if code == 0:
        return
    errors = [line.strip() for line in lines if line.startswith("ERROR:")]
    unmet = unmet_requirements(lines)
    kept = {r: installed_version(requirement_name(r)) for r in unmet}
    if not unmet or None in kept.values():
        raise InstallError(f"pip install --no-index from {folder} failed (exit {code}): "
                           f"{errors[0] if errors else 'see its output above'}")
    for req, version in kept.items():
        print(f"warning: this image's {requirement_name(req)} {version} does not meet {req} (asked by a package "
              f"of the archive, which brings no other version): keeping the image's; installing the archive's "
              "other wheels without dependency resolution", flush=True)
    missing = [r for r in rows if installed_version(r["distribution"]) is None]
    files = [os.path.join(folder, r["file"]) for r in missing]
    if files:
        code, lines = _run_pip(["install", "--no-index", "--no-deps", *files])
        if code != 0:
            errors = [line.strip() for line in lines if line.startswith("ERROR:")]
            raise InstallError(f"pip install --no-deps from {folder} failed (exit {code}): "
                               f"{errors[0] if errors else 'see its output above'}")


if __name__ == "__main__":
    install(sys.argv[1] if len(sys.argv) > 1 else None)
