"""Random looks of the simulator: drawing, restricting, recording, and what each family changes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from czii_kaggle import simulate as sim
from czii_kaggle.errors import CziiInputError
from czii_kaggle.simulate import look as lk
from czii_kaggle.simulate.microscope import median3_separable
from czii_kaggle.simulate.shapes import _eval_blobs

VS = 10.012444537618887
SMALL = (48, 160, 160)


@pytest.fixture(scope="module")
def picks():
    return sim.random_layout(SMALL, VS, np.random.default_rng(3), run="r", count_scale=15.0)


def test_draw_look_is_deterministic_in_range_and_spans_every_family():
    looks = [lk.draw_look(np.random.default_rng(i), 1.0) for i in range(60)]
    assert lk.draw_look(np.random.default_rng(5), 1.0) == looks[5]
    for key, choices in lk.LOOK_CHOICES.items():
        assert {getattr(x, key) for x in looks} == set(choices)
    for key, (mild, wild) in lk.LOOK_RANGES.items():
        v = np.array([getattr(x, key) for x in looks])
        lo, hi = min(mild, wild), max(mild, wild)
        if key == "defocus_um":
            lo = 1.0
        if key in ("log10_scale", "offset"):
            lo = -hi
        assert v.min() >= lo - 1e-9 and v.max() <= hi + 1e-9, key


def test_difficulty_scales_the_range():
    easy = np.array([lk.draw_look(np.random.default_rng(i), 0.0).tilt_range_deg for i in range(40)])
    hard = np.array([lk.draw_look(np.random.default_rng(i), 1.0).tilt_range_deg for i in range(40)])
    # tilt range goes from 70 (mild) to 40 (wild): at difficulty 0 no look reaches below 70 - 0.4 * 30
    assert easy.min() >= 70 - 0.4 * 30 - 1e-9
    assert hard.min() < 55


def test_spec_fixes_and_restricts_fields():
    spec = {"filter": "median", "ctf_mode": ["flipped", "none"], "tilt_range_deg": [45, 50], "crowding": 2.0}
    looks = [lk.draw_look(np.random.default_rng(i), 0.5, spec) for i in range(30)]
    assert {x.filter for x in looks} == {"median"}
    assert {x.ctf_mode for x in looks} == {"flipped", "none"}
    assert all(45 <= x.tilt_range_deg <= 50 for x in looks)
    assert {x.crowding for x in looks} == {2.0}
    # fixing one family leaves the other fields as an unrestricted draw would have made them
    free = lk.draw_look(np.random.default_rng(3), 0.5)
    fixed = lk.draw_look(np.random.default_rng(3), 0.5, {"filter": "median"})
    assert (free.particle_model, free.defocus_um, free.seed) == (fixed.particle_model, fixed.defocus_um, fixed.seed)


@pytest.mark.parametrize("spec", [{"colour": 1}, {"filter": "sharpen"}, {"crowding": [1, 2, 3]}, {"ctf_mode": []}])
def test_bad_spec_is_refused(spec):
    with pytest.raises(ValueError):
        sim.SimConfig(look=spec)
    with pytest.raises(ValueError):
        sim.SimConfig(look="funky")


def test_classic_look_is_the_default_rendering(picks):
    cfg = sim.SimConfig(shape_vox=SMALL, difficulty="medium")
    a = sim.simulate_tomogram(picks, cfg, seed=4)
    b = sim.simulate_tomogram(picks, cfg, seed=4, look=sim.classic_look())
    np.testing.assert_array_equal(a, b)
    c = sim.simulate_tomogram(picks, cfg, seed=4, look=lk.draw_look(np.random.default_rng(0), 0.5))
    assert c.shape == a.shape and c.dtype == np.float32 and np.isfinite(c).all()
    assert not np.allclose(a, c)


@pytest.mark.parametrize("model", lk.PARTICLE_MODELS + lk.EXTRA_CHOICES["particle_model"])
def test_particle_models_have_the_real_size(model):
    blobs = sim.model_blobs(model, seed=1)
    axis = np.arange(-20, 21) * VS
    for name in ("apo-ferritin", "ribosome", "beta-galactosidase"):
        d = _eval_blobs(blobs[name], np.eye(3), axis, axis, axis, 0.4 * VS)
        inside = d > 0.35
        extent = [np.ptp(axis[np.any(inside, axis=tuple(j for j in range(3) if j != i))]) for i in range(3)]
        real = max(sim.DIMENSIONS_A[name].extent_A)
        assert 0.55 * real < max(extent) < 1.35 * real, (model, name, extent)
    # hollow complexes stay hollow in the envelope model
    d = _eval_blobs(sim.model_blobs("envelope")["virus-like-particle"], np.eye(3), axis, axis, axis, 4.0)
    assert d[20, 20, 20] < 0.05 and d[20, 20, 20 + 13] > 0.5


def test_lobes_vary_by_seed_stay_in_the_real_box_and_are_drawn_only_when_named():
    axis = np.arange(-20, 21) * VS
    shapes = [sim.model_blobs("lobes", seed=s)["beta-galactosidase"] for s in range(6)]
    assert len({len(b) for b in shapes}) > 1 and all(2 <= len(b) <= 5 for b in shapes)
    semi = np.asarray(sim.DIMENSIONS_A["beta-galactosidase"].extent_A) / 2
    for blobs in shapes:  # every lobe inside the envelope's bounding box (particle frame)
        for b in blobs:
            assert np.all(np.abs(b.centre_A) + np.asarray(b.axes_A) <= semi + 1e-6)
    a, b = (_eval_blobs(x, np.eye(3), axis, axis, axis, 4.0) for x in shapes[:2])
    assert ((a > 0.5) ^ (b > 0.5)).sum() > 0.1 * ((a > 0.5) | (b > 0.5)).sum()  # a different outline per run
    np.testing.assert_array_equal(
        _eval_blobs(sim.model_blobs("lobes", seed=3)["ribosome"], np.eye(3), axis, axis, axis, 4.0),
        _eval_blobs(sim.model_blobs("lobes", seed=3)["ribosome"], np.eye(3), axis, axis, axis, 4.0))
    vlp = _eval_blobs(sim.model_blobs("lobes", seed=2)["virus-like-particle"], np.eye(3), axis, axis, axis, 4.0)
    assert vlp[20, 20, 20] < 0.4 and vlp[20, 20, 20 + 13] > 0.5  # a shell, its content faint
    # never drawn unless a spec names it; named, always
    assert "lobes" not in {lk.draw_look(np.random.default_rng(i), 1.0).particle_model for i in range(60)}
    assert lk.hold_out("random", {"particle_model": "subunits"})["particle_model"] == ["classic", "envelope"]
    named = [lk.draw_look(np.random.default_rng(i), 0.5, {"particle_model": "lobes"}) for i in range(5)]
    assert {x.particle_model for x in named} == {"lobes"}
    with pytest.raises(ValueError):
        lk.check_look_spec({"filter": "lobes"})


def test_a_lobes_look_renders_its_own_particles(picks):
    cfg = sim.SimConfig(shape_vox=SMALL, difficulty="easy")
    base = lk.draw_look(np.random.default_rng(1), 0.5, {"particle_model": "envelope"})
    vols = {m: sim.simulate_tomogram(picks, cfg, seed=2, look=lk.Look(**{**base.to_dict(), "particle_model": m}))
            for m in ("envelope", "lobes")}
    assert all(np.isfinite(v).all() for v in vols.values())
    assert not np.allclose(vols["envelope"], vols["lobes"])


def _noisy_step():
    """A step of 5 noise std along x in unit white noise, and the measures of what a filter did to it:
    the noise left far from the step and the jump kept across it."""
    clean = np.zeros((32, 48, 48), np.float32)
    clean[:, :, 24:] = 5.0
    noisy = clean + np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    return noisy, (lambda v: v[:, :, :18].std()), (lambda v: (v[:, :, 25] - v[:, :, 22]).mean())


def test_nonlinear_diffusion_smooths_noise_and_keeps_edges():
    from czii_kaggle.simulate.microscope import nonlinear_diffusion
    from scipy.ndimage import gaussian_filter

    noisy, flat, jump = _noisy_step()
    out = noisy.copy()
    nonlinear_diffusion(out, 6)
    gauss = gaussian_filter(noisy, 1.0)
    # less noise left than a 1-voxel Gaussian leaves, and a sharper edge than it keeps
    assert flat(out) < 0.95 * flat(gauss) and flat(out) < 0.2
    assert jump(out) > 1.05 * jump(gauss) and jump(out) > 0.9 * 5.0
    assert abs(out.mean() - noisy.mean()) < 1e-3  # it moves intensity, it does not make or lose any
    scaled = noisy * np.float32(7.5)  # K follows the volume's own differences: the result scales with it
    nonlinear_diffusion(scaled, 6)
    np.testing.assert_allclose(scaled / 7.5, out, atol=1e-4)


def test_adaptive_wiener_smooths_flat_noise_keeps_structure_and_scales():
    from czii_kaggle.simulate.microscope import adaptive_wiener
    from scipy.ndimage import uniform_filter

    noisy, flat, jump = _noisy_step()
    before = noisy.copy()
    out = adaptive_wiener(noisy, 5)
    np.testing.assert_array_equal(noisy, before)  # a new volume: the input is kept
    mean5 = uniform_filter(noisy, 5)
    # the flat noise goes (most of the way to a 5-voxel mean), the step stays (unlike that mean)
    assert flat(out) < 0.5 * flat(noisy) and flat(out) < 1.6 * flat(mean5)
    assert jump(out) > 0.85 * 5.0 and jump(out) > 1.3 * jump(mean5)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    np.testing.assert_allclose(adaptive_wiener(noisy * np.float32(3.0), 5) / 3.0, out, atol=1e-4)  # linear in scale


@pytest.mark.parametrize("name", ["diffusion", "wiener"])
def test_an_unseen_filter_is_drawn_only_when_named_and_renders(picks, name):
    assert name not in {lk.draw_look(np.random.default_rng(i), 1.0).filter for i in range(60)}
    named = [lk.draw_look(np.random.default_rng(i), 0.5, {"filter": name}) for i in range(3)]
    assert {x.filter for x in named} == {name}
    # the validation looks of bench_selection --val-looks: the training families, a filter no network saw
    spec = lk.hold_out("random", {"particle_model": "subunits", "ctf_mode": "unflipped"})
    assert lk.check_look_spec({**spec, "filter": name})["filter"] == name
    cfg = sim.SimConfig(shape_vox=SMALL, difficulty="easy")
    base = lk.draw_look(np.random.default_rng(1), 0.5, {"filter": "none"})
    vols = {f: sim.simulate_tomogram(picks, cfg, seed=2, look=lk.Look(**{**base.to_dict(), "filter": f}))
            for f in ("none", name)}
    assert all(np.isfinite(v).all() for v in vols.values())
    # the same scene, smoother: neighbouring voxels agree more after the filter
    corr = {f: np.corrcoef(v[:, :, :-1].ravel(), v[:, :, 1:].ravel())[0, 1] for f, v in vols.items()}
    assert corr[name] > corr["none"] + 0.1
    with pytest.raises(ValueError, match="filter must be one of"):
        sim.apply_microscope(np.zeros((8, 8, 8), np.float32), 10.0, np.random.default_rng(0), 2e4, 0.1, 0.0,
                             filter="bilateral")


def test_ctf_modes():
    k = np.linspace(0, 0.05, 400)
    flipped = sim.ctf_envelope(k, 30000.0, 0.07, 0.0, "flipped")
    signed = sim.ctf_envelope(k, 30000.0, 0.07, 0.0, "unflipped")
    none = sim.ctf_envelope(k, 30000.0, 0.07, 500.0, "none")
    np.testing.assert_allclose(flipped, np.abs(signed), atol=1e-6)
    assert (signed < -0.1).any() and (flipped >= 0).all()
    np.testing.assert_allclose(none, np.exp(-0.25 * 500.0 * k**2), rtol=1e-5)
    with pytest.raises(ValueError):
        sim.ctf_envelope(k, 30000.0, mode="half")


def test_median3_separable_is_three_axis_medians():
    vol = np.random.default_rng(0).standard_normal((12, 14, 16)).astype(np.float32)
    want = vol.copy()
    for axis in range(3):
        size = [1, 1, 1]
        size[axis] = 3
        inner = ndimage.median_filter(want, size=size, mode="nearest")
        sl = [slice(None)] * 3
        sl[axis] = slice(1, -1)
        want[tuple(sl)] = inner[tuple(sl)]
    got = vol.copy()
    median3_separable(got)
    np.testing.assert_allclose(got, want)


def _radial_power(vol):
    p = np.abs(np.fft.fftn(vol)) ** 2
    f = np.sqrt(sum(np.meshgrid(*[np.fft.fftfreq(n) ** 2 for n in vol.shape], indexing="ij")))
    return p[(f > 0.05) & (f < 0.1)].mean(), p[(f > 0.3) & (f < 0.45)].mean()


def test_noise_colour_and_filters_shape_the_spectrum():
    empty = np.zeros((32, 64, 64), np.float32)

    def image(**kw):
        return sim.apply_microscope(empty.copy(), VS, np.random.default_rng(0), 30000.0, 1.0, 0.0, **kw)

    white_lo, white_hi = _radial_power(image(filter="none", tilt_range_deg=90.0))
    pink_lo, pink_hi = _radial_power(image(filter="none", tilt_range_deg=90.0, noise_exponent=1.5))
    assert pink_lo / pink_hi > 4 * white_lo / white_hi
    lp_lo, lp_hi = _radial_power(image(filter="lowpass", denoise_sigma_vox=1.0, tilt_range_deg=90.0))
    assert lp_hi < 0.02 * lp_lo  # white: about 1
    aniso = image(filter="anisotropic", denoise_sigma_vox=1.0, anisotropy=3.0, tilt_range_deg=90.0)
    dz = np.diff(aniso, axis=0).std()
    dx = np.diff(aniso, axis=2).std()
    assert dz < 0.6 * dx  # smoother along z


def test_simulate_dataset_random_looks_recorded_and_overwrite_guard(tmp_path):
    cfg = sim.SimConfig(shape_vox=(16, 64, 64), look={"filter": "median"})
    ds = sim.simulate_dataset(tmp_path / "a", n_train=1, n_test=1, config=cfg, seed=2)
    meta = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert meta["config"]["look"] == {"filter": "median"}
    for entry in meta["runs"]:
        on_disk = json.loads((tmp_path / "a" / "looks" / f"{entry['run']}.json").read_text())
        assert on_disk == entry["look"] and on_disk["filter"] == "median"
        assert sim.Look.from_dict(on_disk) == ds.looks[entry["run"]]
    tomo = ds.root / "test" / "static" / "ExperimentRuns" / ds.test_runs[0]
    before = sorted(p.stat().st_mtime_ns for p in tomo.rglob("*") if p.is_file())
    with pytest.raises(CziiInputError, match="not empty"):
        sim.simulate_dataset(tmp_path / "a", n_train=1, n_test=1, config=cfg, seed=3)
    assert sorted(p.stat().st_mtime_ns for p in tomo.rglob("*") if p.is_file()) == before  # untouched
    sim.simulate_dataset(tmp_path / "a", n_train=1, n_test=1, config=cfg, seed=2, overwrite=True)
    classic = sim.simulate_dataset(tmp_path / "b", n_train=0, n_test=1, config=sim.SimConfig(shape_vox=(16, 64, 64)))
    assert classic.looks[classic.test_runs[0]].is_classic


def test_cli_simulate_refuses_a_non_empty_out_unless_overwrite(tmp_path, capsys):
    from czii_kaggle.cli import main

    root = tmp_path / "data"
    real = root / "czii-cryo-et-object-identification" / "train" / "overlay" / "ExperimentRuns" / "TS_5_4"
    real.mkdir(parents=True)
    (real / "keep.json").write_text("{}")
    args = ["simulate", "--out", str(root), "--n-train", "1", "--n-test", "0", "--shape", "16", "64", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(root) in err and "not empty" in err and "Traceback" not in err
    assert not (root / "simulation.json").exists()
    assert main([*args, "--overwrite", "--look", '{"ctf_mode": "none"}']) == 0
    assert (real / "keep.json").read_text() == "{}"
    meta = json.loads((root / "simulation.json").read_text())
    assert meta["runs"][0]["look"]["ctf_mode"] == "none"
    assert main(["simulate", "--out", str(tmp_path / "x"), "--look", '{"filter": "sharpen"}']) == 2
    assert "sharpen" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["simulate", "--out", str(tmp_path / "y"), "--look", "not json"])


def test_hold_out_leaves_one_family_out():
    spec = lk.hold_out("random", {"filter": "median", "particle_model": "classic"})
    assert spec == {"filter": ["none", "gaussian", "lowpass", "anisotropic"], "particle_model": ["envelope", "subunits"]}
    looks = [lk.draw_look(np.random.default_rng(i), 0.5, spec) for i in range(40)]
    assert "median" not in {x.filter for x in looks} and "classic" not in {x.particle_model for x in looks}
    assert lk.hold_out({"ctf_mode": ["none", "flipped"]}, {"ctf_mode": "none"}) == {"ctf_mode": "flipped"}
    with pytest.raises(ValueError):
        lk.hold_out("random", {"crowding": "1"})
    with pytest.raises(ValueError):
        lk.hold_out({"ctf_mode": "none"}, {"ctf_mode": "none"})
