"""OME-Zarr tomogram reading and writing (czii_kaggle.omezarr)."""
from __future__ import annotations

import json
import math
import shutil
import warnings
from itertools import product

import numpy as np
import pytest
import zarr

from czii_kaggle import omezarr
from czii_kaggle.errors import CziiInputError

VOXEL_A = 10.012444537618887
REAL_ZARR = ("zarr-metadata", "TS_5_4-denoised.zarr")


@pytest.fixture
def volume():
    """Odd-sized random (z, y, x) volume: exercises edge chunks and odd binning."""
    return np.random.default_rng(0).normal(size=(10, 9, 7)).astype(np.float32)


@pytest.fixture
def tomo(tmp_path, volume):
    """``volume`` written with small (4, 4, 4) chunks, so every axis has a partial chunk."""
    return omezarr.write_tomogram(tmp_path / "denoised.zarr", volume, VOXEL_A, chunks=(4, 4, 4))


def _bin2_reference(v):
    """Mean of each 2x2x2 block, blocks truncated at odd edges (reference for downsample2)."""
    out = np.empty(tuple(math.ceil(s / 2) for s in v.shape))
    for i, j, k in product(*(range(s) for s in out.shape)):
        out[i, j, k] = v[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, 2 * k : 2 * k + 2].mean(dtype=np.float64)
    return out


def _real_zarr(real_root):
    return real_root.joinpath(*REAL_ZARR)


# ------------------------------------------------------------------ round trip


def test_round_trip_level0_exact(tomo, volume):
    got, vs = omezarr.read_tomogram(tomo)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, volume)
    assert vs == VOXEL_A


def test_levels_are_mean_binned_with_doubling_voxel_size(tomo, volume):
    lvl1, vs1 = omezarr.read_tomogram(tomo, level=1)
    lvl2, vs2 = omezarr.read_tomogram(tomo, level=2)
    assert lvl1.shape == (5, 5, 4) and lvl2.shape == (3, 3, 2)
    np.testing.assert_allclose(lvl1, _bin2_reference(volume), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lvl2, _bin2_reference(lvl1), rtol=1e-5, atol=1e-6)
    assert (vs1, vs2) == (2 * VOXEL_A, 4 * VOXEL_A)
    assert [omezarr.read_voxel_size(tomo, k) for k in range(3)] == [VOXEL_A, 2 * VOXEL_A, 4 * VOXEL_A]


def test_zarr_itself_reads_what_we_write(tomo, volume):
    group = zarr.open_group(str(tomo), mode="r")
    np.testing.assert_array_equal(np.asarray(group["0"][:]), volume)
    assert tuple(group["2"].shape) == (3, 3, 2)


def test_open_level_is_read_only(tomo):
    arr = omezarr.open_level(tomo, 0)
    with pytest.raises(Exception):
        arr[0, 0, 0] = 1.0
    np.testing.assert_array_equal(omezarr.read_tomogram(tomo)[0][0, 0, 0], arr[0, 0, 0])


def test_z_range_slabs_are_chunk_aligned(tomo, volume):
    slabs = list(omezarr.iter_slabs(tomo, 0, z_range=(3, 10)))
    assert [z0 for z0, _ in slabs] == [3, 4, 8]
    assert [s.shape[0] for _, s in slabs] == [1, 4, 2]
    assert all(s.dtype == np.float32 and s.shape[1:] == (9, 7) for _, s in slabs)
    np.testing.assert_array_equal(np.concatenate([s for _, s in slabs]), volume[3:10])
    got, _ = omezarr.read_tomogram(tomo, z_range=(3, 10))
    np.testing.assert_array_equal(got, volume[3:10])
    sub, _ = omezarr.read_tomogram(tomo, level=1, z_range=(1, 2))
    np.testing.assert_array_equal(sub, omezarr.read_tomogram(tomo, level=1)[0][1:2])


@pytest.mark.parametrize("z_range", [(5, 5), (-1, 3), (0, 11), (7, 2)])
def test_bad_z_range(tomo, z_range):
    with pytest.raises(ValueError, match="z_range"):
        omezarr.read_tomogram(tomo, z_range=z_range)


class _RecordingArray:
    """Stands in for the zarr array and records which z slices are read."""

    def __init__(self, arr, reads):
        self._arr, self._reads = arr, reads
        self.shape, self.ndim, self.chunks = arr.shape, arr.ndim, arr.chunks

    def __getitem__(self, key):
        self._reads.append((key.start, key.stop))
        return self._arr[key]


@pytest.mark.parametrize("z_range", [None, (3, 10), (1, 3)])
def test_each_chunk_decoded_once(tomo, monkeypatch, z_range):
    reads = []
    real_open = omezarr._open_v2_array
    monkeypatch.setattr(omezarr, "_open_v2_array", lambda p: _RecordingArray(real_open(p), reads))
    list(omezarr.iter_slabs(tomo, 0, z_range))
    start, stop = z_range or (0, 10)
    depth = 4
    rows = [a // depth for a, _ in reads]
    assert all((b - 1) // depth == a // depth for a, b in reads), "a read spans two chunk rows"
    assert len(set(rows)) == len(rows), "a chunk row is read twice"
    assert sorted(z for a, b in reads for z in range(a, b)) == list(range(start, stop))


def test_shared_reads_read_a_level_once_and_hand_it_out_read_only(tomo, volume, monkeypatch):
    calls = []
    real = omezarr._read_level
    monkeypatch.setattr(omezarr, "_read_level", lambda *a: calls.append(a[1:3]) or real(*a))
    with omezarr.shared_reads():
        a, _ = omezarr.read_tomogram(tomo)
        with omezarr.shared_reads():  # nested: the outer block's reads
            b, _ = omezarr.read_tomogram(str(tomo))
        np.testing.assert_array_equal(a, volume)
        assert b is a and not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a += 1
        c, vs1 = omezarr.read_tomogram(tomo, level=1)
        assert c is not a and vs1 == pytest.approx(2 * VOXEL_A)
        omezarr.read_tomogram(tomo, z_range=(0, 4))  # a z range is read afresh
    assert calls == [(0, None), (1, None), (0, (0, 4))]
    d, _ = omezarr.read_tomogram(tomo)  # outside: a fresh array of one's own, as before
    assert d is not a and d.flags.writeable and len(calls) == 4


# ------------------------------------------------------------------ Kaggle's exact layout


def test_level_shapes_match_real_data():
    assert omezarr.level_shapes((184, 630, 630)) == [(184, 630, 630), (92, 315, 315), (46, 158, 158)]


def test_full_size_write_matches_real_metadata_byte_for_byte(tmp_path, real_root):
    real = _real_zarr(real_root)
    out = omezarr.write_tomogram(tmp_path / "denoised.zarr", np.zeros((184, 630, 630), np.float32), VOXEL_A)
    assert (out / ".zgroup").read_bytes() == (real / ".zgroup").read_bytes()
    assert (out / "2" / ".zarray").read_bytes() == (real / "2" / ".zarray").read_bytes()
    # The real .zattrs differs only in z/y scales (10.0124441964... vs x 10.0124445376...).
    attrs = json.loads((real / ".zattrs").read_text())
    for ds in attrs["multiscales"][0]["datasets"]:
        scale = ds["coordinateTransformations"][0]["scale"]
        scale[:] = [scale[-1]] * 3
    assert (out / ".zattrs").read_text() == json.dumps(attrs)
    assert [tuple(omezarr.open_level(out, k).shape) for k in range(3)] == omezarr.level_shapes((184, 630, 630))
    assert sorted(p.name for p in (out / "0").iterdir()) == [".zarray", "0"]
    assert len(list((out / "0").rglob("*/*/*"))) == 9  # 1 x 3 x 3 chunks of 256^3


def test_small_write_has_real_structure_every_level(tomo, real_root):
    real_zarray = json.loads((_real_zarr(real_root) / "2" / ".zarray").read_text())
    for k, shape in enumerate(omezarr.level_shapes((10, 9, 7))):
        expected = dict(real_zarray, shape=list(shape), chunks=[4, 4, 4])
        assert (tomo / str(k) / ".zarray").read_text() == json.dumps(expected, indent=4, sort_keys=True)
    real_attrs = json.loads((_real_zarr(real_root) / ".zattrs").read_text())
    ours = json.loads((tomo / ".zattrs").read_text())
    for a in (real_attrs, ours):
        for ds in a["multiscales"][0]["datasets"]:
            ds["coordinateTransformations"][0]["scale"] = None
    assert json.dumps(ours) == json.dumps(real_attrs)


def test_chunks_are_blosc_lz4_byte_shuffled_float32(tomo):
    header = (tomo / "0" / "0" / "0" / "0").read_bytes()[:4]
    flags, typesize = header[2], header[3]
    assert flags >> 5 == 1, "compressor code is not lz4"  # Blosc header: bits 5-7
    assert flags & 0x1, "byte shuffle is off"
    assert typesize == 4


def test_write_refuses_existing_path_unless_overwrite(tomo, volume):
    with pytest.raises(FileExistsError, match="overwrite"):
        omezarr.write_tomogram(tomo, volume, VOXEL_A)
    omezarr.write_tomogram(tomo, volume[:4, :4, :4] + 1, 5.0, n_levels=1, overwrite=True)
    got, vs = omezarr.read_tomogram(tomo)
    np.testing.assert_array_equal(got, volume[:4, :4, :4] + 1)
    assert vs == 5.0 and not (tomo / "1").exists()
    assert [p.name for p in tomo.parent.iterdir()] == [tomo.name], "temporary folder left behind"


@pytest.mark.parametrize(
    "shape, vs", [((4, 4), 10.0), ((0, 4, 4), 10.0), ((4, 4, 4), 0.0), ((4, 4, 4), float("nan"))]
)
def test_write_rejects_bad_arguments(tmp_path, shape, vs):
    with pytest.raises(ValueError):
        omezarr.write_tomogram(tmp_path / "x.zarr", np.zeros(shape, np.float32), vs)
    assert not (tmp_path / "x.zarr").exists()


# ------------------------------------------------------------------ the real metadata folder


def test_real_metadata_voxel_sizes(real_root):
    real = _real_zarr(real_root)
    assert omezarr.read_voxel_size(real) == 10.012444537618887
    assert omezarr.read_voxel_size(real, 1) == 20.024889075237773
    assert omezarr.read_voxel_size(real, 2) == 40.04977815047555


def test_real_level2_without_its_chunk_is_blank(real_root):
    """The real level 2 lacks its only chunk file: it reads as zeros, a volume with no contrast."""
    arr = omezarr.open_level(_real_zarr(real_root), level=2)
    assert arr.shape == (46, 158, 158) and not np.asarray(arr[:2]).any()
    with pytest.raises(CziiInputError, match=r"level 2 has no contrast: every voxel is 0 "
                                             r"\(all 1 of its chunk files are absent") as err:
        omezarr.read_tomogram(_real_zarr(real_root), level=2)
    assert err.value.path == _real_zarr(real_root)


def test_real_level0_absent_is_an_input_error(real_root):
    with pytest.raises(CziiInputError, match=r"level 0 array '0'.*absent"):
        omezarr.read_tomogram(_real_zarr(real_root), level=0)


# ------------------------------------------------------------------ bad input


def test_missing_path(tmp_path):
    with pytest.raises(CziiInputError, match="does not exist") as err:
        omezarr.read_tomogram(tmp_path / "nope.zarr")
    assert err.value.path == tmp_path / "nope.zarr"


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "denoised.zarr"
    f.write_text("x")
    with pytest.raises(CziiInputError, match="not a folder"):
        omezarr.open_level(f)


def test_plain_folder_is_not_a_zarr_group(tmp_path):
    (tmp_path / "denoised.zarr").mkdir()
    with pytest.raises(CziiInputError, match="no .zgroup"):
        omezarr.read_voxel_size(tmp_path / "denoised.zarr")


def test_level_array_given_instead_of_group(tomo):
    with pytest.raises(CziiInputError, match="single zarr array") as err:
        omezarr.read_tomogram(tomo / "0")
    assert err.value.path == tomo / "0"


def test_group_without_zattrs(tomo):
    (tomo / ".zattrs").unlink()
    with pytest.raises(CziiInputError, match=".zattrs"):
        omezarr.read_tomogram(tomo)


@pytest.mark.parametrize("text", ["{not json", '{"foo": 1}', '{"multiscales": [{"datasets": []}]}'])
def test_bad_zattrs(tomo, text):
    (tomo / ".zattrs").write_text(text)
    with pytest.raises(CziiInputError, match=r"\.zattrs"):
        omezarr.read_tomogram(tomo)


def test_misnamed_level_arrays(tomo):
    for k in range(3):
        (tomo / str(k)).rename(tomo / f"s{k}")
    for k in range(3):
        with pytest.raises(CziiInputError, match=f"level {k} array '{k}'.*absent") as err:
            omezarr.open_level(tomo, k)
        assert err.value.path == tomo / str(k)


def test_level_beyond_the_pyramid(tomo):
    with pytest.raises(CziiInputError, match=r"level 3 absent.*levels 0\.\.2"):
        omezarr.read_tomogram(tomo, level=3)
    with pytest.raises(CziiInputError, match="level -1 absent"):
        omezarr.read_voxel_size(tomo, level=-1)


def test_missing_level0_other_levels_still_read(tomo):
    shutil.rmtree(tomo / "0")
    with pytest.raises(CziiInputError, match="level 0"):
        omezarr.read_tomogram(tomo)
    assert omezarr.read_tomogram(tomo, level=1)[0].shape == (5, 5, 4)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b"", "empty or corrupt chunk file: 0 bytes"),
        (lambda b: b[:10], "less than a Blosc header"),
        (lambda b: b[:-1], "truncated or corrupt chunk file"),  # blosc itself decodes this silently
        (lambda b: b[:16] + b"garbage-bytes" * 20, "truncated or corrupt chunk file"),
    ],
)
def test_empty_truncated_or_corrupt_chunk(tomo, damage, message):
    chunk = tomo / "0" / "1" / "0" / "1"
    chunk.write_bytes(damage(chunk.read_bytes()))
    with pytest.raises(CziiInputError, match=message) as err:
        omezarr.read_tomogram(tomo)
    assert err.value.path == chunk
    assert omezarr.read_tomogram(tomo, z_range=(0, 4))[0].shape == (4, 9, 7)


def test_undecodable_chunk_with_plausible_header(tmp_path):
    smooth = np.linspace(0, 1, 32**3, dtype=np.float32).reshape(32, 32, 32)  # compressed, not memcpy'd
    tomo = omezarr.write_tomogram(tmp_path / "t.zarr", smooth, VOXEL_A, n_levels=1, chunks=(16, 16, 16))
    chunk = tomo / "0" / "1" / "0" / "1"
    good = chunk.read_bytes()
    chunk.write_bytes(good[:16] + bytes(len(good) - 16))  # header intact, payload zeroed
    with pytest.raises(CziiInputError, match=r"cannot decode .* z 16:32 \(files 0/1/\*/\*") as err:
        omezarr.read_tomogram(tomo)
    assert err.value.path == tomo


def test_wrong_ndim(tmp_path):
    tomo = omezarr.write_tomogram(tmp_path / "t.zarr", np.zeros((4, 4, 4), np.float32), VOXEL_A, n_levels=1)
    zarray = json.loads((tomo / "0" / ".zarray").read_text())
    zarray.update(shape=[4, 4], chunks=[4, 4])
    (tomo / "0" / ".zarray").write_text(json.dumps(zarray))
    with pytest.raises(CziiInputError, match="2 dimensions"):
        omezarr.read_tomogram(tomo)


def test_bad_scale(tomo):
    attrs = json.loads((tomo / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1, 1, "ten"]
    (tomo / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(CziiInputError, match="x scale 'ten'"):
        omezarr.read_tomogram(tomo)


# ------------------------------------------------------------------ non-finite voxels


@pytest.fixture
def nan_tomo(tmp_path, volume):
    v = volume.copy()
    v[2, 3, 4] = np.nan
    v[5, 0, 0] = np.inf
    v[9, 8, 6] = -np.inf
    return omezarr.write_tomogram(tmp_path / "nan.zarr", v, VOXEL_A, chunks=(4, 4, 4)), v


def test_nan_fill_is_default_and_warns(nan_tomo):
    path, v = nan_tomo
    finite = np.isfinite(v)
    with pytest.warns(RuntimeWarning, match=rf"{path.name}.*3 non-finite"):
        got, _ = omezarr.read_tomogram(path)
    expected_fill = np.median(v[finite])
    np.testing.assert_allclose(got[~finite], expected_fill, rtol=1e-6)
    np.testing.assert_array_equal(got[finite], v[finite])


def test_nan_raise(nan_tomo):
    path, _ = nan_tomo
    with pytest.raises(CziiInputError, match="3 non-finite"):
        omezarr.read_tomogram(path, nan_policy="raise")


def test_finite_volume_does_not_warn(tomo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        omezarr.read_tomogram(tomo, nan_policy="raise")


@pytest.mark.parametrize("policy", ["fill", "raise"])
def test_all_nan_is_an_error(tmp_path, policy):
    path = omezarr.write_tomogram(tmp_path / "n.zarr", np.full((3, 3, 3), np.nan, np.float32), VOXEL_A)
    with pytest.raises(CziiInputError, match="no finite voxel"):
        omezarr.read_tomogram(path, nan_policy=policy)


def test_unknown_nan_policy(tomo):
    with pytest.raises(ValueError, match="nan_policy"):
        omezarr.read_tomogram(tomo, nan_policy="ignore")


# ------------------------------------------------------------------ blank volumes


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_constant_volume_has_no_contrast(tmp_path, value):
    tomo = omezarr.write_tomogram(tmp_path / "t.zarr", np.full((6, 8, 8), value, np.float32), VOXEL_A, chunks=(4, 4, 4))
    with pytest.raises(CziiInputError, match=f"level 0 has no contrast: every voxel is {value:g} "
                                             r"\(a blank tomogram\)") as err:
        omezarr.read_tomogram(tomo)
    assert err.value.path == tomo


def test_missing_chunk_files_blank_or_warned(tmp_path, volume):
    one = omezarr.write_tomogram(tmp_path / "one.zarr", volume, VOXEL_A, n_levels=1, chunks=(16, 16, 16))
    (one / "0" / "0" / "0" / "0").unlink()  # its only chunk: zarr fills in zeros
    with pytest.raises(CziiInputError, match=r"no contrast.*all 1 of its chunk files are absent"):
        omezarr.read_tomogram(one)
    many = omezarr.write_tomogram(tmp_path / "many.zarr", volume, VOXEL_A, n_levels=1, chunks=(4, 4, 4))
    (many / "0" / "1" / "0" / "1").unlink()
    with pytest.warns(RuntimeWarning, match=r"many.zarr: level 0: 1 of its 18 chunk files are absent"):
        got, _ = omezarr.read_tomogram(many)
    assert not got[4:8, 0:4, 4:7].any() and got[:4].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        omezarr.read_tomogram(many, z_range=(0, 4))  # the z range read has every chunk file


def test_blank_z_range(tmp_path):
    vol = np.zeros((8, 4, 4), np.float32)
    vol[:4] = np.random.default_rng(0).normal(size=(4, 4, 4))
    tomo = omezarr.write_tomogram(tmp_path / "t.zarr", vol, VOXEL_A, n_levels=1, chunks=(4, 4, 4))
    with pytest.raises(CziiInputError, match=r"level 0 z 4:8 has no contrast"):
        omezarr.read_tomogram(tomo, z_range=(4, 8))
    assert omezarr.read_tomogram(tomo)[0].shape == (8, 4, 4)


# ------------------------------------------------------------------ axis units and odd voxel sizes


def _set_axes(tomo, units=None, scale0=None):
    attrs = json.loads((tomo / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    if units is not None:
        for axis, unit in zip(ms["axes"], units):
            if unit is None:
                axis.pop("unit")
            else:
                axis["unit"] = unit
    if scale0 is not None:
        ms["datasets"][0]["coordinateTransformations"][0]["scale"] = scale0
    (tomo / ".zattrs").write_text(json.dumps(attrs))


@pytest.mark.parametrize("unit, factor", [("angstrom", 1.0), ("nanometer", 10.0), ("micrometer", 1e4), (None, 1.0)])
def test_axis_unit_is_converted_to_angstrom(tomo, unit, factor):
    scale = 1.0012444537618887 if unit == "nanometer" else (VOXEL_A / factor)
    _set_axes(tomo, [unit] * 3, [scale] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert omezarr.read_voxel_size(tomo) == pytest.approx(scale * factor, rel=1e-12)
        assert omezarr.read_tomogram(tomo)[1] == pytest.approx(scale * factor, rel=1e-12)


def test_nanometer_scale_gives_angstrom_coordinates(tomo):
    _set_axes(tomo, ["nanometer"] * 3, [1.0012444537618887] * 3)
    assert omezarr.read_voxel_sizes(tomo) == pytest.approx({"z": VOXEL_A, "y": VOXEL_A, "x": VOXEL_A})


def test_unknown_unit_is_refused(tomo):
    _set_axes(tomo, ["angstrom", "angstrom", "pixel"])
    with pytest.raises(CziiInputError, match=r"\.zattrs: axis 'x' has unit 'pixel', not a length unit") as err:
        omezarr.read_tomogram(tomo)
    assert err.value.path == tomo / ".zattrs"


@pytest.mark.parametrize("scale", [0.01, 500.0])
def test_implausible_voxel_size_warns(tomo, scale):
    _set_axes(tomo, scale0=[scale] * 3)
    with pytest.warns(RuntimeWarning, match=r"denoised.zarr/\.zattrs: level 0 voxel size .* outside 1-100 Angstrom"):
        assert omezarr.read_voxel_size(tomo) == scale


def test_anisotropic_voxels_warn(tomo):
    _set_axes(tomo, scale0=[20.0, VOXEL_A, VOXEL_A])
    with pytest.warns(RuntimeWarning, match=r"denoised.zarr/\.zattrs: level 0 voxels are anisotropic \(20 x 10"):
        assert omezarr.read_voxel_size(tomo) == VOXEL_A


# ------------------------------------------------------------------ .zarray that does not fit its chunks


@pytest.mark.parametrize("change", [{"dtype": "<f8"}, {"dtype": "<i2"}, {"chunks": [2, 4, 4]}])
def test_wrong_zarray_is_blamed_not_the_chunks(tomo, change):
    zarray = json.loads((tomo / "0" / ".zarray").read_text())
    zarray.update(change)
    (tomo / "0" / ".zarray").write_text(json.dumps(zarray))
    with pytest.raises(CziiInputError, match=r"wrong dtype or chunk shape in \.zarray") as err:
        omezarr.read_tomogram(tomo)
    assert err.value.path == tomo / "0" / ".zarray"
    assert "truncated" not in str(err.value)
