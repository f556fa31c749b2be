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
