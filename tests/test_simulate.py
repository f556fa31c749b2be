"""The tomogram simulator: determinism, particle shapes, physics, layouts and the Kaggle tree."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from czii_kaggle import layout
from czii_kaggle import simulate as sim
from czii_kaggle.errors import CziiInputError
from czii_kaggle.particles import BY_NAME, NAMES

VS = 10.012444537618887
SMALL = (48, 160, 160)
EASY_TYPES = ("apo-ferritin", "ribosome", "virus-like-particle")
HARD_TYPES = ("beta-galactosidase", "thyroglobulin")


@pytest.fixture(scope="module")
def small_picks() -> pd.DataFrame:
    return sim.random_layout(SMALL, VS, np.random.default_rng(3), run="r", count_scale=15.0)


@pytest.fixture(scope="module")
def snr_layout() -> pd.DataFrame:
    return sim.random_layout((64, 224, 224), VS, np.random.default_rng(7), run="r", count_scale=10.0)


# --------------------------------------------------------------------------- tomogram


def test_simulate_tomogram_shape_dtype_determinism(small_picks):
    cfg = sim.SimConfig(shape_vox=SMALL, difficulty="medium")
    a = sim.simulate_tomogram(small_picks, cfg, seed=5)
    b = sim.simulate_tomogram(small_picks, cfg, seed=5)
    c = sim.simulate_tomogram(small_picks, cfg, seed=6)
    assert a.shape == SMALL and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.1
    assert abs(float(a.mean())) < 1e-3 and abs(float(a.std()) - 1.0) < 1e-3


def test_particles_are_dark_at_their_centres(small_picks):
    vol = sim.simulate_tomogram(small_picks, sim.SimConfig(shape_vox=SMALL, difficulty=0.0, clutter=False), seed=1)
    solid = small_picks[small_picks["particle_type"] == "ribosome"]
    c = np.rint(solid[["z", "y", "x"]].to_numpy() / VS).astype(int)
    assert len(c) >= 2
    at_centres = vol[c[:, 0], c[:, 1], c[:, 2]]
    assert np.all(at_centres < 0) and np.median(at_centres) < -0.8


def test_bad_input_raises():
    picks = pd.DataFrame({"experiment": ["r"], "particle_type": ["ribosome"], "x": [800.0], "y": [800.0]})
    with pytest.raises(CziiInputError, match=r"^invalid picks, 1 problem\(s\): missing column\(s\) z"):
        sim.simulate_tomogram(picks, sim.SimConfig(shape_vox=SMALL))
    picks = picks.assign(z=200.0, particle_type="proteasome")
    with pytest.raises(CziiInputError, match="unknown particle_type 'proteasome' in row 0"):
        sim.simulate_tomogram(picks, sim.SimConfig(shape_vox=SMALL))
    with pytest.raises(ValueError):
        sim.SimConfig(difficulty="extreme")
    with pytest.raises(ValueError):
        sim.SimConfig(difficulty=1.5)
    assert sim.difficulty_value("hard") == sim.DIFFICULTY["hard"]
    assert sim.difficulty_value("0.3") == 0.3


# --------------------------------------------------------------------------- shapes


def _moments(density: np.ndarray, voxel_size_A: float):
    """Centre of mass offset, second-moment eigenvalues (ascending) and max |skewness| along them."""
    n = density.shape[0]
    g = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij"), -1).reshape(-1, 3) * voxel_size_A
    w = density.reshape(-1) / density.sum()
    q = g - w @ g
    ev, evec = np.linalg.eigh((q * w[:, None]).T @ q)
    proj = q @ evec
    skew = max(abs((proj[:, k] ** 3 * w).sum()) / ev[k] ** 1.5 for k in range(3))
    return ev, skew, np.linalg.norm(g, axis=1).reshape(density.shape)


@pytest.mark.parametrize("name", NAMES)
def test_render_particle_shape_is_recognisable(name):
    rot = sim.random_rotations(1, np.random.default_rng(NAMES.index(name)))[0]
    d = sim.render_particle(name, rot, VS, offset_vox=(0.3, -0.2, 0.4))
    r = BY_NAME[name].radius_A
    ev, skew, dist_A = _moments(d, VS)
    solid = d > 0.5
    extent = dist_A[solid].max() / r
    assert 0.7 <= extent <= 1.15, extent
    centre = d[dist_A < 0.4 * r].mean()
    shell = d[(dist_A > 0.75 * r) & (dist_A < 0.95 * r)].mean()
    n_parts = ndimage.label(solid)[1]
    if name in ("apo-ferritin", "virus-like-particle"):
        assert centre < 0.25 * shell and shell > 0.5
        assert ev[2] / ev[0] < 1.1 and n_parts == 1
    elif name == "ribosome":  # two unequal subunits: non-spherical, not centro-symmetric
        assert ev[2] / ev[0] > 1.5 and skew > 0.15 and n_parts == 1
    elif name == "beta-galactosidase":  # four lobes of equal size
        lab, n_parts = ndimage.label(solid)
        sizes = np.bincount(lab.ravel())[1:]
        assert n_parts == 4 and sizes.min() > 0.7 * sizes.max()
    elif name == "thyroglobulin":  # elongated
        assert ev[2] / ev[1] > 1.5 and centre > 0.5
    else:  # beta-amylase: compact and small
        assert ev[2] / ev[0] < 1.6 and centre > 0.9 and n_parts == 1


def test_beta_amylase_is_the_smallest_and_vlp_a_thin_shell():
    mass = {n: sim.render_particle(n, None, VS).sum() for n in NAMES}
    assert min(mass, key=mass.get) == "beta-amylase"
    d = sim.render_particle("virus-like-particle", None, VS)
    _, _, dist_A = _moments(d, VS)
    r = BY_NAME["virus-like-particle"].radius_A
    assert d[(dist_A > r - 60) & (dist_A < r - 40)].mean() < 0.3  # 40-60 A inside the surface: lumen


def test_random_rotations_are_rotations():
    rots = sim.random_rotations(50, np.random.default_rng(0))
    np.testing.assert_allclose(rots @ rots.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (50, 3, 3)), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-9)
    # uniform: the image of the z axis has mean ~0
    assert np.abs(rots[:, :, 2].mean(0)).max() < 0.3


# --------------------------------------------------------------------------- physics


def _wedge_power_ratio(vol: np.ndarray, tilt_deg: float = 60.0) -> float:
    """Mean Fourier power inside the missing wedge / outside, over 0.05-0.3 cycles per voxel."""
    p = np.abs(np.fft.rfftn(vol)) ** 2
    nz, ny, nx = vol.shape
    fz = np.fft.fftfreq(nz)[:, None, None]
    fy = np.fft.fftfreq(ny)[None, :, None]
    fx = np.fft.rfftfreq(nx)[None, None, :]
    f = np.sqrt(fz**2 + fy**2 + fx**2)
    band = (f > 0.05) & (f < 0.3)
    missing = np.abs(fz) > np.abs(fx) * np.tan(np.radians(tilt_deg)) + 0.02
    sampled = np.abs(fz) < np.abs(fx) * np.tan(np.radians(tilt_deg)) - 0.02
    return p[band & missing].mean() / p[band & sampled].mean()


def test_missing_wedge(small_picks):
    vol = sim.simulate_tomogram(small_picks, sim.SimConfig(shape_vox=SMALL, difficulty="medium"), seed=2)
    assert _wedge_power_ratio(vol) < 0.05
    # control: with a 90 degree tilt range nothing is missing
    full = sim.simulate_tomogram(
        small_picks, sim.SimConfig(shape_vox=SMALL, difficulty="medium", tilt_range_deg=90.0), seed=2
    )
    assert _wedge_power_ratio(full) > 0.3
    # the mask helper marks the same region
    mask = sim.wedge_mask(SMALL, 60.0)
    assert mask.shape == (SMALL[0], SMALL[1], SMALL[2] // 2 + 1)
    assert mask[0, 0, 0] and not mask[1, 0, 0] and mask[1, 0, 5]


def test_ctf_is_a_band_pass():
    k = np.linspace(0, 0.05, 500)  # up to Nyquist at 10 A
    ctf = sim.ctf_envelope(k, defocus_A=30000.0, bfactor_A2=0.0)
    assert ctf[0] == pytest.approx(0.07, abs=1e-4)  # amplitude contrast at k = 0
    first_zero = k[np.argmin(np.where((k > 0.01) & (k < 0.045), ctf, np.inf))]
    # first zero near sqrt(1 / (lambda * defocus)) ~ 0.041 / A at 3 um, 300 kV
    assert 0.038 < first_zero < 0.044
    assert ctf.max() > 0.95


def test_difficulty_lowers_snr(snr_layout):
    snrs = {}
    for d in ("easy", "medium", "hard"):
        vol = sim.simulate_tomogram(snr_layout, sim.SimConfig(shape_vox=(64, 224, 224), difficulty=d), seed=4)
        snrs[d] = sim.detection_snr(vol, snr_layout, VS)["snr"]
    table = pd.DataFrame(snrs)
    assert set(table.index) == set(NAMES)
    assert (table["easy"] > table["medium"]).all() and (table["medium"] > table["hard"]).all()
    hard = table["hard"]
    assert hard[list(EASY_TYPES)].mean() > 2.0 * hard[list(HARD_TYPES)].mean()
    assert hard[list(HARD_TYPES)].max() < 3.0  # hard classes really hard at "hard"
    assert table["easy"][list(HARD_TYPES)].min() > 3.0  # and visible at "easy"


# --------------------------------------------------------------------------- layouts


def _overlap_fraction(picks: pd.DataFrame, factor: float = 0.9) -> float:
    xyz = picks[["x", "y", "z"]].to_numpy()
    r = picks["particle_type"].map(lambda n: BY_NAME[n].radius_A).to_numpy()
    pairs = cKDTree(xyz).query_pairs(2 * factor * r.max(), output_type="ndarray")
    if len(pairs) == 0:
        return 0.0
    d = np.linalg.norm(xyz[pairs[:, 0]] - xyz[pairs[:, 1]], axis=1)
    return float((d < factor * (r[pairs[:, 0]] + r[pairs[:, 1]]) - 1e-6).sum()) / len(picks)


def test_random_layout_counts_positions_and_overlaps():
    shape = sim.FULL_SHAPE_VOX
    layouts = [sim.random_layout(shape, VS, np.random.default_rng(s), run=f"r{s}") for s in range(12)]
    counts = pd.concat(layouts).groupby("particle_type").size() / len(layouts)
    for name in NAMES:
        mean = sim.REAL_MEAN_COUNTS[name]
        assert abs(counts[name] - mean) < 4 * np.sqrt(mean / len(layouts)) + 1, (name, counts[name])
    ext = (np.array(shape[::-1]) - 1) * VS  # x, y, z
    for lay in layouts:
        assert list(lay.columns) == ["experiment", "particle_type", "x", "y", "z"]
        assert lay["experiment"].nunique() == 1
        r = lay["particle_type"].map(lambda n: BY_NAME[n].radius_A).to_numpy()[:, None]
        xyz = lay[["x", "y", "z"]].to_numpy()
        assert np.all(xyz >= r - 1e-6) and np.all(xyz <= ext - r + 1e-6)
        assert _overlap_fraction(lay) < 0.01
    # z sits in an ice slab thinner than the volume (like the real runs)
    assert np.median([lay["z"].max() - lay["z"].min() for lay in layouts]) < 1600


def test_random_layout_scales_with_volume_and_count_scale():
    full = [len(sim.random_layout((92, 630, 630), VS, np.random.default_rng(s))) for s in range(8)]
    more = [len(sim.random_layout((92, 630, 630), VS, np.random.default_rng(s), count_scale=2.0)) for s in range(8)]
    expected = sum(sim.REAL_MEAN_COUNTS.values()) / 2
    assert abs(np.mean(full) - expected) < 0.15 * expected
    assert abs(np.mean(more) - 2 * expected) < 0.15 * 2 * expected

def test_random_layout_count_scale_per_type():
    boost = {"beta-galactosidase": 4.0, "ribosome": 0.0}
    lays = [sim.random_layout((92, 630, 630), VS, np.random.default_rng(s), count_scale=boost) for s in range(8)]
    n = pd.concat(lays)["particle_type"].value_counts() / len(lays)
    half = {k: v / 2 for k, v in sim.REAL_MEAN_COUNTS.items()}  # half the full depth
    assert n.get("ribosome", 0) == 0
    assert abs(n["beta-galactosidase"] - 4 * half["beta-galactosidase"]) < 0.25 * 4 * half["beta-galactosidase"]
    assert abs(n["apo-ferritin"] - half["apo-ferritin"]) < 0.25 * half["apo-ferritin"]
    with pytest.raises(ValueError, match="unknown particle types"):
        sim.count_scales({"beta-galactosidas": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        sim.count_scales({"ribosome": -1.0})



def _raw_real_picks(real_root, run: str) -> pd.DataFrame:
    rows = []
    for f in sorted(layout.picks_dir(real_root, run).glob("*.json")):
        for p in json.loads(f.read_text())["points"]:
            rows.append((f.stem, p["location"]["x"], p["location"]["y"], p["location"]["z"]))
    return pd.DataFrame(rows, columns=["particle_type", "x", "y", "z"])


def _sorted_xyz(df: pd.DataFrame) -> np.ndarray:
    return df.sort_values(["particle_type", "x", "y", "z"])[["x", "y", "z"]].to_numpy()


def test_real_layouts_keep_real_positions(real_root):
    lays = sim.real_layouts(real_root)
    assert set(lays) == {"TS_5_4", "TS_69_2", "TS_6_4", "TS_6_6", "TS_73_6"}
    ts = lays["TS_5_4"]
    assert ts.groupby("particle_type").size().to_dict() == {
        "apo-ferritin": 46, "beta-amylase": 10, "beta-galactosidase": 12,
        "ribosome": 31, "thyroglobulin": 30, "virus-like-particle": 11,
    }
    np.testing.assert_allclose(_sorted_xyz(ts), _sorted_xyz(_raw_real_picks(real_root, "TS_5_4")))
    assert (ts["experiment"] == "TS_5_4").all()


def test_crop_layout(real_root):
    picks = sim.real_layouts(real_root)["TS_69_2"]
    shape = (184, 300, 400)
    crop = sim.crop_layout(picks, shape, VS)
    assert 0 < len(crop) < len(picks)
    assert crop["x"].max() <= (shape[2] - 1) * VS and crop["y"].max() <= (shape[1] - 1) * VS
    outside = picks[(picks["x"] > (shape[2] - 1) * VS) | (picks["y"] > (shape[1] - 1) * VS)]
    assert len(crop) + len(outside) == len(picks)


# --------------------------------------------------------------------------- dataset


def test_simulate_dataset_writes_the_kaggle_tree(tmp_path):
    from czii_kaggle.omezarr import read_tomogram
    from czii_kaggle.picks import read_run_picks

    cfg = sim.SimConfig(shape_vox=SMALL)
    ds = sim.simulate_dataset(
        tmp_path, n_train=2, n_test=2, config=cfg, seed=11,
        difficulties=["easy", 0.3, "easy", "hard"], count_scale=15.0,
    )
    assert ds.root == tmp_path / "czii-cryo-et-object-identification"
    assert ds.solution_csv == tmp_path / "test_solution.csv"
    assert len(ds.train_runs) == 2 and len(ds.test_runs) == 2
    assert not set(ds.train_runs) & set(ds.test_runs)
    assert ds.difficulties[ds.test_runs[1]] == sim.DIFFICULTY["hard"]
    assert layout.list_runs(ds.root, "train") == sorted(ds.train_runs)
    assert layout.list_runs(ds.root, "test") == sorted(ds.test_runs)
    assert layout.list_pick_runs(ds.root) == sorted(ds.train_runs)
    for run in ds.train_runs:
        path = ds.root / "train/static/ExperimentRuns" / run / "VoxelSpacing10.000/denoised.zarr"
        vol, vs = read_tomogram(path)
        assert vol.shape == SMALL and vs == pytest.approx(VS)
        assert sorted(p.name for p in layout.picks_dir(ds.root, run).glob("*.json")) == sorted(
            f"{n}.json" for n in NAMES
        )
        picks = read_run_picks(ds.root, run)
        assert len(picks) > 5 and (picks["experiment"] == run).all()
        # the picks sit on the dark particles of that tomogram
        assert sim.detection_snr(vol, picks, vs)["snr"].median() > 2.0
    sol = pd.read_csv(ds.solution_csv)
    assert list(sol.columns) == ["id", "experiment", "particle_type", "x", "y", "z"]
    assert sol["id"].tolist() == list(range(len(sol)))
    assert set(sol["experiment"]) == set(ds.test_runs)
    for run in ds.test_runs:
        assert layout.tomogram_path(ds.root, "test", run).is_dir()
        assert not (layout.overlay_runs_dir(ds.root) / run).exists()
    easy_run = ds.test_runs[0]
    vol, vs = read_tomogram(layout.tomogram_path(ds.root, "test", easy_run))
    truth = sol[sol["experiment"] == easy_run]
    assert sim.detection_snr(vol, truth, vs)["snr"].median() > 2.0
    # a shifted copy of the truth is not on the particles: the CSV holds this run's picks
    shifted = truth.assign(x=truth["x"] + 400.0)
    assert sim.detection_snr(vol, truth, vs)["snr"].median() > sim.detection_snr(vol, shifted, vs)["snr"].median() + 1.5
    meta = json.loads((tmp_path / "simulation.json").read_text())
    assert [r["run"] for r in meta["runs"]] == ds.train_runs + ds.test_runs


def test_simulate_dataset_real_layouts(tmp_path, real_root):
    from czii_kaggle.picks import read_run_picks

    shape = (184, 200, 200)
    ds = sim.simulate_dataset(
        tmp_path, n_train=1, n_test=1, config=sim.SimConfig(shape_vox=shape, difficulty="easy"),
        seed=0, real_train_layouts=True, real_root=real_root,
    )
    assert ds.train_runs == ["TS_5_4"] and ds.test_runs[0].startswith("TS_sim_")
    written = read_run_picks(ds.root, "TS_5_4")
    expected = sim.crop_layout(sim.real_layouts(real_root)["TS_5_4"], shape, VS)
    assert len(written) == len(expected) > 0
    np.testing.assert_allclose(_sorted_xyz(written), _sorted_xyz(expected), atol=1e-3)


def test_training_run_without_particles_still_has_its_pick_files(tmp_path):
    from czii_kaggle import layout, picks as picks_io

    ds = sim.simulate_dataset(tmp_path, n_train=2, n_test=0, config=sim.SimConfig(shape_vox=(16, 64, 64)), seed=1)
    assert layout.list_pick_runs(ds.root) == ds.train_runs  # both runs, even one with no particle
    for run in ds.train_runs:
        assert len(list(layout.picks_dir(ds.root, run).glob("*.json"))) == 6
    counts = picks_io.read_all_picks(ds.root).groupby("experiment").size()
    assert counts.reindex(ds.train_runs, fill_value=0).min() == 0


def test_real_layouts_need_an_explicit_root():
    with pytest.raises(CziiInputError, match="^real layouts need real_root"):
        sim.real_layouts(None)
    assert not hasattr(sim, "default_real_root")  # the library does not search beside a checkout


def _blob_runs(rng, noise_sigma, n_runs=4, shape=(40, 96, 96), vs=10.0, amp=1.0, sigma_vox=2.5):
    """Volumes of white noise with Gaussian blobs at apo-ferritin picks, and beta-amylase picks on nothing."""
    vols, picks = [], []
    g = np.indices(shape).astype(float)
    for _ in range(n_runs):
        centres = []
        while len(centres) < 10:
            c = rng.uniform([10, 10, 10], np.array(shape) - 10)
            if all(np.linalg.norm(c - o) > 16 for o in centres):
                centres.append(c)
        vol = noise_sigma * rng.standard_normal(shape)
        for c in centres[:7]:
            vol += amp * np.exp(-((g - c[:, None, None, None]) ** 2).sum(0) / (2 * sigma_vox**2))
        rows = [("apo-ferritin", c) for c in centres[:7]] + [("beta-amylase", c) for c in centres[7:]]
        picks.append(pd.DataFrame({"experiment": f"TS_{len(picks)}", "particle_type": [n for n, _ in rows],
                                   "x": [c[2] * vs for _, c in rows], "y": [c[1] * vs for _, c in rows],
                                   "z": [c[0] * vs for _, c in rows]}))
        vols.append(vol.astype(np.float32))
    return vols, picks


def test_class_average_snr_is_the_matched_filters_and_scales_with_the_noise():
    rng = np.random.default_rng(5)
    vs, sigma_vox = 10.0, 2.5
    h = int(np.ceil(1.2 * BY_NAME["apo-ferritin"].radius_A / vs))
    g = np.arange(-h, h + 1)
    r2 = g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2
    blob = np.exp(-r2 / (2 * sigma_vox**2))
    inside = r2 <= h**2
    ideal = np.linalg.norm(np.where(inside, blob - blob[inside].mean(), 0.0))  # the known template's SNR at unit noise
    got = {}
    for noise in (0.25, 0.5):
        vols, picks = _blob_runs(rng, noise, vs=vs, sigma_vox=sigma_vox)
        table = sim.class_average_snr(vols, picks, vs, seed=1)
        got[noise] = table.loc["apo-ferritin", "snr"]
        assert table.loc["apo-ferritin", "n"] == 28
        assert abs(table.loc["beta-amylase", "snr"]) < 1.5  # picks on nothing: no signal
    # the class average of 14 noisy copies stands in for the true template: under the ideal matched filter
    # (the known blob), by more where its copies are noisier (seeds 0-5: 81-86 % of it, then 70-79 %)
    assert 0.7 * ideal / 0.25 < got[0.25] <= 1.05 * ideal / 0.25
    assert 0.6 * ideal / 0.5 < got[0.5] <= 1.05 * ideal / 0.5
    assert 1.8 < got[0.25] / got[0.5] < 2.8  # twice the noise: half the signal-to-noise, less a noisier average


def test_class_average_snr_needs_two_runs():
    vols, picks = _blob_runs(np.random.default_rng(0), 0.5, n_runs=1)
    with pytest.raises(ValueError, match="at least 2 volumes"):
        sim.class_average_snr(vols, picks, 10.0)
