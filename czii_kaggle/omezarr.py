"""OME-Zarr tomograms: read a level (whole or in z slabs) and write Kaggle's exact encoding.

A Kaggle tomogram ``{type}.zarr`` is a zarr v2 group::

    .zgroup            {"zarr_format": 2}
    .zattrs            OME-Zarr 0.4 "multiscales": axes z, y, x (Angstrom), one scale per level
    0/ 1/ 2/           float32 arrays (z, y, x); each level is the previous one binned 2x by mean
    0/.zarray          "<f4", C order, Blosc lz4 clevel 5 byte-shuffle, chunks (256, 256, 256),
                       fill value 0.0, dimension_separator "/" (chunk files ``0/{iz}/{iy}/{ix}``)

The voxel size is read from ``.zattrs`` (10.012444 Angstrom at level 0 on Kaggle), never
typed in. Reading works with zarr 2 and zarr 3; the only version-dependent line is in
:func:`_open_v2_array`. Writing does not use zarr at all: chunks are encoded with
``numcodecs.Blosc`` and the metadata written byte for byte as Kaggle's, so both zarr
versions read it back.
"""
from __future__ import annotations

import json
import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numcodecs
import numpy as np
import zarr

from .errors import CziiInputError
from .outputs import atomic_dir

NAN_POLICIES = ("fill", "raise")


@dataclass(frozen=True)
class ZarrEncoding:
    """How Kaggle encodes each level array (as seen in the real ``2/.zarray``).

    Attributes
    ----------
    dtype : str
        Numpy / zarr dtype string, little-endian float32.
    cname, clevel, shuffle, blocksize
        Blosc compressor settings (``shuffle=1``: byte shuffle).
    fill_value : float
        Value of voxels whose chunk file is absent.
    dimension_separator : str
        Chunk keys are ``{iz}/{iy}/{ix}``.
    """

    dtype: str = "<f4"
    cname: str = "lz4"
    clevel: int = 5
    shuffle: int = 1
    blocksize: int = 0
    fill_value: float = 0.0
    dimension_separator: str = "/"

    def compressor(self) -> numcodecs.Blosc:
        return numcodecs.Blosc(
            cname=self.cname, clevel=self.clevel, shuffle=self.shuffle, blocksize=self.blocksize
        )

    def zarray(self, shape: tuple[int, ...], chunks: tuple[int, ...]) -> dict:
        """The ``.zarray`` document of one level array."""
        return {
            "chunks": [int(c) for c in chunks],
            "compressor": {
                "blocksize": self.blocksize,
                "clevel": self.clevel,
                "cname": self.cname,
                "id": "blosc",
                "shuffle": self.shuffle,
            },
            "dimension_separator": self.dimension_separator,
            "dtype": self.dtype,
            "fill_value": self.fill_value,
            "filters": None,
            "order": "C",
            "shape": [int(s) for s in shape],
            "zarr_format": 2,
        }


# --------------------------------------------------------------------------- reading


def _zarr_major() -> int:
    return int(zarr.__version__.split(".")[0])


def _open_v2_array(array_path: Path):
    """Open a zarr v2 array folder read-only with whichever zarr is installed.

    zarr 2 reads ``dimension_separator`` from ``.zarray``; zarr 3 must be told the
    store is zarr v2 (it then honours the separator too).
    """
    if _zarr_major() >= 3:
        return zarr.open_array(str(array_path), mode="r", zarr_format=2)
    return zarr.open_array(str(array_path), mode="r")


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CziiInputError(path, f"unreadable {what}: {exc}") from None


def _multiscale_datasets(zarr_path: Path) -> tuple[list, list]:
    """Check ``zarr_path`` is an OME-Zarr group; return its (axes, datasets)."""
    if not zarr_path.exists():
        raise CziiInputError(zarr_path, "no such tomogram (path does not exist)")
    if not zarr_path.is_dir():
        raise CziiInputError(zarr_path, "not a zarr group: it is a file, not a folder")
    if not (zarr_path / ".zgroup").is_file():
        if (zarr_path / ".zarray").is_file():
            problem = "is a single zarr array, not the tomogram group: pass the .zarr folder above it"
        else:
            problem = "not a zarr group (no .zgroup): is this a Kaggle {type}.zarr folder?"
        raise CziiInputError(zarr_path, problem)
    if not (zarr_path / ".zattrs").is_file():
        raise CziiInputError(zarr_path, "zarr group without .zattrs: no OME-Zarr multiscales metadata")
    attrs = _read_json(zarr_path / ".zattrs", ".zattrs")
    try:
        ms = attrs["multiscales"][0]
        datasets = list(ms["datasets"])
        axes = list(ms.get("axes", []))
    except (KeyError, IndexError, TypeError):
        raise CziiInputError(
            zarr_path / ".zattrs", "no OME-Zarr multiscales[0].datasets list"
        ) from None
    if not datasets:
        raise CziiInputError(zarr_path / ".zattrs", "multiscales[0].datasets is empty: no level")
    return axes, datasets


def n_levels(zarr_path: str | Path) -> int:
    """How many multiscale levels the tomogram at ``zarr_path`` holds (3 on Kaggle); no voxel is read."""
    return len(_multiscale_datasets(Path(zarr_path))[1])


def _dataset(zarr_path: Path, level: int) -> tuple[list, dict]:
    axes, datasets = _multiscale_datasets(zarr_path)
    if not isinstance(level, (int, np.integer)) or not 0 <= level < len(datasets):
        raise CziiInputError(
            zarr_path, f"level {level!r} absent: the tomogram has levels 0..{len(datasets) - 1}"
        )
    ds = datasets[level]
    if not isinstance(ds, dict):
        raise CziiInputError(zarr_path / ".zattrs", f"multiscales[0].datasets[{level}] is not an object")
    return axes, ds


#: Angstrom per unit, for the OME-Zarr 0.4 space units a tomogram may give its axes (and short forms).
UNIT_A = {
    "angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "millimeter": 1e7, "centimeter": 1e8,
    "meter": 1e10, "picometer": 1e-2, "femtometer": 1e-5,
    "\u00e5": 1.0, "a": 1.0, "nm": 10.0, "um": 1e4, "\u00b5m": 1e4, "mm": 1e7, "pm": 1e-2,
}
#: Level-0 voxel sizes (Angstrom) a cryo-ET tomogram can plausibly have; level k allows 2**k times more.
PLAUSIBLE_VOXEL_A = (1.0, 100.0)


def _axis_unit_A(zarr_path: Path, axis: object, name: str) -> float:
    """Angstrom per unit of one ``.zattrs`` axis (no unit given: Angstrom, as on Kaggle)."""
    unit = axis.get("unit") if isinstance(axis, dict) else None
    if unit is None:
        return 1.0
    if not isinstance(unit, str) or unit.strip().lower() not in UNIT_A:
        raise CziiInputError(
            zarr_path / ".zattrs",
            f"axis {name!r} has unit {unit!r}, not a length unit this reader knows "
            f"(angstrom, nanometer, micrometer, millimeter, meter, picometer)",
        )
    return UNIT_A[unit.strip().lower()]


def read_voxel_sizes(zarr_path: str | Path, level: int = 0) -> dict[str, float]:
    """Voxel size of one level along each axis, in Angstrom: ``{"z": ..., "y": ..., "x": ...}``.

    Each ``.zattrs`` ``scale`` entry times its axis unit (OME-Zarr 0.4 ``axes[i].unit``:
    ``"nanometer"`` multiplies by 10; no unit: Angstrom). Without axis names the last
    entry is ``"x"``. Raises :class:`CziiInputError` for no scale, a scale that is not a
    positive number, or an unknown unit; see :func:`read_voxel_size` for the rest.
    """
    zarr_path = Path(zarr_path)
    axes, ds = _dataset(zarr_path, level)
    where = f".zattrs multiscales[0].datasets[{level}]"
    scales = [
        t.get("scale")
        for t in ds.get("coordinateTransformations", [])
        if isinstance(t, dict) and t.get("type") == "scale"
    ]
    if not scales or not isinstance(scales[0], list) or not scales[0]:
        raise CziiInputError(zarr_path, f"{where} has no scale coordinateTransformation")
    scale = scales[0]
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    if len(names) != len(scale) or not all(isinstance(n, str) for n in names):
        names, axes = [f"axis {i}" for i in range(len(scale) - 1)] + ["x"], [None] * len(scale)
    sizes = {}
    for axis, name, value in zip(axes, names, scale):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise CziiInputError(zarr_path, f"{where} {name} scale {value!r} is not a positive number")
        sizes[name] = float(value) * _axis_unit_A(zarr_path, axis, name)
    return sizes


def read_voxel_size(zarr_path: str | Path, level: int = 0) -> float:
    """Voxel size of one level in Angstrom: the x-axis ``scale`` in ``.zattrs``, in its unit.

    Parameters
    ----------
    zarr_path : str or Path
        The tomogram's ``{type}.zarr`` folder.
    level : int
        Multiscale level (0: full resolution).

    Returns
    -------
    float
        Angstrom per voxel along x (10.012444537618887 at level 0 of the real data).
        A scale given in another unit is converted (:func:`read_voxel_sizes`).

    Warns
    -----
    RuntimeWarning
        Naming the file, when the size is far from any cryo-ET voxel size (outside
        :data:`PLAUSIBLE_VOXEL_A`, times ``2**level``) or the axes' sizes differ by more
        than 1 % (anisotropic voxels: coordinates along z would be off).
    """
    zarr_path = Path(zarr_path)
    sizes = read_voxel_sizes(zarr_path, level)
    voxel_size_A = sizes.get("x", list(sizes.values())[-1])
    lo, hi = PLAUSIBLE_VOXEL_A[0], PLAUSIBLE_VOXEL_A[1] * 2**level
    if not lo <= voxel_size_A <= hi:
        warnings.warn(
            f"{zarr_path / '.zattrs'}: level {level} voxel size {voxel_size_A:.6g} Angstrom is outside "
            f"{lo:g}-{hi:g} Angstrom, far from any cryo-ET voxel size: is the scale or its unit wrong?",
            RuntimeWarning, stacklevel=2,
        )
    spatial = list(sizes.values())[-3:]
    if max(spatial) > 1.01 * min(spatial):
        warnings.warn(
            f"{zarr_path / '.zattrs'}: level {level} voxels are anisotropic "
            f"({' x '.join(f'{v:.6g}' for v in spatial)} Angstrom); coordinates use the x size "
            f"{voxel_size_A:.6g} on every axis",
            RuntimeWarning, stacklevel=2,
        )
    return voxel_size_A


def open_level(zarr_path: str | Path, level: int = 0):
    """Open one level of an OME-Zarr tomogram read-only (no voxel is read).

    Parameters
    ----------
    zarr_path : str or Path
        The tomogram's ``{type}.zarr`` folder.
    level : int
        Multiscale level (0: full resolution, 1: binned 2x, 2: binned 4x on Kaggle).

    Returns
    -------
    zarr.Array
        3D array ``(z, y, x)``, read-only, of zarr 2 or zarr 3 (whichever is installed).

    Raises
    ------
    CziiInputError
        The path is missing, not an OME-Zarr group, the level is absent, or its
        array is not 3D.
    """
    zarr_path = Path(zarr_path)
    _, ds = _dataset(zarr_path, level)
    name = ds.get("path")
    if not isinstance(name, str) or not name:
        raise CziiInputError(zarr_path, f".zattrs multiscales[0].datasets[{level}] has no path")
    array_path = zarr_path / name
    if not (array_path / ".zarray").is_file():
        raise CziiInputError(
            array_path,
            f"level {level} array {name!r} listed in .zattrs is absent (no .zarray): "
            "misnamed or incomplete tomogram",
        )
    try:
        arr = _open_v2_array(array_path)
    except Exception as exc:  # zarr raises many types for a bad .zarray
        raise CziiInputError(array_path, f"cannot open level {level} array: {exc}") from None
    if arr.ndim != 3:
        raise CziiInputError(
            array_path, f"level {level} array has {arr.ndim} dimensions {tuple(arr.shape)}, expected 3 (z, y, x)"
        )
    if min(arr.shape) == 0:
        raise CziiInputError(array_path, f"level {level} array is empty: shape {tuple(arr.shape)}")
    return arr


def _z_bounds(zarr_path: Path, nz: int, z_range: tuple[int, int] | None) -> tuple[int, int]:
    start, stop = (0, nz) if z_range is None else (int(z_range[0]), int(z_range[1]))
    if not 0 <= start < stop <= nz:
        raise ValueError(f"{zarr_path}: z_range {z_range} is not within 0..{nz} with start < stop")
    return start, stop


def _check_blosc_chunk_row(array_path: Path, zarray: dict, iz: int) -> None:
    """Check the chunk files of z chunk row ``iz`` against their 16-byte Blosc headers.

    Blosc decodes a truncated buffer into garbage without an error, so each file's
    size must equal the compressed size its header declares (and, with no filters,
    the decoded size must be one whole chunk). Absent files are fine (fill value).
    """
    if not isinstance(zarray.get("compressor"), dict) or zarray["compressor"].get("id") != "blosc":
        return
    pattern = f"{iz}/*/*" if zarray.get("dimension_separator") == "/" else f"{iz}.*.*"
    chunk_bytes = math.prod(zarray["chunks"]) * np.dtype(zarray["dtype"]).itemsize
    for f in array_path.glob(pattern):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            header = fh.read(16)
        if len(header) < 16:
            raise CziiInputError(f, f"empty or corrupt chunk file: {size} bytes, less than a Blosc header")
        nbytes, _, cbytes = struct.unpack("<III", header[4:16])
        if cbytes != size:
            raise CziiInputError(
                f,
                f"truncated or corrupt chunk file: {size} bytes, its Blosc header says {cbytes} "
                f"compressed / {nbytes} decoded (one chunk is {chunk_bytes})",
            )
        if zarray.get("filters") is None and nbytes != chunk_bytes:
            # the file is whole (its size matches its header): the metadata describes another chunk
            raise CziiInputError(
                array_path / ".zarray",
                f"dtype {zarray['dtype']!r} and chunks {list(zarray['chunks'])} make one chunk "
                f"{chunk_bytes} bytes, but the intact chunk file {f.relative_to(array_path)} holds "
                f"{nbytes}: wrong dtype or chunk shape in .zarray",
            )


def iter_slabs(
    zarr_path: str | Path, level: int = 0, z_range: tuple[int, int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Read one level in z slabs aligned to the zarr chunks, so each chunk is decoded once.

    Parameters
    ----------
    zarr_path : str or Path
        The tomogram's ``{type}.zarr`` folder.
    level : int
        Multiscale level.
    z_range : (int, int), optional
        ``(start, stop)`` z voxel indices to read, ``0 <= start < stop <= nz``;
        the whole depth when omitted.

    Yields
    ------
    z0 : int
        z voxel index of the slab's first slice.
    slab : ndarray, float32, shape (nz_slab, ny, nx)
        Voxel values as stored (non-finite values are passed through; see
        :func:`read_tomogram` for their handling). Slab boundaries fall on
        multiples of the chunk depth (256 on Kaggle) or on ``z_range``'s ends.

    Raises
    ------
    CziiInputError
        As :func:`open_level`, or a chunk file is empty, truncated or corrupt
        (the error names the chunk file when its Blosc header shows it).
    """
    zarr_path = Path(zarr_path)
    arr = open_level(zarr_path, level)
    start, stop = _z_bounds(zarr_path, int(arr.shape[0]), z_range)
    depth = int(arr.chunks[0])
    level_name = _dataset(zarr_path, level)[1]["path"]
    zarray = _read_json(zarr_path / level_name / ".zarray", ".zarray")
    z0 = start
    while z0 < stop:
        z1 = min((z0 // depth + 1) * depth, stop)
        _check_blosc_chunk_row(zarr_path / level_name, zarray, z0 // depth)
        try:
            slab = arr[z0:z1]
        except Exception as exc:  # numcodecs / zarr raise various types for bad chunk bytes
            raise CziiInputError(
                zarr_path,
                f"level {level}: cannot decode the chunks of z {z0}:{z1} "
                f"(files {level_name}/{z0 // depth}/*/*: empty or corrupt?): {exc}",
            ) from None
        yield z0, np.ascontiguousarray(slab, dtype=np.float32)
        z0 = z1


#: Inside :func:`shared_reads`: ``{(folder, level, nan_policy): (volume, voxel_size_A)}`` read so far.
_SHARED: dict | None = None


@contextmanager
def shared_reads() -> Iterator[None]:
    """Within this block, reading the same whole level of the same tomogram again returns the array
    read the first time, made read-only, instead of reading it again.

    The detectors of one run read the same level (YOLO and a level-0 heatmap network both read
    level 0, 292 MB to decompress on Kaggle), so :func:`czii_kaggle.detectors.run_candidates` reads
    each run inside one such block. Nested blocks share the outer one's reads; they are let go when
    the outermost block ends. A z range is always read afresh. One process, one thread.
    """
    global _SHARED
    outer = _SHARED
    if outer is None:
        _SHARED = {}
    try:
        yield
    finally:
        _SHARED = outer


def read_tomogram(
    zarr_path: str | Path,
    level: int = 0,
    z_range: tuple[int, int] | None = None,
    nan_policy: str = "fill",
) -> tuple[np.ndarray, float]:
    """Read one level (or a z range of it) into memory.

    Parameters
    ----------
    zarr_path : str or Path
        The tomogram's ``{type}.zarr`` folder.
    level : int
        Multiscale level (0: full resolution).
    z_range : (int, int), optional
        ``(start, stop)`` z voxel indices to read; the whole depth when omitted.
    nan_policy : {"fill", "raise"}
        Non-finite voxels (NaN, +-inf): ``"fill"`` replaces them by the median of
        the finite voxels read and warns (``RuntimeWarning`` naming the file);
        ``"raise"`` raises :class:`CziiInputError`. A volume with no finite voxel
        raises under both.

    Returns
    -------
    volume : ndarray, float32, C-contiguous, shape (nz, ny, nx)
        Voxels ``(z, y, x)``; with ``z_range``, ``nz = stop - start``.
    voxel_size_A : float
        Angstrom per voxel at this level (from ``.zattrs``, converted from its unit).

    Raises
    ------
    CziiInputError
        As :func:`iter_slabs`; or the volume read has no contrast (every voxel one
        value: a blank tomogram, or its chunk files absent and read as the fill value).

    Warns
    -----
    RuntimeWarning
        Naming the file: non-finite voxels filled, some chunk files absent, or an
        implausible or anisotropic voxel size (:func:`read_voxel_size`).

    Inside :func:`shared_reads` a whole level read before is returned again (read-only).
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, not {nan_policy!r}")
    zarr_path = Path(zarr_path)
    if _SHARED is None or z_range is not None:
        return _read_level(zarr_path, level, z_range, nan_policy)
    key = (str(zarr_path.resolve()), int(level), nan_policy)
    if key not in _SHARED:
        volume, voxel_size_A = _read_level(zarr_path, level, None, nan_policy)
        volume.flags.writeable = False
        _SHARED[key] = (volume, voxel_size_A)
    return _SHARED[key]


def _read_level(zarr_path: Path, level: int, z_range: tuple[int, int] | None,
                nan_policy: str) -> tuple[np.ndarray, float]:
    voxel_size_A = read_voxel_size(zarr_path, level)
    nz, ny, nx = (int(s) for s in open_level(zarr_path, level).shape)
    start, stop = _z_bounds(zarr_path, nz, z_range)
    volume = np.empty((stop - start, ny, nx), dtype=np.float32)
    for z0, slab in iter_slabs(zarr_path, level, (start, stop)):
        volume[z0 - start : z0 - start + slab.shape[0]] = slab
    _handle_non_finite(volume, zarr_path, level, nan_policy)
    _check_contrast(volume, zarr_path, level, (start, stop), nz)
    return volume, voxel_size_A


def _absent_chunk_files(zarr_path: Path, level: int, z_range: tuple[int, int]) -> tuple[int, int]:
    """``(absent, expected)`` chunk files of ``level`` covering z ``start:stop`` (absent ones read as fill)."""
    name = _dataset(zarr_path, level)[1]["path"]
    zarray = _read_json(zarr_path / name / ".zarray", ".zarray")
    shape, chunks = zarray["shape"], zarray["chunks"]
    sep = "/" if zarray.get("dimension_separator") == "/" else "."
    rows = range(z_range[0] // chunks[0], (z_range[1] - 1) // chunks[0] + 1)
    grid = [rows, *(range(math.ceil(n / c)) for n, c in zip(shape[1:], chunks[1:]))]
    keys = [sep.join(str(i) for i in idx) for idx in product(*grid)]
    absent = sum(not (zarr_path / name / k).is_file() for k in keys)
    return absent, len(keys)


def _check_contrast(volume: np.ndarray, zarr_path: Path, level: int, z_range: tuple[int, int], nz: int) -> None:
    """Refuse a volume with no contrast (every voxel one value); warn when chunk files are absent.

    A blank volume (all zeros, a constant, or chunk files missing so zarr fills them in)
    holds no particle, yet a detector would find "particles" in it.
    """
    absent, expected = _absent_chunk_files(zarr_path, level, z_range)
    where = f"level {level}" + ("" if z_range == (0, nz) else f" z {z_range[0]}:{z_range[1]}")
    lo, hi = float(volume.min()), float(volume.max())
    if lo == hi:
        why = (f"all {expected} of its chunk files are absent and read as the fill value" if absent == expected
               else f"{absent} of its {expected} chunk files are absent" if absent else "a blank tomogram")
        raise CziiInputError(zarr_path, f"{where} has no contrast: every voxel is {lo:g} ({why}); "
                                        "no particle can be found in it")
    if absent:
        warnings.warn(
            f"{zarr_path}: {where}: {absent} of its {expected} chunk files are absent and read as the "
            "fill value (an incomplete copy?)",
            RuntimeWarning, stacklevel=3,
        )


def _handle_non_finite(volume: np.ndarray, zarr_path: Path, level: int, nan_policy: str) -> None:
    """Apply ``nan_policy`` to ``volume`` in place."""
    finite = np.isfinite(volume)
    if finite.all():
        return
    n_bad = int(volume.size - np.count_nonzero(finite))
    if n_bad == volume.size:
        raise CziiInputError(zarr_path, f"level {level} holds no finite voxel (all NaN/inf)")
    if nan_policy == "raise":
        raise CziiInputError(zarr_path, f"level {level} has {n_bad} non-finite voxels (NaN/inf)")
    median = np.float32(np.median(volume[finite]))
    volume[~finite] = median
    warnings.warn(
        f"{zarr_path}: level {level} had {n_bad} non-finite voxels (NaN/inf); "
        f"replaced by the finite median {float(median):.6g}",
        RuntimeWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- writing


def level_shapes(shape: tuple[int, int, int], n_levels: int = 3) -> list[tuple[int, int, int]]:
    """Shapes of the multiscale levels: each halves the previous one, rounding up.

    ``(184, 630, 630)`` gives ``[(184, 630, 630), (92, 315, 315), (46, 158, 158)]``.
    """
    shapes = [tuple(int(s) for s in shape)]
    for _ in range(n_levels - 1):
        shapes.append(tuple((s + 1) // 2 for s in shapes[-1]))
    return shapes


def downsample2(volume: np.ndarray) -> np.ndarray:
    """Bin a volume 2x along each axis by the mean of each 2x2x2 block.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)

    Returns
    -------
    ndarray, float32, shape (ceil(nz/2), ceil(ny/2), ceil(nx/2))
        An odd axis's last slice is padded by its own values (edge), so the last
        output element along it is the mean over that slice alone.
    """
    pad = [(0, s % 2) for s in volume.shape]
    v = np.pad(volume, pad, mode="edge") if any(p[1] for p in pad) else volume
    nz, ny, nx = (s // 2 for s in v.shape)
    return v.reshape(nz, 2, ny, 2, nx, 2).mean(axis=(1, 3, 5), dtype=np.float32)


def _zattrs(voxel_size_A: float, n_levels: int) -> dict:
    return {
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in ("z", "y", "x")],
                "datasets": [
                    {
                        "coordinateTransformations": [
                            {"scale": [voxel_size_A * 2**k] * 3, "type": "scale"}
                        ],
                        "path": str(k),
                    }
                    for k in range(n_levels)
                ],
                "metadata": {},
                "name": "/",
                "version": "0.4",
            }
        ]
    }


def _write_level(array_path: Path, volume: np.ndarray, chunks: tuple[int, int, int], enc: ZarrEncoding) -> None:
    """Write one level array: ``.zarray`` plus one Blosc file per chunk (edge chunks padded)."""
    array_path.mkdir(parents=True)
    (array_path / ".zarray").write_text(json.dumps(enc.zarray(volume.shape, chunks), indent=4, sort_keys=True))
    compressor = enc.compressor()
    grid = [range(math.ceil(s / c)) for s, c in zip(volume.shape, chunks)]
    for idx in product(*grid):
        sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, chunks))
        block = volume[sl]
        if block.shape != tuple(chunks):
            full = np.full(chunks, enc.fill_value, dtype=enc.dtype)
            full[tuple(slice(0, s) for s in block.shape)] = block
            block = full
        key = array_path.joinpath(*(str(i) for i in idx))
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(compressor.encode(np.ascontiguousarray(block, dtype=enc.dtype)))


def write_tomogram(
    zarr_path: str | Path,
    volume: np.ndarray,
    voxel_size_A: float,
    n_levels: int = 3,
    chunks: tuple[int, int, int] = (256, 256, 256),
    overwrite: bool = False,
) -> Path:
    """Write a volume as a Kaggle OME-Zarr tomogram (``.zgroup``, ``.zattrs``, levels 0..n-1).

    Parameters
    ----------
    zarr_path : str or Path
        The ``{type}.zarr`` folder to create.
    volume : ndarray, shape (nz, ny, nx)
        Level-0 voxels ``(z, y, x)``; stored as float32.
    voxel_size_A : float
        Level-0 voxel size in Angstrom; level ``k`` gets ``voxel_size_A * 2**k``.
    n_levels : int
        Number of levels; level ``k+1`` is level ``k`` binned 2x by mean (:func:`downsample2`).
    chunks : (int, int, int)
        Chunk shape of every level (Kaggle: 256 cubed).
    overwrite : bool
        Replace an existing zarr group at ``zarr_path``; otherwise an existing path
        raises ``FileExistsError``.

    Returns
    -------
    Path
        ``zarr_path``. The folder appears complete or not at all (written beside it,
        then renamed).
    """
    zarr_path = Path(zarr_path)
    volume = np.asarray(volume)
    if volume.ndim != 3 or volume.size == 0:
        raise ValueError(f"{zarr_path}: volume must be a non-empty 3D (z, y, x) array, got shape {volume.shape}")
    if not (math.isfinite(voxel_size_A) and voxel_size_A > 0):
        raise ValueError(f"{zarr_path}: voxel_size_A must be a positive number, got {voxel_size_A!r}")
    if n_levels < 1:
        raise ValueError(f"{zarr_path}: n_levels must be >= 1, got {n_levels}")
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != 3 or min(chunks) < 1:
        raise ValueError(f"{zarr_path}: chunks must be 3 positive ints, got {chunks}")
    if zarr_path.exists():
        if not overwrite:
            raise FileExistsError(f"{zarr_path}: already exists (pass overwrite=True to replace it)")
        if not (zarr_path / ".zgroup").is_file():
            raise FileExistsError(f"{zarr_path}: exists and is not a zarr group; not replacing it")

    enc = ZarrEncoding()
    with atomic_dir(zarr_path, replace=overwrite) as tmp:
        (tmp / ".zgroup").write_text(json.dumps({"zarr_format": 2}, indent=4, sort_keys=True))
        (tmp / ".zattrs").write_text(json.dumps(_zattrs(float(voxel_size_A), n_levels)))
        level = np.ascontiguousarray(volume, dtype=np.float32)
        for k in range(n_levels):
            if k:
                level = downsample2(level)
            _write_level(tmp / str(k), level, chunks, enc)
    return zarr_path
