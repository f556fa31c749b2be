"""viz: every figure returns a Figure whose artists match the data (counts, radii, positions)."""
from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle

from czii_kaggle import layout, omezarr, particles, stats, viz
from czii_kaggle.errors import CziiInputError
from czii_kaggle.picks import read_run_picks, write_run_picks

V = 10.0  # voxel size (Angstrom) of the synthetic volumes


def _picks(rows, experiment="run_a"):
    """rows: (particle_type, x, y, z) in Angstrom."""
    df = pd.DataFrame(rows, columns=["particle_type", "x", "y", "z"])
    df.insert(0, "experiment", experiment)
    return df


def _circles(ax) -> list[Circle]:
    return [p for p in ax.patches if isinstance(p, Circle)]


def _axes(fig, label):
    found = [ax for ax in fig.axes if ax.get_label() == label]
    assert len(found) == 1, [ax.get_label() for ax in fig.axes]
    return found[0]


def test_plot_pick_counts_bars_are_the_counts_in_particle_colours(real_picks):
    fig = viz.plot_pick_counts(real_picks)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == list(particles.NAMES)
    counts = stats.pick_counts(real_picks)
    for b, p in zip(bars, particles.PARTICLES):
        assert [r.get_height() for r in b] == counts[p.name].tolist()
        np.testing.assert_allclose(b[0].get_facecolor()[:3], p.color_rgb)
    assert [t.get_text() for t in ax.get_xticklabels()] == counts.index.tolist()


def _synthetic_volume(shape=(20, 60, 80)):
    rng = np.random.default_rng(0)
    return rng.normal(size=shape).astype(np.float32)


def test_plot_orthoslices_circles_are_the_cross_sections_in_each_plane(cuts_by_loop):
    vol = _synthetic_volume((40, 60, 80))  # default centre: planes z = 200, y = 300, x = 400 A
    picks = _picks([
        ("ribosome", 400.0, 300.0, 200.0),        # cuts all three planes through its centre
        ("apo-ferritin", 100.0, 100.0, 230.0),   # z-plane only (d = 30 < 60)
        ("apo-ferritin", 100.0, 340.0, 0.0),     # y-plane only (d = 40)
        ("thyroglobulin", 500.0, 550.0, 380.0),  # x-plane only (d = 100 < 130)
        ("beta-amylase", 700.0, 50.0, 290.0),    # no plane: d_z = 90, d_y = 250, d_x = 300 > 65
    ])
    fig = viz.plot_orthoslices(vol, V, picks)
    assert isinstance(fig, Figure)
    planes = {"x-y": ("z", 200.0, "x", "y"), "z-y": ("x", 400.0, "z", "y"), "x-z": ("y", 300.0, "x", "z")}
    expected_counts = {"x-y": 2, "z-y": 2, "x-z": 2}
    for label, (axis, pos, h, v) in planes.items():
        ax = _axes(fig, label)
        circles = _circles(ax)
        ref = cuts_by_loop(picks, axis, pos)
        assert len(circles) == len(ref) == expected_counts[label]
        got = sorted((c.center, c.get_radius(), tuple(c.get_edgecolor()[:3])) for c in circles)
        col = {"x": 0, "y": 1, "z": 2}
        want = sorted(((r[col[h]], r[col[v]]), r[3], particles.get(r[4]).color_rgb) for r in ref)
        for (c_got, r_got, e_got), (c_want, r_want, e_want) in zip(got, want):
            np.testing.assert_allclose(c_got, c_want)
            assert r_got == pytest.approx(r_want)
            np.testing.assert_allclose(e_got, e_want)
    # the thyroglobulin's cut in the x plane: sqrt(130^2 - 100^2)
    zy_radii = sorted(c.get_radius() for c in _circles(_axes(fig, "z-y")))
    assert zy_radii == pytest.approx(sorted([150.0, math.sqrt(130**2 - 100**2)]))
    legend = _axes(fig, "legend").get_legend()
    # one entry per type present, in particle-table order
    assert [t.get_text() for t in legend.get_texts()] == ["apo-ferritin", "beta-amylase", "ribosome", "thyroglobulin"]


def test_plot_orthoslices_images_put_voxel_i_at_i_times_voxel_size():
    vol = np.zeros((20, 60, 80), np.float32)
    vol[10, 7, 33] = 1.0  # on the x-y slice through z = 10
    fig = viz.plot_orthoslices(vol, V, center_vox=(10, 7, 33))
    for label, (row_val, col_val) in {"x-y": (7, 33), "z-y": (7, 10), "x-z": (10, 33)}.items():
        (image,) = _axes(fig, label).get_images()
        data = np.asarray(image.get_array())
        left, right, bottom, top = image.get_extent()
        rows, cols = np.nonzero(data == data.max())
        step_x = (right - left) / data.shape[1]
        step_y = (bottom - top) / data.shape[0]
        assert step_x == pytest.approx(V) and step_y == pytest.approx(V)
        assert left + (cols[0] + 0.5) * step_x == pytest.approx(col_val * V)
        assert top + (rows[0] + 0.5) * step_y == pytest.approx(row_val * V)
        assert _circles(_axes(fig, label)) == []


def test_plot_orthoslices_real_picks_on_a_full_size_volume(real_picks, cuts_by_loop):
    run = real_picks[real_picks["experiment"] == "TS_6_4"]
    vol = np.broadcast_to(np.float32(0.0), (184, 630, 630))  # full shape without the memory
    v = 10.012444537618887
    centre = (90, 300, 320)
    fig = viz.plot_orthoslices(vol, v, real_picks, center_vox=centre, experiment="TS_6_4")
    for label, axis, idx in (("x-y", "z", 0), ("x-z", "y", 1), ("z-y", "x", 2)):
        circles = _circles(_axes(fig, label))
        ref = cuts_by_loop(run, axis, centre[idx] * v)
        assert len(circles) == len(ref) > 0, label
        assert sorted(c.get_radius() for c in circles) == pytest.approx(sorted(r[3] for r in ref))


def test_plot_orthoslices_rejects_bad_input(real_picks):
    vol = _synthetic_volume()
    with pytest.raises(ValueError, match="experiments"):
        viz.plot_orthoslices(vol, V, real_picks)  # five runs: which one?
    with pytest.raises(ValueError, match="outside"):
        viz.plot_orthoslices(vol, V, center_vox=(20, 0, 0))
    with pytest.raises(ValueError, match="shape"):
        viz.plot_orthoslices(vol[0], V)
    with pytest.raises(ValueError, match="voxel_size_A"):
        viz.plot_orthoslices(vol, 0.0)


def _bar_heights(ax) -> float:
    return sum(p.get_height() for p in ax.patches if isinstance(p, Rectangle))


def test_plot_z_distribution_counts_each_type(real_picks):
    fig = viz.plot_z_distribution(real_picks)
    for p in particles.PARTICLES:
        ax = _axes(fig, p.name)
        assert _bar_heights(ax) == (real_picks["particle_type"] == p.name).sum()


def test_plot_nearest_neighbours_marks_the_match_radius(real_picks):
    fig = viz.plot_nearest_neighbours(real_picks)
    nn = stats.nearest_neighbour_distances(real_picks)
    for p in particles.PARTICLES:
        ax = _axes(fig, p.name)
        n = int(((real_picks["particle_type"] == p.name).to_numpy() & np.isfinite(nn)).sum())
        assert _bar_heights(ax) == n
        lines = {ln.get_label(): ln.get_xdata()[0] for ln in ax.get_lines()}
        assert lines["0.5 x radius"] == pytest.approx(0.5 * p.radius_A)
        assert lines["diameter"] == pytest.approx(2 * p.radius_A)


def test_plot_crop_gallery_shows_examples_and_the_average():
    rng = np.random.default_rng(1)
    crops = {"ribosome": rng.normal(size=(3, 9, 9)).astype(np.float32),
             "apo-ferritin": rng.normal(size=(8, 9, 9)).astype(np.float32)}
    fig = viz.plot_crop_gallery(crops, voxel_size_A=V, n_examples=4)
    assert len(fig.axes) == 2 * 5
    for name, stack in crops.items():
        ax = _axes(fig, f"average {name}")
        (image,) = ax.get_images()
        np.testing.assert_allclose(image.get_array(), stats.average_crop(stack), rtol=1e-6)
        (circle,) = _circles(ax)
        assert circle.get_radius() == pytest.approx(particles.get(name).radius_A / V)
    n_images = sum(len(ax.get_images()) for ax in fig.axes)
    assert n_images == (3 + 1) + (4 + 1)  # ribosome has only 3 examples
    empty = viz.plot_crop_gallery({})
    assert [ax.get_label() for ax in empty.axes] == ["empty"]


def test_plot_intensity_histogram_counts_every_finite_voxel():
    vol = _synthetic_volume((6, 20, 30))
    vol[0, 0, :5] = np.nan
    fig = viz.plot_intensity_histogram(vol, bins=50)
    (ax,) = fig.axes
    assert _bar_heights(ax) == vol.size - 5
    lines = [ln.get_xdata()[0] for ln in ax.get_lines()]
    finite = vol[np.isfinite(vol)]
    np.testing.assert_allclose(lines, np.percentile(finite.astype(np.float64), (0.5, 99.5)))


def test_plot_picks_3d_one_scatter_per_type(real_picks):
    fig = viz.plot_picks_3d(real_picks, experiment="TS_69_2")
    (ax,) = fig.axes
    assert ax.name == "3d"
    run = real_picks[real_picks["experiment"] == "TS_69_2"]
    assert [c.get_label() for c in ax.collections] == list(particles.NAMES)
    for c in ax.collections:
        xs, ys, zs = c._offsets3d
        ref = run[run["particle_type"] == c.get_label()]
        np.testing.assert_allclose(np.asarray(zs), ref["z"].to_numpy())
        np.testing.assert_allclose(np.asarray(xs), ref["x"].to_numpy())


def test_plot_detections_draws_truth_circles_and_predicted_crosses(cuts_by_loop):
    vol = _synthetic_volume()
    z_index = 8  # plane z = 80 A
    truth = _picks([("ribosome", 300.0, 200.0, 100.0), ("apo-ferritin", 100.0, 100.0, 150.0),
                    ("virus-like-particle", 600.0, 400.0, 70.0)])
    predicted = _picks([("ribosome", 310.0, 190.0, 95.0), ("apo-ferritin", 100.0, 100.0, 145.0),
                        ("virus-like-particle", 590.0, 410.0, 60.0), ("virus-like-particle", 200.0, 500.0, 0.0)])
    fig = viz.plot_detections(vol, V, z_index, truth=truth, predicted=predicted)
    ax = _axes(fig, "slice")
    ref = cuts_by_loop(truth, "z", 80.0)  # apo-ferritin at d = 70 > 60 is left out
    circles = _circles(ax)
    assert len(circles) == len(ref) == 2
    assert sorted(c.get_radius() for c in circles) == pytest.approx(sorted(r[3] for r in ref))
    scatters = {c.get_label(): c.get_offsets() for c in ax.collections}
    assert set(scatters) == {"predicted ribosome", "predicted virus-like-particle"}
    np.testing.assert_allclose(scatters["predicted ribosome"], [[310.0, 190.0]])
    np.testing.assert_allclose(sorted(map(tuple, scatters["predicted virus-like-particle"])),
                               [(200.0, 500.0), (590.0, 410.0)])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]  # apo-ferritin is not drawn here
    assert legend == ["ribosome", "virus-like-particle", "truth (cross-section)", "predicted centre"]
    with pytest.raises(ValueError, match="z_index"):
        viz.plot_detections(vol, V, 20, truth=truth)


def test_plot_detections_without_picks_is_just_the_slice():
    fig = viz.plot_detections(_synthetic_volume(), V, 0)
    ax = _axes(fig, "slice")
    assert len(ax.get_images()) == 1 and _circles(ax) == [] and len(ax.collections) == 0


def test_save_run_figure_reads_a_run_and_writes_a_png(tmp_path):
    root = tmp_path / "root"
    vol = _synthetic_volume((16, 48, 48))
    omezarr.write_tomogram(layout.tomogram_path(root, "train", "TS_x"), vol, V)
    write_run_picks(root, _picks([("ribosome", 240.0, 240.0, 80.0)], experiment="TS_x"))
    out = viz.save_run_figure(root, "TS_x", tmp_path / "figs" / "run.png")
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert len(read_run_picks(root, "TS_x")) == 1


def test_plot_run_detections_reads_the_run_and_draws_its_busiest_slice(tmp_path):
    root = tmp_path / "root"
    omezarr.write_tomogram(layout.tomogram_path(root, "test", "TS_x"), _synthetic_volume((16, 48, 48)), V)
    truth = pd.concat([_picks([("apo-ferritin", 200.0, 200.0, 140.0), ("apo-ferritin", 300.0, 300.0, 130.0)],
                              experiment="TS_x"),
                       _picks([("apo-ferritin", 240.0, 240.0, 20.0)] * 3, experiment="TS_other")], ignore_index=True)
    predicted = _picks([("apo-ferritin", 210.0, 200.0, 140.0)], experiment="TS_x")
    fig = viz.plot_run_detections(root, "test", "TS_x", truth=truth, predicted=predicted)
    z_index = stats.busiest_slice(truth[truth["experiment"] == "TS_x"], V, 16)
    assert z_index != stats.busiest_slice(truth, V, 16)  # the other run's picks are left out
    ax = _axes(fig, "slice")
    assert ax.get_title().startswith(f"slice z = {z_index} vox") and len(_circles(ax)) == 2
    assert fig._suptitle.get_text() == "TS_x (test)"
    only_predicted = viz.plot_run_detections(root, "test", "TS_x", predicted=predicted)
    assert _axes(only_predicted, "slice").get_title().startswith(f"slice z = {z_index} vox")
    with pytest.raises(CziiInputError, match="^invalid truth, 1 problem"):
        viz.plot_run_detections(root, "test", "TS_x", truth=truth.drop(columns="z"))
