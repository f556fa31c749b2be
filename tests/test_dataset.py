import numpy as np
import pandas as pd
import pytest
import yaml

from czii_kaggle import omezarr, layout, particles, picks as picks_io
from czii_kaggle.dataset import (
    DatasetConfig,
    LabelConfig,
    _rot90_labels,
    build_dataset,
    slice_boxes,
    tile_origins,
    yolo_labels,
)
from czii_kaggle.errors import CziiInputError

VOX = 10.0


def _picks(rows):
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z"])


def test_slice_boxes_span_and_size():
    p = _picks([["r", "ribosome", 1000.0, 500.0, 600.0], ["r", "apo-ferritin", 2000.0, 700.0, 300.0]])
    b = slice_boxes(p, VOX, 184, LabelConfig(center_fraction=0.5))
    rib = b[b.particle_type == "ribosome"]
    # |z - 60| <= 0.5 * 150 / 10 = 7.5 slices -> 53..67
    assert rib.z_index.min() == 53 and rib.z_index.max() == 67 and len(rib) == 15
    assert (rib.w == 300.0).all() and (rib.class_id == particles.class_id("ribosome")).all()
    apo = b[b.particle_type == "apo-ferritin"]
    assert apo.z_index.tolist() == [27, 28, 29, 30, 31, 32, 33]
    assert set(b.columns) >= {"experiment", "x", "y", "w", "h", "z_index"}


def test_slice_boxes_section_mode_and_edges():
    p = _picks([["r", "ribosome", 1000.0, 500.0, 20.0]])
    b = slice_boxes(p, VOX, 184, LabelConfig(center_fraction=1.0, box_mode="section", min_box_fraction=0.2))
    assert b.z_index.min() == 0  # clipped at the volume's edge, not negative
    at_centre = b[b.z_index == 2].w.iloc[0]
    assert at_centre == pytest.approx(300.0)
    far = b[b.z_index == 12].w.iloc[0]  # 100 A from the centre: chord 2*sqrt(150^2-100^2)
    assert far == pytest.approx(2 * np.sqrt(150**2 - 100**2))
    assert len(slice_boxes(p.iloc[:0], VOX, 184)) == 0


def test_slice_boxes_unknown_type_is_clear():
    with pytest.raises(KeyError, match="unknown particle type 'ferritin'"):
        slice_boxes(_picks([["r", "ferritin", 1.0, 1.0, 1.0]]), VOX, 10)


def test_yolo_labels_clip_and_drop():
    p = _picks([["r", "ribosome", 1500.0, 1500.0, 0.0], ["r", "ribosome", 3300.0, 1500.0, 0.0]])
    b = slice_boxes(p, VOX, 10)
    b0 = b[b.z_index == 0]
    lab = yolo_labels(b0, VOX, (0, 0), (320, 320))
    # first box fully inside: centre 150/320; second centred 10 px outside the window -> mostly cut
    assert lab.shape == (1, 5)
    assert lab[0, 1:].tolist() == pytest.approx([150 / 320, 150 / 320, 30 / 320, 30 / 320])
    lab2 = yolo_labels(b0, VOX, (0, 0), (320, 320), min_visible=0.1)
    assert lab2.shape == (2, 5) and lab2[1, 3] == pytest.approx((320 - 315) / 320)
    assert lab2[1, 1] == pytest.approx((315 + 320) / 2 / 320)
    # the same box seen from a window that starts at x = 300 is whole again
    lab3 = yolo_labels(b0, VOX, (0, 300), (320, 320))
    assert lab3[:, 1].tolist() == pytest.approx([30 / 320])


def test_rot90_labels_follow_the_image():
    img = np.zeros((40, 60), np.uint8)
    img[5:15, 40:50] = 255  # box x 40..50, y 5..15
    lab = np.array([[2, 45 / 60, 10 / 40, 10 / 60, 10 / 40]])
    for k in range(4):
        rot = np.rot90(img, k)
        ys, xs = np.nonzero(rot)
        h, w = rot.shape
        got = _rot90_labels(lab, k)[0]
        assert got[0] == 2
        assert got[1:] == pytest.approx([(xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h, 10 / w, 10 / h])


def test_tile_origins_cover_with_overlap():
    assert tile_origins(630, None) == [0]
    for length, tile, ov in [(630, 320, 0), (630, 320, 32), (1000, 256, 16)]:
        starts = tile_origins(length, tile, ov)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))


def _write_run(root, run, shape, picks_rows, rng):
    """A synthetic tomogram with dark balls at the picks (no simulator needed)."""
    vol = rng.normal(0, 0.3, size=shape).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    for _, name, x, y, z in picks_rows:
        r = particles.get(name).radius_A / VOX
        vol[(zz - z / VOX) ** 2 + (yy - y / VOX) ** 2 + (xx - x / VOX) ** 2 <= r**2] -= 2.0
    omezarr.write_tomogram(layout.tomogram_path(root, "train", run), vol, VOX)
    picks_io.write_run_picks(root, _picks([[run, *row[1:]] for row in picks_rows]))


def test_build_dataset_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    rows = [[None, "ribosome", 400.0, 400.0, 120.0], [None, "apo-ferritin", 1000.0, 900.0, 140.0]]
    for run in ["TS_a", "TS_b"]:
        _write_run(root, run, (24, 128, 128), rows, rng)
    cfg = DatasetConfig(slice_step=1, tile_vox=64, tile_overlap_vox=0, empty_fraction=0.0, seed=3)
    data_yaml = build_dataset(root, tmp_path / "ds", val_runs=["TS_b"], config=cfg)
    meta = yaml.safe_load(data_yaml.read_text())
    assert meta["names"] == dict(enumerate(particles.NAMES))
    assert meta["czii"]["val_runs"] == ["TS_b"] and meta["czii"]["train_runs"] == ["TS_a"]
    train_imgs = sorted((tmp_path / "ds/images/train").glob("*.png"))
    val_imgs = sorted((tmp_path / "ds/images/val").glob("*.png"))
    assert train_imgs and val_imgs
    assert all(p.name.startswith("TS_a") for p in train_imgs)  # split by run, never by slice
    assert all(p.name.startswith("TS_b") for p in val_imgs)
    import cv2

    assert {cv2.imread(str(p)).shape for p in train_imgs + val_imgs} == {(64, 64, 3)}
    # every written label sits on a dark ball in its image (train images are rotated too)
    for img_path in val_imgs + train_imgs:
        lab = np.loadtxt(str(img_path).replace("images", "labels").replace(".png", ".txt"), ndmin=2)
        img = cv2.imread(str(img_path))[..., 1].astype(float)
        for c, xc, yc, w, h in lab:
            if w * h > 0.5 * (0.3 if c == 3 else 0.12) ** 2:  # clearly visible boxes only
                assert img[min(int(yc * 64), 63), min(int(xc * 64), 63)] < img.mean() - 20
    # ribosome labelled on |z - 12| <= 0.6 * 15 = 9 slices (19), in one 64-px tile each (it sits
    # at 40 px from the corner, fully inside the first tile)
    n_rib = sum(int((np.loadtxt(p, ndmin=2)[:, 0] == 3).sum()) for p in (tmp_path / "ds/labels/val").glob("*.txt"))
    assert n_rib == 19


def test_build_dataset_rejects_unknown_val_run(tmp_path):
    rng = np.random.default_rng(0)
    _write_run(tmp_path / "d", "TS_a", (8, 64, 64), [[None, "ribosome", 300.0, 300.0, 40.0]], rng)
    with pytest.raises(ValueError, match="TS_zz"):
        build_dataset(tmp_path / "d", tmp_path / "o", val_runs=["TS_zz"])


def test_rebuilding_into_a_dataset_folder_never_mixes_runs(tmp_path):
    """A second build into the same folder: refused, or with overwrite only the new images remain."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    rows = [[None, "ribosome", 400.0, 400.0, 120.0]]
    for run in ["TS_a", "TS_b", "TS_c"]:
        _write_run(root, run, (12, 64, 64), rows, rng)
    cfg = DatasetConfig(slice_step=4, tile_vox=None, empty_fraction=0.0)
    out = tmp_path / "ds"
    build_dataset(root, out, val_runs=["TS_b"], runs=["TS_a", "TS_b"], config=cfg)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(CziiInputError, match="ds: folder is not empty.*--overwrite"):
        build_dataset(root, out, val_runs=["TS_a"], runs=["TS_a", "TS_c"], config=cfg)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # untouched
    (out / "labels" / "train.cache").write_bytes(b"ultralytics cache")  # what training adds
    build_dataset(root, out, val_runs=["TS_a"], runs=["TS_a", "TS_c"], config=cfg, overwrite=True)
    train = {p.name.split("_z")[0] for p in (out / "images/train").glob("*.png")}
    val = {p.name.split("_z")[0] for p in (out / "images/val").glob("*.png")}
    assert train == {"TS_c"} and val == {"TS_a"}  # TS_b's old images are gone, no run on both sides
    assert not (out / "labels" / "train.cache").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_overwrite_never_deletes_what_is_not_our_dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    _write_run(root, "TS_a", (8, 64, 64), [[None, "ribosome", 300.0, 300.0, 40.0]], rng)
    _write_run(root, "TS_b", (8, 64, 64), [[None, "ribosome", 300.0, 300.0, 40.0]], rng)
    cfg = DatasetConfig(slice_step=4, tile_vox=None)
    for name, files in [("mixed", {"data.yaml": "czii: {}\n", "notes.txt": "mine"}),
                        ("foreign", {"data.yaml": "path: /elsewhere\ntrain: a\n"})]:
        out = tmp_path / name
        out.mkdir()
        for f, text in files.items():
            (out / f).write_text(text)
        with pytest.raises(CziiInputError, match=f"{name}: is not a slice dataset of ours"):
            build_dataset(root, out, config=cfg, overwrite=True)
        assert {p.name: p.read_text() for p in out.iterdir()} == files
    # the data root itself is never a place to build into
    with pytest.raises(CziiInputError, match="not a slice dataset of ours"):
        build_dataset(root, root, config=cfg, overwrite=True)
    assert (root / "train").is_dir()
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    assert build_dataset(root, tmp_path / "empty", config=cfg).is_file()


def test_build_dataset_bad_arguments_are_input_errors(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    _write_run(root, "TS_a", (8, 64, 64), [[None, "ribosome", 300.0, 300.0, 40.0]], rng)
    with pytest.raises(CziiInputError, match="every run is a validation run"):
        build_dataset(root, tmp_path / "o", val_runs=["TS_a"])
    with pytest.raises(CziiInputError, match="TS_zz.*has no denoised tomogram"):
        build_dataset(root, tmp_path / "o", runs=["TS_a", "TS_zz"], val_runs=["TS_a"])
    for bad in [dict(slice_step=0), dict(slice_step=-1), dict(tile_vox=0), dict(empty_fraction=2.0)]:
        with pytest.raises(ValueError):
            DatasetConfig(**bad)
    assert not (tmp_path / "o").exists()
