"""Outputs that appear whole or not at all, and output places checked before long work.

Every file or folder the library writes (CSV, JSON, picks, figures, zarr tomograms, slice
datasets) is written under a temporary name in its own folder and renamed into place when
complete (:func:`atomic_path`, :func:`atomic_dir`): a reader never sees half a file, and a
failed or interrupted write leaves what was there before (or nothing), plus no temporary
debris. :func:`check_writable` fails fast, naming the place, before hours of work would end
in an unwritable output. :func:`finished_outputs` lists what this process completed (the
command line names them when it is interrupted).
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CziiInputError

_finished: list[Path] = []


def finished_outputs() -> list[Path]:
    """Every output this process has completed (renamed into place), oldest first."""
    return list(_finished)


def _temp_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` that keeps its suffix (writers choose formats by it)."""
    return path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write a file under a temporary name beside ``path``; rename it to ``path`` when the block ends.

    The block writes the yielded path (it keeps ``path``'s suffix, so ``savefig`` or
    ``to_csv`` pick the same format). Parent folders are created. When the block raises
    (or is interrupted) the temporary file is removed and ``path`` is left as it was.
    """
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _finished.append(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (contents and times); returns ``dst``."""
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return dst


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; move it to ``path`` when the block ends.

    Parameters
    ----------
    path : str or Path
        The folder to create.
    replace : bool
        Replace an existing folder at ``path`` (the caller has checked it may go: it is
        swapped out only once the new one is complete, then deleted). Otherwise ``path``
        must be absent or an empty folder.
    """
    path = check_writable(path, folder=True)
    if path.is_dir() and any(path.iterdir()) and not replace:
        raise CziiInputError(path, "folder exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an output folder is ordinary
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)  # put the previous folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _finished.append(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Check that an output can be created at ``path``, before the work that makes it starts.

    Parameters
    ----------
    path : str or Path
        The output file (or, with ``folder``, output folder).
    folder : bool
        The output is a folder (an existing folder is fine, an existing file is not).

    Returns
    -------
    Path
        ``path``. Nothing is created.

    Raises
    ------
    CziiInputError
        Naming ``path``: it is a folder where a file is wanted (or the reverse), a
        component above it is a file, or its nearest existing folder is not writable.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise CziiInputError(path, "exists and is a file; this output is a folder")
        if not folder and path.is_dir():
            raise CziiInputError(path, "is a folder: give a file name for this output")
    base = path if folder and path.is_dir() else path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise CziiInputError(path, f"cannot be created: {base} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise CziiInputError(path, f"cannot write in {base}: {exc.strerror or exc}") from None
    return path
