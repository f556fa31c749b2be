import numpy as np
import pytest

from czii_kaggle.errors import CziiInputError

from czii_kaggle.preprocess import (
    PreprocessConfig,
    denoise,
    normalize,
    percentile_range,
    preprocess_volume,
    stack_slices,
)


def test_normalize_clips_percentiles_to_uint8():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 64, 64)).astype(np.float32)
    vol[0, 0, 0] = 1e6  # an outlier must not squash the contrast
    out = normalize(vol, (1, 99))
    assert out.dtype == np.uint8 and out.shape == vol.shape
    lo, hi = np.percentile(vol, [1, 99])
    inside = (vol > lo) & (vol < hi)
    assert (out[vol <= lo] == 0).all() and (out[vol >= hi] == 255).all()
    assert 100 < out[inside].mean() < 155  # roughly centred: contrast kept
    # monotone: a brighter voxel never maps lower
    order = np.argsort(vol.ravel())
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_normalize_float_and_constant_volume():
    vol = np.full((4, 40, 40), 3.5, np.float32)
    assert (normalize(vol) == 0).all()
    f = normalize(np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10), (0, 100), out="float")
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_normalize_in_place_gives_the_step_by_step_formula_bit_for_bit_and_leaves_the_input(dtype):
    """The rescale works one float32 copy in place: the values of the formula computed with a new array per
    step (clip((v - lo) * scale, 0, 1), then rint(x * 255)), for float and integer tomograms alike."""
    rng = np.random.default_rng(1)
    vol = (rng.normal(size=(6, 48, 48)) * 300).astype(dtype)
    before = vol.copy()
    lo, hi = percentile_range(vol, (0.5, 99.5))
    x = np.clip((vol.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0)
    for out, want in (("float", x), ("uint8", np.rint(x * 255.0).astype(np.uint8))):
        got = normalize(vol, (0.5, 99.5), out=out)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(vol, before)
    with pytest.raises(ValueError, match="out must be 'uint8' or 'float'"):
        normalize(vol, out="uint16")


def test_percentile_range_ignores_nan():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    vol[0] = np.nan
    lo, hi = percentile_range(vol, (0, 100))
    assert (lo, hi) == (100.0, 999.0)


@pytest.mark.parametrize("method", ["gaussian", "median"])
def test_denoise_reduces_noise_keeps_shape(method):
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(16, 48, 48)).astype(np.float32)
    out = denoise(vol, method, 1.0 if method == "gaussian" else 3)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert out.std() < 0.7 * vol.std()
    assert denoise(vol, "none") is vol


def test_stack_slices_neighbours_and_edges():
    vol = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((1, 6, 7), np.uint8)
    imgs = stack_slices(vol, [0, 2, 4], slice_offset=1)
    assert imgs.shape == (3, 6, 7, 3)
    assert imgs[1, 0, 0].tolist() == [1, 2, 3]
    assert imgs[0, 0, 0].tolist() == [0, 0, 1]  # edge slice repeats
    assert imgs[2, 0, 0].tolist() == [3, 4, 4]
    assert stack_slices(vol, [2], slice_offset=0)[0, 0, 0].tolist() == [2, 2, 2]
    assert stack_slices(vol, [2], slice_offset=2)[0, 0, 0].tolist() == [0, 2, 4]


def test_preprocess_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="clip_percentiles"):
        PreprocessConfig(clip_percentiles=(99, 1))
    with pytest.raises(ValueError, match="denoise"):
        PreprocessConfig(denoise="bilateral")
    cfg = PreprocessConfig(slice_offset=2, denoise="median", denoise_size_vox=3)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    vol = np.random.default_rng(2).normal(size=(6, 32, 32)).astype(np.float32)
    assert preprocess_volume(vol, cfg).dtype == np.uint8


@pytest.mark.parametrize("blank", ["zeros", "constant", "one_bright_voxel"])
def test_preprocess_refuses_a_volume_without_contrast(blank):
    """A blank volume has no particle; flat images would still give detector "particles"."""
    vol = np.full((16, 128, 128), 3.5 if blank == "constant" else 0.0, np.float32)
    if blank == "one_bright_voxel":
        vol[4, 30, 30] = 100.0  # even denoised, > 99.5 % of voxels keep one value: equal percentiles
    with pytest.raises(CziiInputError, match=r"TS_x/denoised.zarr: no contrast: the 0.5 and 99.5 .* percentiles"):
        preprocess_volume(vol, PreprocessConfig(), source="TS_x/denoised.zarr")
    noisy = vol + np.random.default_rng(0).normal(0, 0.01, vol.shape).astype(np.float32)
    assert preprocess_volume(noisy).std() > 10  # faint but real contrast is fine


def test_spectral_filter_whitens_and_bandpasses():
    from scipy import ndimage

    from czii_kaggle.preprocess import PreprocessConfig, spectral_filter

    rng = np.random.default_rng(0)
    white = rng.standard_normal((32, 64, 64)).astype(np.float32)
    red = ndimage.gaussian_filter(white, 2.0)  # power falls steeply with frequency
    f = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in red.shape], indexing="ij")))

    def band_ratio(v):
        p = np.abs(np.fft.fftn(v)) ** 2
        return p[(f > 0.05) & (f < 0.1)].mean() / p[(f > 0.3) & (f < 0.4)].mean()

    assert band_ratio(red) > 100
    assert 0.5 < band_ratio(spectral_filter(red, "whiten")) < 2.0
    x = np.arange(256, dtype=np.float32)
    slow, mid = np.cos(2 * np.pi * x / 256), np.cos(2 * np.pi * x / 16)  # 2560 A and 160 A periods at 10 A
    for wave, lo, hi in ((slow, 0.0, 0.45), (mid, 0.65, 1.0)):
        out = spectral_filter(np.broadcast_to(wave, (8, 16, 256)).astype(np.float32), "bandpass")
        gain = float(np.dot(out[4, 8], wave) / np.dot(wave, wave))
        assert lo <= gain <= hi
    assert spectral_filter(white, "none") is white
    with pytest.raises(ValueError):
        PreprocessConfig(spectral="sharpen")


def test_whitening_over_depth_and_plane_undoes_an_anisotropic_filter():
    """``whiten_zxy`` evens out a blur stronger in z than in x-y, which radial whitening cannot, and
    gives every tomogram the same target spectrum whatever filter it went through."""
    from scipy import ndimage

    from czii_kaggle.preprocess import spectral_filter

    white = np.random.default_rng(1).standard_normal((48, 64, 64)).astype(np.float32)
    fz, fy, fx = np.meshgrid(*[np.abs(np.fft.fftfreq(n)) for n in white.shape], indexing="ij")
    fxy = np.sqrt(fy**2 + fx**2)

    def z_over_xy(v):  # power at a depth frequency against the same frequency in-plane
        p = np.abs(np.fft.fftn(v)) ** 2
        return p[(fz > 0.15) & (fz < 0.25) & (fxy < 0.03)].mean() / p[(fxy > 0.15) & (fxy < 0.25) & (fz < 0.03)].mean()

    blurred = ndimage.gaussian_filter(white, (2.0, 0.7, 0.7))
    assert z_over_xy(blurred) < 0.05
    assert z_over_xy(spectral_filter(blurred, "whiten")) < 0.2  # radial shells mix z and x-y
    assert 0.6 < z_over_xy(spectral_filter(blurred, "whiten_zxy")) < 1.6
    a, b = spectral_filter(blurred, "whiten_zxy"), spectral_filter(ndimage.gaussian_filter(white, 0.5), "whiten_zxy")
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.85  # the same noise through two filters: alike again
    assert np.corrcoef(blurred.ravel(), ndimage.gaussian_filter(white, 0.5).ravel())[0, 1] < 0.7


def test_whitening_plane_by_plane_equals_the_whole_spectrum_formula():
    """``spectral_filter`` works plane by plane for speed; it gives what the formula over the whole
    spectrum at once gives (the implementation before, kept here as the reference), on an odd shape."""
    import scipy.fft

    from czii_kaggle.preprocess import spectral_filter

    v = (np.random.default_rng(4).standard_normal((21, 34, 27)) * 3 + 7).astype(np.float32)
    spec = scipy.fft.rfftn(v - v.mean())
    fz, fy, fx = np.meshgrid(np.fft.fftfreq(21), np.fft.fftfreq(34), np.fft.rfftfreq(27), indexing="ij")
    iz = np.minimum((np.abs(fz) * 2 * 64).astype(int), 63)
    ixy = np.minimum((np.sqrt(fy**2 + fx**2) * np.sqrt(2) * 128).astype(int), 127)
    idx = iz * 128 + ixy
    mean_power = np.bincount(idx.ravel(), (np.abs(spec) ** 2).ravel(), 64 * 128) / np.maximum(
        np.bincount(idx.ravel(), minlength=64 * 128), 1)
    gain = 1 / np.sqrt(np.maximum(mean_power, 1e-30))
    gain[0] = 0
    f2 = fz**2 + fy**2 + fx**2
    ref = scipy.fft.irfftn(spec * gain[idx] * np.exp(-2 * np.pi**2 * f2), s=v.shape)
    np.testing.assert_allclose(spectral_filter(v, "whiten_zxy"), ref, atol=1e-5 * np.abs(ref).max())
    band = np.exp(-2 * np.pi**2 * 4 * f2) - np.exp(-2 * np.pi**2 * 1600 * f2)
    ref = scipy.fft.irfftn(spec * band, s=v.shape)
    np.testing.assert_allclose(spectral_filter(v, "bandpass"), ref, atol=1e-5 * np.abs(ref).max())


# --------------------------------------------------------------------------- other voxel sizes

def _blob(voxel_A, shape, centre_A, sigma_A=30.0, origin_A=0.0):
    """A Gaussian density of ``sigma_A`` at ``centre_A`` (x, y, z) on a grid of ``voxel_A`` voxels."""
    z, y, x = (origin_A + np.arange(n) * voxel_A for n in shape)
    cx, cy, cz = centre_A
    r2 = (z[:, None, None] - cz) ** 2 + (y[None, :, None] - cy) ** 2 + (x[None, None, :] - cx) ** 2
    return np.exp(-r2 / (2 * sigma_A**2)).astype(np.float32)


def _centroid_A(vol, voxel_A, origin_A=0.0):
    w = np.where(vol > 0.5 * vol.max(), vol, 0.0)
    idx = np.indices(vol.shape).reshape(3, -1) @ w.ravel() / w.sum()  # (z, y, x) in voxels
    return origin_A + idx[::-1] * voxel_A  # (x, y, z) in Angstrom


@pytest.mark.parametrize("voxel_A", [7.84, 13.48])
def test_resample_keeps_angstrom_positions_and_linear_ramps(voxel_A):
    from czii_kaggle.preprocess import resample

    target = 10.012444537618887
    shape = tuple(int(round(n / voxel_A)) for n in (400.0, 600.0, 640.0))
    centre = (333.3, 281.7, 190.1)
    for origin_out in (0.0, 5.0):
        out = resample(_blob(voxel_A, shape, centre), voxel_A, target, origin_out_A=origin_out)
        assert out.dtype == np.float32
        assert out.shape == tuple(int(np.floor((n - 1) * voxel_A / target - origin_out / target + 1e-9)) + 1 for n in shape)
        assert np.allclose(_centroid_A(out, target, origin_out), centre, atol=1.0)  # the same place in Angstrom
    z, y, x = (np.arange(n) * voxel_A for n in shape)
    ramp = (0.3 * x[None, None, :] + 0.1 * y[None, :, None] - 0.2 * z[:, None, None]).astype(np.float32)
    out = resample(ramp, voxel_A, target)
    zo, yo, xo = (np.arange(n) * target for n in out.shape)
    want = 0.3 * xo[None, None, :] + 0.1 * yo[None, :, None] - 0.2 * zo[:, None, None]
    inner = (slice(3, -3),) * 3  # away from the edges, where the smoothing meets the border
    assert np.allclose(out[inner], want[inner], atol=1e-3)  # linear interpolation (and smoothing) keep a ramp
    # binning down smooths first: white noise comes out quieter than plain interpolation leaves it
    noise = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if voxel_A < target:
        assert resample(noise, voxel_A, 2 * target).std() < 0.6


def test_read_at_voxel_size_reads_matching_levels_as_they_are(tmp_path):
    from czii_kaggle import omezarr
    from czii_kaggle.preprocess import binned_origin_A, read_at_voxel_size, read_volume

    vs = 10.012444537618887
    vol = np.random.default_rng(1).random((24, 40, 40)).astype(np.float32)
    path = omezarr.write_tomogram(tmp_path / "t.zarr", vol, vs)
    got, got_vs = read_at_voxel_size(path, vs)
    assert np.array_equal(got, omezarr.read_tomogram(path)[0]) and got_vs == pytest.approx(vs)
    got, got_vs = read_at_voxel_size(path, 2 * vs, origin_A=binned_origin_A(2 * vs, vs))  # a level-1 model
    assert np.array_equal(got, omezarr.read_tomogram(path, level=1)[0]) and got_vs == pytest.approx(2 * vs)
    assert np.array_equal(read_volume(path, PreprocessConfig())[0], omezarr.read_tomogram(path)[0])


def test_read_at_voxel_size_resamples_other_spacings_and_refuses_far_coarser_data(tmp_path):
    from czii_kaggle import omezarr
    from czii_kaggle.preprocess import binned_origin_A, read_at_voxel_size, read_volume

    target, own = 10.012444537618887, 7.84
    shape = (52, 80, 84)
    centre = (331.0, 297.5, 201.2)
    path = omezarr.write_tomogram(tmp_path / "t.zarr", _blob(own, shape, centre), own)
    vol, vs = read_at_voxel_size(path, target)  # a level-0 model (YOLO, heatmap_l0): from level 0
    assert vs == target and vol.shape == tuple(int(np.floor((n - 1) * own / target)) + 1 for n in shape)
    assert np.allclose(_centroid_A(vol, target), centre, atol=1.0)
    origin = binned_origin_A(2 * target, target)  # a level-1 model (the heatmap): from level 1 (15.68 A)
    vol1, vs1 = read_at_voxel_size(path, 2 * target, origin_A=origin)
    assert vs1 == 2 * target and np.allclose(_centroid_A(vol1, 2 * target, origin), centre, atol=1.5)
    as_it_comes, vs0 = read_volume(path, PreprocessConfig(voxel_size_A=None))
    assert vs0 == pytest.approx(own) and as_it_comes.shape == shape
    coarse = omezarr.write_tomogram(tmp_path / "c.zarr", np.random.default_rng(0).random((8, 16, 16)), 25.0)
    with pytest.raises(CziiInputError, match=r"c\.zarr.*25\.000 A.*wrong resolution"):
        read_at_voxel_size(coarse, target)
    with pytest.raises(ValueError, match="voxel_size_A"):
        PreprocessConfig(voxel_size_A=0.0)
