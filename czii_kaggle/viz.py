"""Matplotlib figures for the EDA notebook, the README and ``czii-kaggle show``.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` built
with the object-oriented API (``Figure()``, never ``pyplot``): no GUI backend
is touched, nothing is shown, no global figure list grows. Save one with
:func:`save_figure` (or ``fig.savefig``); a notebook displays it as the last
expression of a cell (after ``%matplotlib inline``).

The numbers they draw (counts, nearest neighbours, sections, crops) are computed in
:mod:`czii_kaggle.stats`.

Geometry follows the package conventions: picks are ``experiment,
particle_type, x, y, z`` in Angstrom, volumes are ``(z, y, x)`` in voxels and
voxel ``i`` is centred at ``i * voxel_size_A`` Angstrom. Image axes are drawn
in Angstrom so that picks and voxels share one frame. Colours and radii come
from :mod:`czii_kaggle.particles`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from . import frames, particles
from .errors import CziiInputError
from .outputs import atomic_path, check_writable
from .particles import MATCH_RADIUS_FRACTION, NAMES, PARTICLES
from .preprocess import PreprocessConfig, percentile_range
from .stats import (average_crop, busiest_slice, check_volume, nearest_neighbour_distances, pick_counts, plane_sections,
                    types_in)

_XYZ = ("x", "y", "z")
#: Display range of tomogram images (percentiles of the voxels shown).
_DISPLAY_PERCENTILES = (1.0, 99.0)


# --------------------------------------------------------------------------- helpers


def _color(name: str) -> tuple[float, float, float]:
    return particles.get(name).color_rgb


def _one_experiment(picks: pd.DataFrame | None, experiment: str | None, what: str = "picks") -> pd.DataFrame | None:
    """The rows of one experiment: ``experiment`` if given, else the only one present."""
    if picks is None:
        return None
    frames.validate(picks, frames.PICKS, what=what)
    if experiment is not None:
        return picks[picks["experiment"].astype(str) == str(experiment)]
    runs = sorted(set(picks["experiment"].astype(str)))
    if len(runs) > 1:
        raise ValueError(
            f"{what} hold {len(runs)} experiments ({', '.join(runs[:5])}...): pass experiment= "
            "to choose the one this tomogram belongs to"
        )
    return picks


def _extent_A(n_cols: int, n_rows: int, voxel_size_A: float) -> tuple[float, float, float, float]:
    """``imshow`` extent (origin upper) that puts voxel ``i``'s centre at ``i * voxel_size_A``."""
    v = voxel_size_A
    return (-0.5 * v, (n_cols - 0.5) * v, (n_rows - 0.5) * v, -0.5 * v)


def _display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = percentile_range(np.asarray(image, dtype=np.float32), _DISPLAY_PERCENTILES)
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _show_image(ax, image: np.ndarray, voxel_size_A: float, vmin_vmax: tuple[float, float]) -> None:
    ny, nx = image.shape
    ax.imshow(image, cmap="gray", vmin=vmin_vmax[0], vmax=vmin_vmax[1], interpolation="nearest",
              extent=_extent_A(nx, ny, voxel_size_A), origin="upper")


def _type_legend_handles(names: list[str], marker: str = "o") -> list[Line2D]:
    return [
        Line2D([], [], linestyle="none", marker=marker, markersize=8, markerfacecolor="none",
               markeredgecolor=_color(n), markeredgewidth=1.5, label=n)
        for n in names
    ]


def figure_format(path: str | Path) -> str:
    """The image format ``path``'s suffix names (``"png"``, ``"pdf"``...).

    Raises :class:`CziiInputError` naming ``path`` when matplotlib cannot write that format,
    so a command can refuse it before it reads a tomogram.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix.lstrip(".").lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        what = f"'.{fmt}' is not an image format" if fmt else "no suffix names the image format"
        raise CziiInputError(path, f"cannot save a figure here: {what} (use .png, .pdf, .svg, .jpg, ...)")
    return fmt


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` (PNG, PDF... by suffix, :func:`figure_format`) creating parent folders;
    written under a temporary name and renamed. Returns the path."""
    path = Path(path)
    fmt = figure_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def _draw_sections(ax, picks: pd.DataFrame | None, axis: str, position_A: float, h: str, v: str,
                   linestyle: str = "-") -> int:
    """Circles of the picks cutting plane ``axis = position_A``; ``h``/``v``: columns on the image axes."""
    if picks is None or len(picks) == 0:
        return 0
    cut = plane_sections(picks, axis, position_A)
    for name, hv, r in zip(cut["particle_type"], cut[[h, v]].to_numpy(float), cut["section_radius_A"]):
        ax.add_patch(Circle(tuple(hv), float(r), fill=False, edgecolor=_color(name), linewidth=1.3,
                            linestyle=linestyle, label=f"_{name}"))
    return len(cut)


# --------------------------------------------------------------------------- figures


def plot_pick_counts(picks: pd.DataFrame) -> Figure:
    """Grouped bar chart of :func:`pick_counts`: one group per run, one bar per particle type.

    Returns
    -------
    Figure
        One axes; one ``BarContainer`` per particle type (label = type name) with
        one bar per run.
    """
    counts = pick_counts(picks)
    runs = counts.index.tolist()
    fig = Figure(figsize=(max(6.0, 1.2 * len(runs) + 3.0), 4.0), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(NAMES)
    x = np.arange(len(runs))
    for k, name in enumerate(NAMES):
        ax.bar(x + (k - (len(NAMES) - 1) / 2) * width, counts[name].to_numpy(), width,
               color=_color(name), edgecolor="black", linewidth=0.4, label=name)
    ax.set_xticks(x, runs, rotation=30 if len(runs) > 4 else 0, ha="right" if len(runs) > 4 else "center")
    ax.set_xlabel("run")
    ax.set_ylabel("number of picks")
    ax.set_title("picks per run and particle type")
    ax.legend(fontsize="small", ncols=2)
    return fig


def plot_orthoslices(
    volume: np.ndarray,
    voxel_size_A: float,
    picks: pd.DataFrame | None = None,
    center_vox: tuple[int, int, int] | None = None,
    experiment: str | None = None,
    title: str | None = None,
) -> Figure:
    """Three orthogonal slices through one voxel, with the picks that cut each slice.

    Layout: the x-y slice (top left), the z-y slice to its right (sharing y) and
    the x-z slice below it (sharing x); the legend sits in the fourth corner.
    Each pick whose sphere cuts a slice plane is drawn as a circle of the sphere's
    cross-section there, ``sqrt(r**2 - d**2)`` with ``d`` the pick's distance to
    the plane, in the particle's colour.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
        Tomogram voxels (any real dtype).
    voxel_size_A : float
        Angstrom per voxel.
    picks : DataFrame, optional
        ``experiment, particle_type, x, y, z`` (Angstrom) of this tomogram.
    center_vox : (int, int, int), optional
        ``(z, y, x)`` voxel the three slices pass through; the volume's centre by default.
    experiment : str, optional
        Keep only this experiment's picks (required when ``picks`` holds several).
    title : str, optional
        Figure title.

    Returns
    -------
    Figure
        Axes labelled ``"x-y"``, ``"z-y"``, ``"x-z"`` (``Axes.get_label()``), in
        Angstrom, each holding one :class:`~matplotlib.patches.Circle` per pick
        cutting its plane; a fourth axes, ``"legend"``, holds the legend.
    """
    volume = check_volume(volume, voxel_size_A)
    picks = _one_experiment(picks, experiment)
    nz, ny, nx = volume.shape
    cz, cy, cx = (nz // 2, ny // 2, nx // 2) if center_vox is None else (int(c) for c in center_vox)
    if not (0 <= cz < nz and 0 <= cy < ny and 0 <= cx < nx):
        raise ValueError(f"center_vox {(cz, cy, cx)} lies outside the volume of shape {volume.shape}")
    v = float(voxel_size_A)
    xy, zy, xz = volume[cz], volume[:, :, cx].T, volume[:, cy, :]
    vrange = _display_range(np.concatenate([xy.ravel(), zy.ravel(), xz.ravel()]))

    width_in = 11.0
    scale = width_in / (nx + nz)
    fig = Figure(figsize=(width_in, max(3.0, (ny + nz) * scale + 0.8)), layout="constrained")
    if title:
        fig.suptitle(title)
    gs = fig.add_gridspec(2, 2, width_ratios=[nx, nz], height_ratios=[ny, nz])
    ax_xy = fig.add_subplot(gs[0, 0], label="x-y")
    ax_zy = fig.add_subplot(gs[0, 1], label="z-y", sharey=ax_xy)
    ax_xz = fig.add_subplot(gs[1, 0], label="x-z", sharex=ax_xy)
    ax_leg = fig.add_subplot(gs[1, 1], label="legend")
    ax_leg.set_axis_off()

    _show_image(ax_xy, xy, v, vrange)
    _show_image(ax_zy, zy, v, vrange)
    _show_image(ax_xz, xz, v, vrange)
    n_xy = _draw_sections(ax_xy, picks, "z", cz * v, "x", "y")
    n_zy = _draw_sections(ax_zy, picks, "x", cx * v, "z", "y")
    n_xz = _draw_sections(ax_xz, picks, "y", cy * v, "x", "z")

    guide = dict(color="yellow", linewidth=0.6, linestyle="--", alpha=0.6)
    ax_xy.axvline(cx * v, **guide)
    ax_xy.axhline(cy * v, **guide)
    ax_zy.axvline(cz * v, **guide)
    ax_zy.axhline(cy * v, **guide)
    ax_xz.axvline(cx * v, **guide)
    ax_xz.axhline(cz * v, **guide)
    for ax in (ax_xy, ax_zy, ax_xz):
        ax.set_aspect("equal")
        ax.tick_params(labelsize="small")
    ax_xy.set_title(f"x-y at z = {cz} vox ({cz * v:.0f} Å): {n_xy} picks cut", fontsize="medium")
    ax_zy.set_title(f"z-y at x = {cx} vox\n({cx * v:.0f} Å): {n_zy} cut", fontsize="medium")
    ax_xz.set_title(f"x-z at y = {cy} vox ({cy * v:.0f} Å): {n_xz} picks cut", fontsize="medium")
    ax_xy.set_ylabel("y (Å)")
    ax_xz.set_xlabel("x (Å)")
    ax_xz.set_ylabel("z (Å)")
    ax_zy.set_xlabel("z (Å)")
    ax_xy.tick_params(labelbottom=False)
    ax_zy.tick_params(labelleft=False)
    if picks is not None and len(picks):
        ax_leg.legend(handles=_type_legend_handles(types_in(picks)), loc="center", fontsize="small",
                      title="picks (cross-section)", title_fontsize="small", frameon=False)
    return fig


def plot_z_distribution(picks: pd.DataFrame, bins: int = 20) -> Figure:
    """Histogram of pick depth ``z`` (Angstrom), one panel per particle type.

    Returns
    -------
    Figure
        Six axes labelled with the particle names, in particle-table order; each
        histogram counts that type's picks over all runs.
    """
    frames.validate(picks, frames.PICKS)
    z_A = picks["z"].to_numpy(dtype=np.float64)
    lo, hi = (float(z_A.min()), float(z_A.max())) if len(z_A) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = Figure(figsize=(12, 6), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True).ravel()
    for ax, p in zip(axes, PARTICLES):
        z = z_A[picks["particle_type"].to_numpy() == p.name]
        ax.set_label(p.name)
        ax.hist(z, bins=edges, color=p.color_rgb, edgecolor="black", linewidth=0.4)
        ax.set_title(f"{p.name} (n = {len(z)})", fontsize="medium")
        ax.set_xlabel("z (Å)")
        ax.set_ylabel("picks")
    fig.suptitle("depth of the picks")
    return fig


def plot_nearest_neighbours(picks: pd.DataFrame, bins: int = 30) -> Figure:
    """Histograms of the nearest-neighbour distance within each type and run (Angstrom).

    Each panel marks the metric's match radius ``0.5 * radius`` (a second
    prediction closer than this to a particle is a false positive) and the
    diameter ``2 * radius`` (two spheres touching).

    Returns
    -------
    Figure
        Six axes labelled with the particle names, in particle-table order; each
        holds the histogram of :func:`nearest_neighbour_distances` of its type
        (picks alone in their run left out) and two vertical lines labelled
        ``"0.5 x radius"`` and ``"diameter"``.
    """
    nn_A = nearest_neighbour_distances(picks)
    types = picks["particle_type"].to_numpy()
    fig = Figure(figsize=(12, 6), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for ax, p in zip(axes, PARTICLES):
        d = nn_A[(types == p.name) & np.isfinite(nn_A)]
        ax.set_label(p.name)
        if len(d):
            ax.hist(d, bins=bins, color=p.color_rgb, edgecolor="black", linewidth=0.4)
        ax.axvline(MATCH_RADIUS_FRACTION * p.radius_A, color="red", linestyle="--", label="0.5 x radius")
        ax.axvline(2.0 * p.radius_A, color="black", linestyle=":", label="diameter")
        ax.set_title(f"{p.name} (n = {len(d)})", fontsize="medium")
        ax.set_xlabel("nearest same-type neighbour (Å)")
        ax.set_ylabel("picks")
        ax.set_xlim(left=0.0)
    axes[0].legend(fontsize="small")
    fig.suptitle("nearest-neighbour distances per type")
    return fig


def plot_crop_gallery(
    crops: dict[str, np.ndarray], voxel_size_A: float | None = None, n_examples: int = 6
) -> Figure:
    """A gallery of crops: one row per particle type, examples then the average crop.

    Parameters
    ----------
    crops : dict
        :func:`particle_crops` output: type -> ``(n, s, s)`` crops.
    voxel_size_A : float, optional
        When given, the average crop shows the particle's radius as a circle.
    n_examples : int
        Example crops per row (the first ones).

    Returns
    -------
    Figure
        ``len(crops)`` rows x ``n_examples + 1`` columns of axes; the last axes of
        a row is labelled ``"average {type}"`` and shows :func:`average_crop`.
        With no crops at all, one axes labelled ``"empty"`` that says so.
    """
    names = [n for n in NAMES if n in crops]
    unknown = sorted(set(crops) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown particle types {unknown}; known types: {', '.join(NAMES)}")
    if not names:
        fig = Figure(figsize=(5, 1.5), layout="constrained")
        ax = fig.add_subplot(label="empty")
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no picks: no crop to show", ha="center", va="center", transform=ax.transAxes)
        return fig
    n_cols = int(n_examples) + 1
    fig = Figure(figsize=(1.5 * n_cols + 1.5, 1.6 * len(names) + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(len(names), n_cols, squeeze=False))
    for row, name in zip(axes, names):
        stack = np.asarray(crops[name], dtype=np.float32)
        finite = stack[np.isfinite(stack)]
        vrange = _display_range(finite) if finite.size else (0.0, 1.0)
        for k, ax in enumerate(row[:-1]):
            ax.set_axis_off()
            if k < len(stack):
                ax.imshow(stack[k], cmap="gray", vmin=vrange[0], vmax=vrange[1], interpolation="nearest")
        row[0].text(-0.1, 0.5, name, transform=row[0].transAxes, ha="right", va="center",
                    fontsize="small", color=_color(name), fontweight="bold")
        ax = row[-1]
        ax.set_label(f"average {name}")
        ax.set_axis_off()
        if len(stack):
            mean = average_crop(stack)
            ax.imshow(mean, cmap="gray", interpolation="nearest", vmin=np.nanmin(mean), vmax=np.nanmax(mean))
            if voxel_size_A:
                c = stack.shape[-1] // 2
                ax.add_patch(Circle((c, c), particles.get(name).radius_A / voxel_size_A, fill=False,
                                    edgecolor=_color(name), linewidth=1.2))
        ax.set_title(f"average (n = {len(stack)})", fontsize="small")
    fig.suptitle("x-y crops centred on the picks")
    return fig


def plot_intensity_histogram(
    volume: np.ndarray, bins: int = 200, max_samples: int = 2_000_000,
    clip_percentiles: tuple[float, float] = PreprocessConfig().clip_percentiles,
) -> Figure:
    """Histogram of voxel values, with the preprocessing clip percentiles marked.

    Volumes larger than ``max_samples`` voxels are subsampled on a regular stride
    (as :func:`czii_kaggle.preprocess.percentile_range` does); non-finite voxels
    are ignored.

    Returns
    -------
    Figure
        One axes (log counts); two vertical lines at ``clip_percentiles``.
    """
    flat = np.asarray(volume).reshape(-1)
    sample = flat[:: max(1, flat.size // max_samples)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise ValueError("the volume holds no finite voxel")
    lo, hi = np.percentile(sample, clip_percentiles)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(sample, bins=bins, color="0.4")
    ax.set_yscale("log")
    ax.axvline(lo, color="red", linestyle="--", label=f"{clip_percentiles[0]} percentile")
    ax.axvline(hi, color="red", linestyle=":", label=f"{clip_percentiles[1]} percentile")
    ax.set_xlabel("voxel value")
    ax.set_ylabel("voxels")
    sampled = f"{sample.size:,} of {flat.size:,} voxels" if sample.size < flat.size else f"{flat.size:,} voxels"
    ax.set_title(f"intensity histogram ({sampled})")
    ax.legend(fontsize="small")
    return fig


def plot_picks_3d(picks: pd.DataFrame, experiment: str | None = None) -> Figure:
    """3D scatter of one run's picks (Angstrom), coloured by type, marker area ~ radius squared.

    Returns
    -------
    Figure
        One 3D axes holding one scatter collection per particle type present
        (label = type name).
    """
    picks = _one_experiment(picks, experiment)
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    for name in types_in(picks):
        rows = picks[picks["particle_type"] == name]
        ax.scatter(rows["x"], rows["y"], rows["z"], s=(particles.get(name).radius_A / 12.0) ** 2,
                   color=_color(name), edgecolor="black", linewidth=0.3, alpha=0.8, label=name)
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_zlabel("z (Å)")
    runs = sorted(set(picks["experiment"].astype(str)))
    ax.set_title(f"picks of {runs[0]}" if runs else "picks")
    if len(picks):
        ax.legend(fontsize="small", loc="upper left")
    return fig


def plot_detections(
    volume: np.ndarray,
    voxel_size_A: float,
    z_index: int,
    truth: pd.DataFrame | None = None,
    predicted: pd.DataFrame | None = None,
    experiment: str | None = None,
) -> Figure:
    """One x-y slice with the true particles as circles and the predicted centres as crosses.

    A true particle is drawn when its sphere cuts the slice, as a circle of its
    cross-section there (as in :func:`plot_orthoslices`). A predicted particle is
    drawn, as an ``x`` at its centre, when its type's sphere around it would cut
    the slice.

    Parameters
    ----------
    volume : ndarray, shape (nz, ny, nx)
    voxel_size_A : float
        Angstrom per voxel.
    z_index : int
        The slice, in voxels.
    truth, predicted : DataFrame, optional
        ``experiment, particle_type, x, y, z`` in Angstrom of this tomogram.
    experiment : str, optional
        Keep only this experiment's rows (required when a frame holds several).

    Returns
    -------
    Figure
        One axes (label ``"slice"``), in Angstrom: one :class:`~matplotlib.patches.Circle`
        per true particle cutting the slice, and one scatter collection (``x``
        markers, label ``"predicted {type}"``) per predicted type present there;
        the legend names the particle types drawn.
    """
    volume = check_volume(volume, voxel_size_A)
    truth = _one_experiment(truth, experiment, "truth")
    predicted = _one_experiment(predicted, experiment, "predicted")
    nz = volume.shape[0]
    z_index = int(z_index)
    if not 0 <= z_index < nz:
        raise ValueError(f"z_index {z_index} lies outside 0..{nz - 1}")
    v = float(voxel_size_A)
    z_A = z_index * v
    image = volume[z_index]
    fig = Figure(figsize=(8.5, 7), layout="constrained")
    ax = fig.add_subplot(label="slice")
    _show_image(ax, image, v, _display_range(image))
    truth_cut = plane_sections(truth, "z", z_A) if truth is not None else None
    n_truth = _draw_sections(ax, truth_cut, "z", z_A, "x", "y")
    n_pred = 0
    drawn = [] if truth_cut is None else [truth_cut[["particle_type"]]]
    if predicted is not None and len(predicted):
        cut = plane_sections(predicted, "z", z_A)
        n_pred = len(cut)
        drawn.append(cut[["particle_type"]])
        for name in types_in(cut):
            rows = cut[cut["particle_type"] == name]
            ax.scatter(rows["x"], rows["y"], marker="x", s=40, linewidths=1.6, color=_color(name),
                       label=f"predicted {name}")
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(f"slice z = {z_index} vox ({z_A:.0f} Å): {n_truth} true (circles), {n_pred} predicted (crosses)",
                 fontsize="medium")
    handles = _type_legend_handles(types_in(pd.concat(drawn)) if drawn else [], marker="s")
    handles += [
        Line2D([], [], linestyle="none", marker="o", markersize=9, markerfacecolor="none",
               markeredgecolor="black", label="truth (cross-section)"),
        Line2D([], [], linestyle="none", marker="x", markersize=8, color="black", label="predicted centre"),
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def plot_run_detections(root: str | Path, split: str, run: str, truth: pd.DataFrame | None = None,
                        predicted: pd.DataFrame | None = None, z_index: int | None = None) -> Figure:
    """One run of a Kaggle-layout root: its tomogram read, the slice cut by the most true particles
    (:func:`czii_kaggle.stats.busiest_slice`; of the predicted ones when there is no truth) drawn by
    :func:`plot_detections` with that run's rows of ``truth`` and ``predicted``.

    Parameters
    ----------
    root : path-like
        Kaggle-layout data root; ``split`` is ``"train"`` or ``"test"``.
    run : str
        The run (``experiment``) to draw; other runs' rows of the frames are left out.
    truth, predicted : DataFrame, optional
        ``experiment, particle_type, x, y, z`` in Angstrom, any number of runs.
    z_index : int, optional
        The slice (voxels) instead of the busiest one.

    Returns
    -------
    Figure
        As :func:`plot_detections`, titled with the run and the slice.
    """
    from . import layout, omezarr

    volume, voxel_size_A = omezarr.read_tomogram(layout.tomogram_path(root, split, run))
    of_run = []
    for frame, what in ((truth, "truth"), (predicted, "predicted")):
        frame = None if frame is None else frames.validate(frame, frames.PICKS, what=what)
        of_run.append(None if frame is None else frame[frame["experiment"] == str(run)])
    if z_index is None:
        guide = of_run[0] if of_run[0] is not None and len(of_run[0]) else of_run[1]
        z_index = volume.shape[0] // 2 if guide is None else busiest_slice(guide, voxel_size_A, volume.shape[0])
    fig = plot_detections(volume, voxel_size_A, z_index, truth=of_run[0], predicted=of_run[1], experiment=run)
    fig.suptitle(f"{run} ({split})")
    return fig


def save_run_figure(root: str | Path, run: str, out: str | Path, split: str = "train",
                    tomo_type: str | None = None) -> Path:
    """Orthogonal slices of one run of a Kaggle-layout root, with its picks when it has any.

    Reads ``{root}/{split}/static/.../{run}/VoxelSpacing10.000/{tomo_type}.zarr`` (level 0)
    and, for a training run with a ``Picks`` folder, its picks; writes
    :func:`plot_orthoslices` to ``out`` (its format and folder are checked first).

    Returns
    -------
    Path
        ``out``.
    """
    from . import layout, omezarr
    from .picks import read_run_picks

    figure_format(out)
    check_writable(out)
    tomo_type = tomo_type or layout.DEFAULT_TOMOGRAM_TYPE
    volume, voxel_size_A = omezarr.read_tomogram(layout.tomogram_path(root, split, run, tomo_type))
    picks = None
    if split == "train" and layout.picks_dir(root, run).is_dir():
        picks = read_run_picks(root, run)
    fig = plot_orthoslices(volume, voxel_size_A, picks, title=f"{run} ({split}, {tomo_type})")
    return save_figure(fig, out)
