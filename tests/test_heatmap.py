"""The 3D heatmap detector: coordinates, windows, peaks, targets, training, weights checks."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from czii_kaggle import omezarr, layout
from czii_kaggle.errors import CziiInputError
from czii_kaggle.bundle import (DEFAULT_BUNDLE, export_heatmap_onnx, file_sha256, load_heatmap_bundle,
                                save_heatmap_json)
from czii_kaggle.detectors.heatmap import (LEVEL_WINDOWS, HeatmapConfig, HeatmapDetector, A_to_grid, adapt_batchnorm,
                                           default_aggregate_config, find_peaks, heatmap_device, grid_to_A, heatmap_candidates, load_model, load_net,
                                           normalise, predict_heatmaps, read_input, window_starts)
from czii_kaggle.detectors.heatmap_net import HeatmapUNet, focal_heatmap_loss, widen_state_dict
from czii_kaggle.train_heatmap import (HeatmapTrainConfig, TrainRun, augment_look, augment_particles,
                                       recalibrate_heatmap, render_targets, sample_batch, train_heatmap, training_start)
from czii_kaggle.particles import NAMES, get

VS1 = 20.024889075237774  # level-1 voxel size of the Kaggle tomograms


def test_grid_mapping_matches_block_mean_binning():
    # level-1 voxel j is the mean of level-0 voxels 2j, 2j+1: its centre is (2j + 0.5) level-0 voxels
    s0 = VS1 / 2
    assert grid_to_A(np.array([3.0]), VS1, 1)[0] == pytest.approx((2 * 3 + 0.5) * s0)
    # output voxel k (stride 2) covers level-1 voxels 2k, 2k+1
    assert grid_to_A(np.array([3.0]), VS1, 1, stride=2)[0] == pytest.approx((6.5 + 0.25) * VS1)
    xyz = np.array([[1234.5, 20.0, 999.0]])
    np.testing.assert_allclose(grid_to_A(A_to_grid(xyz, VS1, 1, 2), VS1, 1, 2), xyz)


def test_window_starts_cover_with_overlap():
    for length, window, overlap in [(320, 168, 16), (96, 96, 16), (1000, 168, 40), (170, 168, 16)]:
        starts = window_starts(length, window, overlap)
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))
    assert window_starts(320, 168, 16) == [0, 152]  # Kaggle's level 1, padded: 2 windows along y and x
    with pytest.raises(ValueError):
        window_starts(100, 168, 16)


def _pool_model(n_classes: int):
    """A stand-in network: the 2x2x2 mean of the input, repeated per class (flip-equivariant)."""

    def model(batch: np.ndarray) -> np.ndarray:
        n, _, z, y, x = batch.shape
        m = batch.reshape(n, 1, z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(3, 5, 7))
        return np.repeat(m, n_classes, axis=1).astype(np.float32)

    return model


@pytest.mark.parametrize("tta", [1, 2, 3, 4, 8, 16])
def test_windows_blend_back_to_the_whole_volume(tta):
    rng = np.random.default_rng(0)
    vol = rng.random((40, 83, 70)).astype(np.float32)
    window = (24, 32, 40) if tta <= 4 else (24, 32, 32)
    cfg = HeatmapConfig(window_vox=window, overlap_vox=8, tta_views=tta, classes=NAMES[:2])
    prob = predict_heatmaps(_pool_model(2), vol, cfg)
    assert prob.shape == (2, 20, 42, 35)
    padded = np.pad(vol, [(0, 0), (0, 5), (0, 2)], mode="edge")
    whole = _pool_model(2)(padded[None, None])[0][:, :20, :42, :35]
    np.testing.assert_allclose(prob, whole, atol=1e-5)


@pytest.mark.parametrize("tta", [8, 16])
def test_views_average_the_symmetries_of_the_window(tta):
    """8 views: the mean over the x-y square's 8 symmetries (4 turns, each mirrored) of the model's
    output turned back; 16: also each flipped along z. Written here with np.rot90, apart from VIEWS."""
    rng = np.random.default_rng(3)
    vol = rng.random((24, 32, 32)).astype(np.float32)

    def lopsided(batch):  # not symmetric: also sees the voxels 2 further along x
        return _pool_model(2)(batch) + _pool_model(2)(np.roll(batch, 2, axis=4))

    cfg = HeatmapConfig(window_vox=(24, 32, 32), overlap_vox=8, tta_views=tta, classes=NAMES[:2])
    got = predict_heatmaps(lopsided, vol, cfg)
    want, n = 0.0, 0
    for zflip in ([False, True] if tta == 16 else [False]):
        for mirror in (False, True):
            for k in range(4):
                v = vol[::-1] if zflip else vol
                v = v[:, :, ::-1] if mirror else v
                out = lopsided(np.ascontiguousarray(np.rot90(v, k, axes=(1, 2)))[None, None])[0]
                out = np.rot90(out, -k, axes=(2, 3))
                out = out[:, :, :, ::-1] if mirror else out
                want, n = want + (out[:, ::-1] if zflip else out), n + 1
    assert n == tta
    np.testing.assert_allclose(got, want / n, rtol=1e-5, atol=1e-6)
    four = predict_heatmaps(lopsided, vol, replace(cfg, tta_views=4))
    assert not np.allclose(four, got, atol=1e-3)  # the swapped views did change the average


def test_a_config_moves_to_another_level_with_its_voxel_size_and_window():
    cfg = HeatmapConfig(spectral="whiten_zxy", bn_adapt=0.5)
    full = cfg.at_level(0)
    assert (full.level, full.window_vox) == (0, LEVEL_WINDOWS[0]) and full.voxel_size_A == pytest.approx(VS1 / 2)
    assert (full.spectral, full.bn_adapt, full.sigma_fraction) == (cfg.spectral, cfg.bn_adapt, cfg.sigma_fraction)
    assert full.at_level(1) == cfg
    with pytest.raises(ValueError, match="level must be one of"):
        cfg.at_level(2)


def test_views_beyond_four_need_a_square_window():
    with pytest.raises(ValueError, match="square"):
        HeatmapConfig(window_vox=(24, 32, 40), tta_views=8)
    with pytest.raises(ValueError, match="tta_views"):
        HeatmapConfig(tta_views=5)


def test_tomogram_smaller_than_a_window_is_a_clear_error():
    with pytest.raises(CziiInputError, match="smaller than one heatmap window"):
        predict_heatmaps(_pool_model(6), np.zeros((40, 100, 100), np.float32), HeatmapConfig(), "x.zarr")


def _blobs(shape, centres, sigma):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    out = np.zeros(shape, np.float32)
    for c, s in zip(centres, sigma):
        out = np.maximum(out, np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s**2)))
    return out


def test_peaks_are_refined_below_a_voxel():
    centres = [(10.3, 20.6, 15.0), (30.0, 10.2, 40.7)]
    prob = 0.9 * _blobs((40, 40, 50), centres, [1.0, 1.0])
    zyx, score = find_peaks(prob, radius_vox=4.0, config=HeatmapConfig())
    assert len(zyx) == 2 and (score > 0.7).all()
    got = zyx[np.argsort(zyx[:, 0])]
    np.testing.assert_allclose(got, centres, atol=0.25)


@pytest.mark.parametrize("level, shape_out", [(1, (24, 40, 40)), (0, (48, 80, 80))])
def test_targets_become_candidates_at_the_picks(level, shape_out):
    """Targets rendered from picks, read back as heatmaps, give the picks again (Angstrom round trip), on
    the shipped level 1 and on level 0 (``bench_resolution.py``'s full-resolution network)."""
    vs = VS1 / 2 ** (1 - level)
    cfg = HeatmapConfig(level=level, voxel_size_A=vs)
    rng = np.random.default_rng(1)
    grid = {}
    picks = []
    for name in NAMES:
        r = get(name).radius_A
        xyz = rng.uniform(200, 1500, size=(3, 3))
        xyz[:, 2] = rng.uniform(200, 900, 3)
        keep = [xyz[0]]
        for p in xyz[1:]:
            if all(np.linalg.norm(p - q) > 3 * r for q in keep):
                keep.append(p)
        xyz = np.array(keep)
        picks.append(pd.DataFrame({"particle_type": name, "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}))
        grid[name] = A_to_grid(xyz[:, ::-1], vs, level, 2)
    target = render_targets(grid, np.zeros(3), shape_out, vs, cfg)
    assert target.shape == (6, *shape_out) and target.max() == 1.0
    assert (target == 1.0).sum() == sum(len(g) for g in grid.values())
    cands = heatmap_candidates(target, vs, "run", cfg)
    truth = pd.concat(picks, ignore_index=True)
    for name in NAMES:
        c = cands[(cands["particle_type"] == name) & (cands["score"] > 0.5)][["x", "y", "z"]].to_numpy()
        t = truth[truth["particle_type"] == name][["x", "y", "z"]].to_numpy()
        assert len(c) == len(t), name
        d = np.linalg.norm(c[:, None] - t[None], axis=-1).min(axis=0)
        assert (d < 0.5 * get(name).radius_A).all(), (name, d)


def _train_run(rng, shape=(48, 96, 96)) -> TrainRun:
    grid = {n: rng.uniform(2, np.array(shape) / 2 - 2, size=(3, 3)) for n in NAMES}
    return TrainRun("r", rng.random(shape).astype(np.float32) - 0.5, VS1, grid)


def test_batches_are_seeded_by_step_and_augmented_consistently():
    rng = np.random.default_rng(0)
    runs = [_train_run(rng), _train_run(rng)]
    cfg, tr = HeatmapConfig(), HeatmapTrainConfig(patch_vox=(16, 32, 32), batch=3, seed=5)
    x1, y1 = sample_batch(runs, 7, cfg, tr)
    x2, y2 = sample_batch(runs, 7, cfg, tr)
    x3, _ = sample_batch(runs, 8, cfg, tr)
    assert x1.shape == (3, 1, 16, 32, 32) and y1.shape == (3, 6, 8, 16, 16)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert (y1 == 1.0).any()  # most patches are centred near a pick


def test_look_augmentation_changes_the_look_not_the_targets():
    """A blob keeps its place under a random look; the patch stays in -0.5..0.5; seeded; with
    look_augment 1 every patch of a batch gets a look of its own."""
    z, y, x = np.mgrid[:16, :32, :32]
    blob = np.exp(-((z - 8) ** 2 + (y - 12) ** 2 + (x - 20) ** 2) / 8.0).astype(np.float32) - 0.5
    looks = [augment_look(blob, np.random.default_rng(i)) for i in range(6)]
    for a in looks:
        assert a.shape == blob.shape and a.dtype == np.float32 and a.min() >= -0.5 and a.max() <= 0.5
        assert not np.allclose(a, blob)
        # the blob is still the strongest feature near its centre (the gain keeps low frequencies' sign)
        assert abs(a[8, 12, 20] - np.median(a)) > 3 * np.abs(a[:, :, :4] - np.median(a)).mean()
    np.testing.assert_array_equal(augment_look(blob, np.random.default_rng(3)), looks[3])
    rng = np.random.default_rng(0)
    runs = [_train_run(rng)]
    cfg = HeatmapConfig()
    plain, aug = (HeatmapTrainConfig(patch_vox=(16, 32, 32), batch=4, seed=5, look_augment=p) for p in (0.0, 1.0))
    (x0, y0), (x1, y1) = sample_batch(runs, 3, cfg, plain), sample_batch(runs, 3, cfg, aug)
    assert not any(np.array_equal(a, b) for a, b in zip(x0, x1))
    with pytest.raises(ValueError, match="look_augment"):
        HeatmapTrainConfig(look_augment=1.5)
    assert HeatmapTrainConfig(device="cuda:1").device == "cuda:1" and HeatmapTrainConfig(device="cuda").device == "cuda"
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda:N, not 'gpu'"):
        HeatmapTrainConfig(device="gpu")


def test_look_respectral_reads_an_augmented_patch_as_the_input_step_would():
    """With a whitened input, each look-augmented patch goes through the input's spectral step and
    clip again (as a tomogram of that look would be read); the targets stay; with the spectral step
    none, or without the option, a batch is as before it."""
    from czii_kaggle.preprocess import spectral_filter

    runs = [_train_run(np.random.default_rng(0))]
    white = HeatmapConfig(spectral="whiten_zxy")
    aug, again = (HeatmapTrainConfig(patch_vox=(16, 32, 32), batch=4, seed=5, look_augment=1.0, look_respectral=r)
                  for r in (False, True))
    (x0, y0), (x1, y1) = sample_batch(runs, 3, white, aug), sample_batch(runs, 3, white, again)
    np.testing.assert_array_equal(y0, y1)
    for a, b in zip(x0, x1):
        # the step bins |fz| x |fxy|, so flips commute with it exactly and x-y quarter turns nearly
        # (the half spectrum of the real FFT lies along x): as if applied before them
        ref = normalise(spectral_filter(a[0], "whiten_zxy"))
        assert np.corrcoef(b[0].ravel(), ref.ravel())[0, 1] > 0.99
        assert np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1] < 0.9
    plain = HeatmapConfig()
    np.testing.assert_array_equal(sample_batch(runs, 3, plain, aug)[0], sample_batch(runs, 3, plain, again)[0])


def test_hard_negatives_are_the_predictions_on_no_pick():
    """A predicted point within a pick's radius (any type) is on a particle; one beyond every pick's
    radius is a hard negative; the rest of the row is kept as it was."""
    from czii_kaggle.train_heatmap import hard_negatives

    r_apo = get("apo-ferritin").radius_A
    picks = pd.DataFrame({"experiment": "TS", "particle_type": ["apo-ferritin", "ribosome"],
                          "x": [1000.0, 3000.0], "y": [1000.0, 3000.0], "z": [500.0, 500.0]})
    pred = pd.DataFrame({"experiment": "TS", "particle_type": ["beta-galactosidase"] * 4,
                         "x": [1000.0 + 0.9 * r_apo, 1000.0 + 1.1 * r_apo, 3000.0 + 100.0, 5000.0],
                         "y": [1000.0, 1000.0, 3000.0, 5000.0], "z": [500.0] * 4, "score": 1.0})
    neg = hard_negatives(pred, picks)
    assert neg["x"].tolist() == [1000.0 + 1.1 * r_apo, 5000.0]  # the ribosome's 150 A reach covers the third
    assert list(neg.columns) == ["experiment", "particle_type", "x", "y", "z"]
    assert len(hard_negatives(pred, picks.iloc[:0])) == 4 and len(hard_negatives(pred.iloc[:0], picks)) == 0


def test_hard_negative_patches_are_centred_on_them():
    """With hard_negative 1 every patch of a run that has negatives holds one near its centre (the
    targets are still the picks'); a run without any is drawn as before; 0 draws what it did before."""
    rng = np.random.default_rng(4)
    run = _train_run(rng)
    neg_run = replace(run, negatives_zyx=np.array([[12.0, 24.0, 24.0]]))  # output grid: voxel (24, 48, 48)
    cfg = HeatmapConfig()
    tr = HeatmapTrainConfig(patch_vox=(16, 32, 32), batch=6, seed=2, hard_negative=1.0)
    x, y = sample_batch([neg_run], 0, cfg, tr)
    base = replace(tr, hard_negative=0.0)
    np.testing.assert_array_equal(sample_batch([run], 0, cfg, tr)[0], sample_batch([run], 0, cfg, base)[0])
    np.testing.assert_array_equal(sample_batch([neg_run], 0, cfg, base)[0], sample_batch([run], 0, cfg, base)[0])
    # the negative's voxel (24, 48, 48) lies inside every patch: find it by its value
    marked = replace(neg_run, volume=neg_run.volume.copy())
    marked.volume[24, 48, 48] = 7.0
    xm, _ = sample_batch([marked], 0, cfg, tr)
    assert all((p == 7.0).sum() == 1 for p in xm)
    with pytest.raises(ValueError, match="hard_negative"):
        HeatmapTrainConfig(hard_negative=1.5)


def test_particle_augmentation_redraws_the_particles_not_the_background():
    """Inside each particle's sphere the density gets an uneven interior and a contrast of its own;
    far from every particle the patch is untouched (up to the final rescaling); seeded; with
    particle_augment 1 every patch of a batch is changed, with 0 a batch is as before the option."""
    z, y, x = np.mgrid[:16, :32, :32]
    centres = np.array([[8.0, 10.0, 9.0], [8.0, 22.0, 23.0]])
    noise = np.random.default_rng(9).normal(0.0, 0.02, z.shape)
    inside = [((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= 16 for c in centres]
    patch = (np.where(inside[0] | inside[1], 0.3, -0.1) + noise).astype(np.float32)
    far = ~(np.sqrt((z - 8.0) ** 2 + (y - 10.0) ** 2 + (x - 9.0) ** 2) <= 6) & \
        ~(np.sqrt((z - 8.0) ** 2 + (y - 22.0) ** 2 + (x - 23.0) ** 2) <= 6)
    contrasts = []
    for i in range(6):
        a = augment_particles(patch, centres, np.array([4.0, 4.0]), np.random.default_rng(i))
        assert a.shape == patch.shape and a.dtype == np.float32 and a.min() >= -0.5 and a.max() <= 0.5
        # far from both: a linear rescaling of the input (but where the final clip cuts it)
        kept = far & (np.abs(a) < 0.5)
        k, b = np.polyfit(patch[kept], a[kept], 1)
        np.testing.assert_allclose(a[kept], k * patch[kept] + b, atol=1e-3)
        for m in inside:  # inside: no longer uniform (texture), still above the background
            assert a[m].std() > 2 * k * patch[m].std() and a[m].mean() > a[far].mean()
        contrasts.append((a[inside[0]].mean() - a[far].mean()) / (a[inside[1]].mean() - a[far].mean()))
    assert np.ptp(np.log(contrasts)) > 0.2  # the two particles' contrasts drawn apart
    np.testing.assert_array_equal(augment_particles(patch, centres, np.array([4.0, 4.0]), np.random.default_rng(2)),
                                  augment_particles(patch, centres, np.array([4.0, 4.0]), np.random.default_rng(2)))
    runs = [_train_run(np.random.default_rng(0))]
    cfg = HeatmapConfig()
    plain, redrawn = (HeatmapTrainConfig(patch_vox=(16, 32, 32), batch=4, seed=5, particle_augment=p)
                      for p in (0.0, 1.0))
    (x0, y0), (x1, y1) = sample_batch(runs, 3, cfg, plain), sample_batch(runs, 3, cfg, redrawn)
    np.testing.assert_array_equal(x0, sample_batch(runs, 3, cfg, HeatmapTrainConfig(
        patch_vox=(16, 32, 32), batch=4, seed=5))[0])
    assert not any(np.array_equal(a, b) for a, b in zip(x0, x1))
    with pytest.raises(ValueError, match="particle_augment"):
        HeatmapTrainConfig(particle_augment=-0.1)


def test_network_shapes_and_loss_falls_on_one_batch():
    torch.manual_seed(0)
    net = HeatmapUNet(6, (4, 8, 8))
    x = torch.randn(1, 1, 16, 32, 32)
    assert net(x).shape == (1, 6, 8, 16, 16)
    target = torch.zeros(1, 6, 8, 16, 16)
    target[0, 2, 4, 8, 8] = 1.0
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = focal_heatmap_loss(net(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_widening_keeps_the_output_and_then_trains_the_new_channels():
    torch.manual_seed(1)
    small = HeatmapUNet(6, (4, 8, 8))
    opt = torch.optim.Adam(small.parameters(), lr=1e-2)
    x = torch.randn(2, 1, 16, 32, 32)
    target = torch.zeros(2, 6, 8, 16, 16)
    target[:, 3, 4, 8, 8] = 1.0
    for _ in range(3):  # trained a little, so that batch-norm statistics and biases are not their defaults
        opt.zero_grad()
        focal_heatmap_loss(small(x), target).backward()
        opt.step()
    wide = HeatmapUNet(6, (6, 12, 16))
    wide.load_state_dict(widen_state_dict(small.state_dict(), wide))
    for mode in (True, False):  # batch statistics, then running statistics
        small.train(mode)
        wide.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(wide(x), small(x), rtol=0, atol=1e-6)
    # the zero weights into old channels learn at once; then the new channels' own weights do too
    opt = torch.optim.Adam(wide.parameters(), lr=1e-2)
    before = wide.state_dict()["down1.0.weight"][8:, :4].clone()
    for _ in range(2):
        opt.zero_grad()
        focal_heatmap_loss(wide(x), target).backward()
        opt.step()
    assert wide.enc0[0].weight[:4, 4:].abs().sum() > 0
    assert not torch.equal(wide.down1[0].weight[8:, :4], before)
    with pytest.raises(ValueError, match="does not fit"):
        widen_state_dict(wide.state_dict(), HeatmapUNet(6, (4, 8, 8)))
    with pytest.raises(ValueError, match="predict 6 classes, the network 4"):
        widen_state_dict(small.state_dict(), HeatmapUNet(4, (6, 12, 16)))


def _bundle(tmp_path, classes=NAMES, channels=(4, 8, 8)):
    cfg = HeatmapConfig(channels=channels, classes=classes, window_vox=(16, 32, 32), overlap_vox=8, min_peak=0.0)
    torch.save(HeatmapUNet(len(classes), channels).state_dict(), tmp_path / "heatmap.pt")
    save_heatmap_json(tmp_path, config=cfg.to_dict())
    return tmp_path


def test_a_training_starts_from_a_bundle_with_its_config(tmp_path):
    assert training_start(None) == (HeatmapConfig(), None)
    assert training_start(None, (6, 8, 12))[0].channels == (6, 8, 12)
    config, weights = training_start("shipped")  # fine-tuning: the shipped network as it predicts
    assert weights == DEFAULT_BUNDLE / "heatmap.pt" and config == load_heatmap_bundle().config
    assert config.tta_views > 1 and config.channels != HeatmapConfig().channels
    (tmp_path / "b").mkdir()
    folder = _bundle(tmp_path / "b", channels=(4, 8, 8))
    config, weights = training_start(folder)
    assert weights == folder / "heatmap.pt" and config == load_heatmap_bundle(folder).config
    assert config.window_vox == (16, 32, 32)  # the bundle's own, not the default
    assert training_start(folder / "heatmap.pt", (6, 8, 12))[0].channels == (6, 8, 12)
    (tmp_path / "bare").mkdir()  # weights alone: the default config at their own widths
    torch.save(HeatmapUNet(len(NAMES), (4, 6, 10)).state_dict(), tmp_path / "bare" / "w.pt")
    config, _ = training_start(tmp_path / "bare" / "w.pt")
    assert config.channels == (4, 6, 10) and config.window_vox == HeatmapConfig().window_vox
    with pytest.raises(CziiInputError, match="nope.pt: heatmap weights to start from not found"):
        training_start(tmp_path / "nope.pt")
    (tmp_path / "bare" / "junk.pt").write_text("not torch")
    with pytest.raises(CziiInputError, match="junk.pt: not heatmap weights"):
        training_start(tmp_path / "bare" / "junk.pt")


def test_weights_of_the_wrong_class_count_are_refused(tmp_path):
    _bundle(tmp_path, classes=NAMES[:4])
    doc = load_heatmap_bundle(tmp_path)
    bad = replace(doc, config=replace(doc.config, classes=NAMES))
    with pytest.raises(CziiInputError, match="weights predict 4 classes"):
        load_net(bad)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "heatmap.pt").write_text("not torch")
    with pytest.raises(CziiInputError, match="cannot read heatmap weights"):
        load_net(load_heatmap_bundle(tmp_path / "junk"))


def test_weights_of_another_network_or_a_broken_config_are_refused(tmp_path):
    _bundle(tmp_path, channels=(4, 8, 8))
    doc = load_heatmap_bundle(tmp_path)
    wider = replace(doc, config=replace(doc.config, channels=(8, 16, 16)))
    with pytest.raises(CziiInputError, match="heatmap.pt: weights do not fit the configured network"):
        load_net(wider)
    (tmp_path / "heatmap.json").write_text('{"config": {"level": 1,')
    with pytest.raises(CziiInputError, match="heatmap.json: not valid JSON"):
        load_heatmap_bundle(tmp_path)
    (tmp_path / "heatmap.json").write_text(json.dumps({"config": {"window_vox": [20, 32, 32]}}))
    with pytest.raises(CziiInputError, match="heatmap.json: not a valid heatmap config: window_vox"):
        load_heatmap_bundle(tmp_path)
    (tmp_path / "heatmap.json").write_text(json.dumps({"aggregate": [0.5]}))
    with pytest.raises(CziiInputError, match="heatmap.json: 'aggregate' is \\[0.5\\], not an object"):
        load_heatmap_bundle(tmp_path)


def test_shipped_heatmap_loads_with_its_onnx_copy():
    """The shipped heatmap.json (an ONNX record naming no source file) loads as it is, copy included."""
    bundle = load_heatmap_bundle(None)
    assert bundle.weights == DEFAULT_BUNDLE / "heatmap.pt"
    assert bundle.onnx == DEFAULT_BUNDLE / "heatmap.onnx"
    assert bundle.aggregate != default_aggregate_config()  # its tuned thresholds were read
    assert bundle.record.get("steps", 0) > 0


def test_heatmap_export_replaces_only_the_copy_of_its_own_weights(tmp_path, capsys):
    from czii_kaggle.cli import main

    b = _bundle(tmp_path)
    own = export_heatmap_onnx(b)
    assert own == b / "heatmap.onnx"
    record = json.loads((b / "heatmap.json").read_text())["onnx"]
    assert record["source"] == "heatmap.pt" and record["source_sha256"] == file_sha256(b / "heatmap.pt")
    assert load_heatmap_bundle(b).onnx == own
    onnx_bytes = own.read_bytes()
    torch.manual_seed(1)
    torch.save(HeatmapUNet(6, (4, 8, 8)).state_dict(), b / "other.pt")
    assert main(["export-onnx", "--detector", "heatmap", "--weights", str(b / "other.pt")]) == 0
    assert "record stays with another weights file" in capsys.readouterr().out
    assert (b / "other.onnx").is_file()  # beside, never over the bundle's copy
    assert own.read_bytes() == onnx_bytes and json.loads((b / "heatmap.json").read_text())["onnx"] == record
    assert load_heatmap_bundle(b).onnx == own and load_heatmap_bundle(b / "other.pt").onnx is None
    save_heatmap_json(b, onnx={**record, "source": "best.pt"})  # heatmap.onnx is recorded as best.pt's copy
    with pytest.raises(CziiInputError, match="heatmap.onnx: is the ONNX copy of best.pt"):
        export_heatmap_onnx(b)
    assert own.read_bytes() == onnx_bytes
    assert not list(b.glob(".*.tmp*"))  # no temporary file left behind


def _zarr(tmp_path, voxel_size_A, shape=(40, 72, 72)):
    path = tmp_path / "t.zarr"
    omezarr.write_tomogram(path, np.random.default_rng(0).random(shape).astype(np.float32), voxel_size_A)
    return path


def test_other_resolutions_are_resampled_and_far_coarser_ones_refused(tmp_path):
    vol, vs = read_input(_zarr(tmp_path, 5.0), HeatmapConfig())  # finer data: onto the weights' 20 A grid
    assert vs == pytest.approx(VS1) and vol.shape == (10, 18, 18)  # level 2 (20 A), shifted 2.5 A onto the grid
    (tmp_path / "coarse").mkdir()
    with pytest.raises(CziiInputError, match="wrong resolution"):
        read_input(_zarr(tmp_path / "coarse", 45.0), HeatmapConfig())
    (tmp_path / "ok").mkdir()
    vol, vs = read_input(_zarr(tmp_path / "ok", 10.012444537618887), HeatmapConfig())
    assert vs == pytest.approx(VS1) and vol.shape == (20, 36, 36)
    assert vol.min() >= -0.5 and vol.max() <= 0.5


def test_the_spectral_step_is_part_of_the_input_and_saved_with_the_config(tmp_path):
    from czii_kaggle.preprocess import spectral_filter

    zarr = _zarr(tmp_path, 10.012444537618887)
    plain, _ = read_input(zarr, HeatmapConfig())
    cfg = HeatmapConfig(spectral="whiten_zxy")
    white, _ = read_input(zarr, cfg)
    level1, _ = omezarr.read_tomogram(zarr, level=1)
    np.testing.assert_allclose(white, normalise(spectral_filter(level1, "whiten_zxy")), atol=1e-6)
    assert white.shape == plain.shape and np.abs(white - plain).mean() > 0.01
    assert HeatmapConfig.from_dict(cfg.to_dict()).spectral == "whiten_zxy"
    old = cfg.to_dict()
    del old["spectral"]  # a heatmap.json written before the option: no spectral step
    assert HeatmapConfig.from_dict(old).spectral == "none"
    with pytest.raises(ValueError, match="spectral must be one of"):
        HeatmapConfig(spectral="sharpen")


def test_detector_runs_a_tomogram_and_onnx_matches_torch(tmp_path):
    bundle_dir = _bundle(tmp_path)
    zarr = _zarr(tmp_path, 10.012444537618887)
    cands, times = HeatmapDetector(load_heatmap_bundle(bundle_dir), backend="torch").candidates(zarr, "r")
    assert set(times) == {"read_s", "inference_s", "peaks_s"}
    assert list(cands.columns) == ["experiment", "particle_type", "x", "y", "z", "score", "n_slices", "share"]
    assert len(cands) and (cands["x"] < 72 * 10.02).all()
    pytest.importorskip("onnxruntime")
    export_heatmap_onnx(bundle_dir)
    bundle = load_heatmap_bundle(bundle_dir)
    assert bundle.onnx is not None
    vol, _ = read_input(zarr, bundle.config)
    p_torch = predict_heatmaps(load_model(bundle, "torch"), vol, bundle.config)
    p_onnx = predict_heatmaps(load_model(bundle, "onnx"), vol, bundle.config)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    torch.save(HeatmapUNet(6, (4, 8, 8)).state_dict(), bundle_dir / "heatmap.pt")  # retrained: export is stale
    with pytest.warns(RuntimeWarning, match="heatmap.onnx was exported from other weights"):
        assert load_heatmap_bundle(bundle_dir).onnx is None


def _trained_like_net(channels=(4, 8, 8)):
    """A network whose batch-norm statistics are not the defaults (as after training)."""
    torch.manual_seed(3)
    net = HeatmapUNet(6, channels)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_batchnorm_adaptation_takes_the_tomograms_statistics():
    cfg = HeatmapConfig(channels=(4, 8, 8), window_vox=(16, 32, 32), overlap_vox=8)
    net = _trained_like_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    volume = np.random.default_rng(0).normal(0.2, 0.1, (24, 40, 40)).astype(np.float32)  # another "look"
    full = adapt_batchnorm(net, volume, cfg, 1.0)
    # the first layer's statistics are exactly those of its convolution over every window
    # (each window weighs by its voxels; the windows overlap, so not the volume's own mean)
    with torch.no_grad():
        outs = [net.stem[0](torch.from_numpy(np.ascontiguousarray(volume[z:z + 16, y:y + 32, x:x + 32])[None, None]))
                for z in (0, 8) for y in (0, 8) for x in (0, 8)]
    conv = torch.cat([o.flatten(2) for o in outs], dim=2)[0]
    np.testing.assert_allclose(full.stem[1].running_mean.numpy(), conv.mean(1).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(full.stem[1].running_var.numpy(), conv.var(1).numpy(), rtol=1e-3)
    assert not torch.allclose(full.stem[1].running_mean, before["stem.1.running_mean"])
    half = adapt_batchnorm(net, volume, cfg, 0.5)
    np.testing.assert_allclose(half.stem[1].running_mean.numpy(),
                               0.5 * (full.stem[1].running_mean + before["stem.1.running_mean"]).numpy(), rtol=1e-5)
    assert not full.training and full.stem[1].momentum == net.stem[1].momentum
    for k, v in net.state_dict().items():  # the shipped network itself is untouched
        assert torch.equal(v, before[k]), k
    # bn_adapt_every 3: the statistics of windows 0, 3 and 6 in raster order (z, y, x) alone
    every3 = adapt_batchnorm(net, volume, replace(cfg, bn_adapt_every=3), 1.0)
    np.testing.assert_allclose(every3.stem[1].running_mean.numpy(), torch.cat([outs[k].flatten(2) for k in (0, 3, 6)],
                               dim=2)[0].mean(1).numpy(), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(every3.stem[1].running_mean, full.stem[1].running_mean)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="bn_adapt_every"):
            replace(cfg, bn_adapt_every=bad)
    # weight 0 keeps the training statistics: the same predictions
    none = adapt_batchnorm(net, volume, cfg, 0.0)
    x = torch.from_numpy(volume[None, None, :16, :32, :32].copy())
    with torch.no_grad():
        torch.testing.assert_close(none(x), net(x))
        assert not torch.allclose(full(x), net(x))


def test_bfloat16_runs_only_where_the_device_does_it_natively_and_stays_close(monkeypatch):
    """precision "bfloat16": the network (and the adaptation's pass) in bfloat16 where the CPU has AVX512-BF16
    or AMX, else float32 bit for bit; probabilities float32 either way, close to float32's."""
    from czii_kaggle.detectors import heatmap as hm

    with pytest.raises(ValueError, match="precision must be one of"):
        HeatmapConfig(precision="float16")
    assert hm.autocast_dtype("cpu", "float32") is None and hm.autocast_dtype("cuda:0", "float32") is None
    cfg = HeatmapConfig(channels=(4, 8, 8), window_vox=(16, 32, 32), overlap_vox=8)
    net = _trained_like_net()
    volume = np.random.default_rng(1).normal(0.0, 0.2, (24, 40, 40)).astype(np.float32)
    f32 = predict_heatmaps(hm.TorchHeatmapModel(net, "cpu"), volume, cfg)
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert hm.autocast_dtype("cpu", "bfloat16") == (torch.bfloat16 if native else None)
        b16 = predict_heatmaps(hm.TorchHeatmapModel(net, "cpu", "bfloat16"), volume, cfg)
        assert b16.dtype == np.float32 and b16.shape == f32.shape
        adapted32 = adapt_batchnorm(net, volume, cfg, 1.0)
        adapted16 = adapt_batchnorm(net, volume, replace(cfg, precision="bfloat16"), 1.0)
        if native:  # bfloat16 keeps about 3 significant digits: close, not equal
            assert not np.array_equal(b16, f32) and np.abs(b16 - f32).max() < 0.02
            torch.testing.assert_close(adapted16.stem[1].running_mean, adapted32.stem[1].running_mean,
                                       rtol=0.05, atol=0.01)
        else:  # no native bfloat16: float32, the same numbers
            np.testing.assert_array_equal(b16, f32)
            torch.testing.assert_close(adapted16.stem[1].running_mean, adapted32.stem[1].running_mean, rtol=0, atol=0)
    # a bundle's detector takes its config's precision, or the one it is given
    shipped = load_heatmap_bundle(DEFAULT_BUNDLE)
    assert shipped.config.precision in ("float32", "bfloat16")
    det = HeatmapDetector(shipped, backend="torch", device="cpu", precision="bfloat16")
    assert det.bundle.config.precision == "bfloat16" and det.model.precision == "bfloat16"


def test_heatmap_runs_on_the_first_usable_gpu_unless_onnx():
    assert heatmap_device("auto", ["cuda:1", "cuda:0"]) == "cuda:1"
    assert heatmap_device("torch", ["cuda:0"]) == "cuda:0"
    assert heatmap_device("onnx", ["cuda:0"]) == "cpu"  # ONNX Runtime runs here on the CPU
    assert heatmap_device("auto", ["cpu"]) == "cpu"
    from czii_kaggle.runtime import plan_devices

    here = plan_devices().devices
    assert heatmap_device() == next((d for d in here if d.startswith("cuda")), "cpu")


def test_detector_with_batchnorm_adaptation(tmp_path):
    bundle_dir = _bundle(tmp_path)
    torch.save(_trained_like_net().state_dict(), bundle_dir / "heatmap.pt")
    zarr = _zarr(tmp_path, 10.012444537618887)
    plain = HeatmapDetector(load_heatmap_bundle(bundle_dir), backend="torch")
    save_heatmap_json(bundle_dir, config=replace(plain.bundle.config, bn_adapt=1.0).to_dict())
    adapted = HeatmapDetector(load_heatmap_bundle(bundle_dir))  # auto: torch, whatever ONNX copy there is
    assert adapted.bundle.config.bn_adapt == 1.0 and type(adapted.model).__name__ == "TorchHeatmapModel"
    assert adapted.device == heatmap_device() and str(adapted.model.device).startswith(adapted.device.split(":")[0])
    c_plain, _ = plain.candidates(zarr, "r")
    c_adapted, times = adapted.candidates(zarr, "r")
    assert set(times) == {"read_s", "adapt_s", "inference_s", "peaks_s"}
    assert list(c_adapted.columns) == list(c_plain.columns)
    assert not np.allclose(np.sort(c_adapted["score"])[-20:], np.sort(c_plain["score"])[-20:])
    with pytest.raises(CziiInputError, match="heatmap.json: bn_adapt needs the torch backend"):
        HeatmapDetector(load_heatmap_bundle(bundle_dir), backend="onnx")
    with pytest.raises(ValueError, match="bn_adapt must be in 0..1"):
        HeatmapConfig(bn_adapt=1.5)


def test_recalibration_copies_the_bundle_with_whole_tomogram_statistics(tmp_path, capsys):
    from czii_kaggle.cli import main

    (tmp_path / "b").mkdir()
    bundle_dir = _bundle(tmp_path / "b")
    torch.save(_trained_like_net().state_dict(), bundle_dir / "heatmap.pt")
    (bundle_dir / "ensemble.json").write_text("{}")
    before = {f.name: f.read_bytes() for f in bundle_dir.iterdir()}
    root, rng = tmp_path / "data", np.random.default_rng(1)
    vols = []
    for run in ("TS_a", "TS_b"):
        vol = rng.normal(3.0, 2.0, (40, 72, 72)).astype(np.float32)
        omezarr.write_tomogram(layout.tomogram_path(root, "train", run), vol, 10.012444537618887)
        vols.append(read_input(layout.tomogram_path(root, "train", run), load_heatmap_bundle(bundle_dir).config)[0])
    bad = layout.tomogram_path(root, "train", "TS_bad")
    bad.mkdir(parents=True)
    (bad / ".zattrs").write_text("{not json")
    out = recalibrate_heatmap(bundle_dir, [(root, None)], tmp_path / "out", bn_adapt=0.5, command="test")
    assert "TS_bad" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in bundle_dir.iterdir()} == before  # the input is untouched
    assert (out / "ensemble.json").read_text() == "{}"
    new = torch.load(out / "heatmap.pt", weights_only=True)
    expected = adapt_batchnorm(load_net(load_heatmap_bundle(bundle_dir)), vols, load_heatmap_bundle(bundle_dir).config, 1.0)
    for k, v in expected.state_dict().items():
        torch.testing.assert_close(new[k], v)  # statistics of both readable runs' windows; weights as they were
    old = torch.load(bundle_dir / "heatmap.pt", weights_only=True)
    assert torch.equal(new["enc0.0.weight"], old["enc0.0.weight"])
    assert not torch.allclose(new["enc0.1.running_mean"], old["enc0.1.running_mean"])
    doc = json.loads((out / "heatmap.json").read_text())
    rec = doc["training"]["recalibration"]
    assert doc["config"]["bn_adapt"] == 0.5 and rec["runs"] == 2 and len(rec["skipped"]) == 1
    assert rec["device"] == "cpu"  # the first usable GPU, none here
    assert "TS_bad" in rec["skipped"][0] and rec["sources"] == [{"root": str(root), "runs": None}]
    assert doc["onnx"]["source_sha256"] == file_sha256(out / "heatmap.pt")
    # the bundle itself, a used folder, and runs that cannot be read are refused; nothing is written
    with pytest.raises(CziiInputError, match="is the bundle to recalibrate"):
        recalibrate_heatmap(bundle_dir, [(root, None)], bundle_dir, replace=True)
    with pytest.raises(CziiInputError, match="folder exists and is not empty"):
        recalibrate_heatmap(bundle_dir, [(root, None)], out)
    assert recalibrate_heatmap(bundle_dir, [(root, ["TS_a"])], out, replace=True) == out  # its own earlier output
    assert json.loads((out / "heatmap.json").read_text())["training"]["recalibration"]["runs"] == 1
    with pytest.raises(CziiInputError, match="none of the 1 runs could be read"):
        recalibrate_heatmap(bundle_dir, [(root, ["TS_bad"])], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    small_root = tmp_path / "small"  # a run smaller than one window is named and left out, the others used
    omezarr.write_tomogram(layout.tomogram_path(small_root, "train", "TS_small"),
                           rng.normal(size=(8, 16, 16)).astype(np.float32), 10.012444537618887)
    capsys.readouterr()
    recalibrate_heatmap(bundle_dir, [(small_root, None), (root, ["TS_a"])], tmp_path / "out4")
    err = capsys.readouterr().err
    assert "TS_small" in err and "smaller than one heatmap window" in err
    assert json.loads((tmp_path / "out4" / "heatmap.json").read_text())["training"]["recalibration"]["runs"] == 1
    assert {f.name: f.read_bytes() for f in bundle_dir.iterdir()} == before
    assert main(["recalibrate-heatmap", "--weights", str(bundle_dir), "--data", f"{root}:TS_a", "--out",
                 str(tmp_path / "out3")]) == 0
    assert "tune it" in capsys.readouterr().out
    doc3 = json.loads((tmp_path / "out3" / "heatmap.json").read_text())
    assert doc3["config"]["bn_adapt"] == 0.0 and doc3["training"]["recalibration"]["runs"] == 1


@pytest.mark.slow
def test_training_writes_weights_and_resumes(tmp_path):
    from czii_kaggle.simulate import SimConfig, simulate_dataset

    ds = simulate_dataset(tmp_path / "sim", n_train=1, n_test=0, config=SimConfig(shape_vox=(64, 128, 128)), seed=3)
    cfg = HeatmapConfig(channels=(4, 8, 8))
    tr = HeatmapTrainConfig(patch_vox=(16, 32, 32), steps=2, checkpoint_every=1)
    out = train_heatmap([(ds.root, None)], tmp_path / "b", cfg, tr, command="test")
    first = torch.load(out / "heatmap.pt", weights_only=True)
    train_heatmap([(ds.root, None)], out, cfg, replace(tr, steps=3), command="test")
    log = (out / "train.log").read_text()
    assert "resumed at step 2" in log and "step 3 loss" in log and log.count("step 1 loss") == 1
    bundle = load_heatmap_bundle(out)
    assert bundle.record["steps"] == 3 and bundle.record["runs"] and bundle.record["device"] == "cpu"  # no GPU here
    # where the step's time went: the resumed session's one step, data and compute apart
    timing = bundle.record["step_seconds"]
    assert timing["steps"] == 1 and timing["data"] > 0 and timing["compute"] > 0
    assert not torch.equal(first["head.weight"], torch.load(out / "heatmap.pt", weights_only=True)["head.weight"])
    # a wider network started from these weights: widened, trained, and its record says from what
    wide = train_heatmap([(ds.root, None)], tmp_path / "wide", replace(cfg, channels=(6, 8, 12)), replace(tr, steps=1),
                         init=out / "heatmap.pt", command="test")
    assert load_heatmap_bundle(wide).record["init_channels"] == [4, 8, 8]
    assert load_heatmap_bundle(wide).config.channels == (6, 8, 12)
    # fine-tuning from a bundle (the CLI's --init FOLDER): its config and its selection options (floor) are kept
    from czii_kaggle.cli import main

    floor = bundle.aggregate.with_floor({"ribosome": 7})
    save_heatmap_json(out, aggregate=floor.to_dict(), config=replace(bundle.config, tta_views=2).to_dict())
    assert main(["train-heatmap", "--data", str(ds.root), "--out", str(tmp_path / "ft"), "--init", str(out),
                 "--steps", "1", "--patch", "16", "32", "32", "--threads", "1"]) == 0
    tuned = load_heatmap_bundle(tmp_path / "ft")
    assert tuned.config.tta_views == 2 and tuned.config.channels == (4, 8, 8)
    assert tuned.aggregate.params["ribosome"].min_keep == 7 and tuned.record["init"] == str(out / "heatmap.pt")
    assert tuned.record["init_sha256"] == file_sha256(out / "heatmap.pt")
    assert tuned.config.spectral == "none"  # the start's input, unless --spectral says otherwise
    assert main(["train-heatmap", "--data", str(ds.root), "--out", str(tmp_path / "ftw"), "--init", str(out),
                 "--steps", "1", "--patch", "16", "32", "32", "--threads", "1", "--spectral", "whiten_zxy",
                 "--look-augment", "0.5", "--look-respectral"]) == 0
    assert load_heatmap_bundle(tmp_path / "ftw").config.spectral == "whiten_zxy"
    assert load_heatmap_bundle(tmp_path / "ftw").record["train_config"]["look_respectral"] is True
    assert tuned.record["train_config"]["look_respectral"] is False
    # hard negatives from a detector's picks on the training runs: counted in the record, needed for the share
    from czii_kaggle.picks import read_run_picks

    picks = read_run_picks(ds.root, layout.list_runs(ds.root, "train")[0])
    far = picks.iloc[:1].assign(particle_type="thyroglobulin", x=5.0, y=5.0, z=5.0)
    pd.concat([picks.iloc[:2], far]).to_csv(tmp_path / "pred.csv", index=False)
    assert main(["train-heatmap", "--data", str(ds.root), "--out", str(tmp_path / "hn"), "--init", str(out),
                 "--steps", "1", "--patch", "16", "32", "32", "--threads", "1", "--hard-negatives",
                 str(tmp_path / "pred.csv"), "--hard-negative", "0.5"]) == 0
    hn = load_heatmap_bundle(tmp_path / "hn").record
    assert hn["hard_negatives"] == 1 and hn["train_config"]["hard_negative"] == 0.5
    with pytest.raises(CziiInputError, match="--hard-negatives"):
        train_heatmap([(ds.root, None)], tmp_path / "hn2", cfg, replace(tr, hard_negative=0.5), command="test")
    with pytest.raises(CziiInputError, match="heatmap.pt: cannot start a \\(2, 8, 8\\) network"):
        train_heatmap([(ds.root, None)], tmp_path / "narrow", replace(cfg, channels=(2, 8, 8)), tr,
                      init=out / "heatmap.pt", command="test")
    run = layout.list_runs(ds.root, "train")[0]
    cands, _ = HeatmapDetector(replace(bundle, config=replace(bundle.config, window_vox=(32, 64, 64)))).candidates(
        layout.tomogram_path(ds.root, "train", run), run)
    assert set(cands["particle_type"]) <= set(NAMES)
    # full resolution (--level 0): trained and read at level 0, half the voxel size, candidates in Angstrom
    assert main(["train-heatmap", "--data", str(ds.root), "--out", str(tmp_path / "l0"), "--steps", "1",
                 "--patch", "16", "32", "32", "--threads", "1", "--channels", "4", "8", "8", "--level", "0"]) == 0
    l0 = load_heatmap_bundle(tmp_path / "l0")
    assert l0.config.level == 0 and l0.config.window_vox == LEVEL_WINDOWS[0]
    assert l0.config.voxel_size_A == pytest.approx(cfg.voxel_size_A / 2)
    c0, _ = HeatmapDetector(replace(l0, config=replace(l0.config, window_vox=(32, 64, 64), min_peak=0.0))).candidates(
        layout.tomogram_path(ds.root, "train", run), run)
    extent_A = np.array([128, 128, 64]) * l0.config.voxel_size_A
    assert len(c0) and (c0[["x", "y", "z"]].to_numpy() >= 0).all() and (c0[["x", "y", "z"]].to_numpy() < extent_A).all()
