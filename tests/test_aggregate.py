"""Per-slice boxes -> 3D particles (czii_kaggle.aggregate)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import metric, particles
from czii_kaggle.aggregate import (
    CANDIDATE_COLUMNS,
    DETECTION_COLUMNS,
    AggregateConfig,
    ClassParams,
    aggregate,
    infer_slice_step_A,
    load_config,
    nms_3d,
    relative_scores,
    save_config,
    select,
)
from czii_kaggle.errors import CziiInputError

VOXEL_A = 10.012444537618887  # slice spacing of the synthetic tests (the real level-0 value)


def column(name, x, y, z, conf=0.8, fraction=0.6, experiment="TS_1", jitter_A=0.0, rng=None):
    """Boxes of one particle on every slice within ``fraction * radius`` of its centre (Angstrom)."""
    r = particles.get(name).radius_A
    k = np.arange(np.ceil((z - fraction * r) / VOXEL_A), np.floor((z + fraction * r) / VOXEL_A) + 1)
    n = len(k)
    jit = rng.uniform(-jitter_A, jitter_A, (n, 2)) if rng is not None else np.zeros((n, 2))
    return pd.DataFrame(
        {
            "experiment": experiment,
            "z": k * VOXEL_A,
            "x": x + jit[:, 0],
            "y": y + jit[:, 1],
            "w": 2 * r,
            "h": 2 * r,
            "confidence": conf,
            "class_id": particles.class_id(name),
        }
    )


def matched(cands, name, xyz):
    """Number of candidates of type ``name`` within the metric's 0.5 radius of ``xyz``."""
    c = cands[cands["particle_type"] == name]
    d = np.linalg.norm(c[["x", "y", "z"]].to_numpy() - np.asarray(xyz), axis=1)
    return int((d <= 0.5 * particles.get(name).radius_A).sum())


def test_oracle_truth_boxes_score_on_real_layouts(real_root):
    from czii_kaggle import omezarr
    from czii_kaggle.dataset import slice_boxes
    from czii_kaggle.picks import read_all_picks

    zarr = real_root / "zarr-metadata" / "TS_5_4-denoised.zarr"
    voxel_A = omezarr.read_voxel_size(zarr, 0)
    # only level 2's .zarray is present: level 0 has (voxel_2 / voxel_0) times its slices
    n_slices = omezarr.open_level(zarr, 2).shape[0] * round(omezarr.read_voxel_size(zarr, 2) / voxel_A)
    truth = read_all_picks(real_root)
    boxes = slice_boxes(truth, voxel_A, n_slices)
    det = pd.DataFrame(
        {
            "experiment": boxes["experiment"],
            "z": boxes["z_index"] * voxel_A,
            "x": boxes["x"],
            "y": boxes["y"],
            "w": boxes["w"],
            "h": boxes["h"],
            "confidence": 1.0,
            "class_id": boxes["class_id"],
        }
    )
    cands = aggregate(det)
    assert list(cands.columns) == list(CANDIDATE_COLUMNS)
    assert metric.score(truth, cands[cands["particle_type"].isin(particles.SCORED)]) >= 0.99
    # and no type is over-split: at most one candidate more than picks per type
    per_type = cands.groupby("particle_type").size()
    assert (per_type - truth.groupby("particle_type").size()).abs().max() <= 1


@pytest.mark.parametrize(
    "name, offset_A",
    [
        ("ribosome", (209.0, 0.0, 0.0)),  # real ribosome neighbours, side by side
        ("ribosome", (163.0, 0.0, 155.0)),  # a real ribosome pair, diagonal
        ("apo-ferritin", (90.0, 0.0, 0.0)),
        ("apo-ferritin", (86.0, 0.0, 22.0)),  # the closest real apo-ferritin pair bar one
        ("thyroglobulin", (205.0, 0.0, 72.0)),
    ],
)
def test_real_neighbours_are_not_merged(name, offset_A):
    rng = np.random.default_rng(0)
    a = np.array([3000.0, 3000.0, 900.0])
    b = a + np.array(offset_A)
    det = pd.concat(
        [column(name, *a, jitter_A=VOXEL_A, rng=rng), column(name, *b, jitter_A=VOXEL_A, rng=rng)], ignore_index=True
    )
    cands = aggregate(det, slice_step_A=VOXEL_A)
    assert len(cands) == 2
    assert matched(cands, name, a) == 1 and matched(cands, name, b) == 1


def test_single_linkage_would_chain_these_neighbours():
    """The two apo-ferritins above are linked by a chain of boxes; ours still splits them."""
    a = np.array([3000.0, 3000.0, 900.0])
    b = a + np.array([90.0, 0.0, 0.0])
    bridge = pd.DataFrame(
        {"experiment": "TS_1", "z": 900.0, "x": a[0] + np.array([30.0, 60.0]), "y": a[1],
         "w": 120.0, "h": 120.0, "confidence": 0.3, "class_id": 0}
    )  # fmt: skip
    det = pd.concat([column("apo-ferritin", *a), column("apo-ferritin", *b), bridge], ignore_index=True)
    cands = aggregate(det, slice_step_A=VOXEL_A)
    assert matched(cands, "apo-ferritin", a) == 1 and matched(cands, "apo-ferritin", b) == 1


@pytest.mark.parametrize("name", [p.name for p in particles.PARTICLES])
def test_one_particle_with_jittered_and_doubled_boxes_is_one_candidate(name):
    rng = np.random.default_rng(1)
    r = particles.get(name).radius_A
    centre = np.array([2000.0, 2500.0, 800.0])
    det = column(name, *centre, conf=0.7, fraction=0.9, jitter_A=0.15 * r, rng=rng)
    double = det.iloc[::3].copy()
    double["x"] += 0.25 * r
    double["confidence"] = 0.4
    det = pd.concat([det, double], ignore_index=True)
    cands = aggregate(det, slice_step_A=VOXEL_A)
    assert len(cands) == 1
    assert matched(cands, name, centre) == 1
    assert cands["n_slices"].iloc[0] == det["z"].nunique()


def test_score_counts_each_slice_once_and_grows_with_support():
    one = column("ribosome", 3000.0, 3000.0, 900.0, conf=0.5)
    doubled = pd.concat([one, one.assign(confidence=0.3)], ignore_index=True)
    half = one.iloc[: len(one) // 2]
    s_one, s_doubled, s_half = (
        aggregate(d, apply_thresholds=False, slice_step_A=VOXEL_A)["score"].iloc[0] for d in (one, doubled, half)
    )
    assert s_doubled == pytest.approx(s_one)
    assert s_half < s_one
    expected_slices = 1 + 2 * particles.get("ribosome").radius_A / VOXEL_A
    assert s_one == pytest.approx(0.5 * len(one) / expected_slices)


def test_centre_is_confidence_weighted():
    det = column("virus-like-particle", 1000.0, 1000.0, 600.0, conf=0.5)
    det.loc[det.index[0], ["x", "confidence"]] = [1030.0, 1.0]
    cands = aggregate(det, apply_thresholds=False, slice_step_A=VOXEL_A)
    w = det["confidence"].to_numpy()
    assert cands["x"].iloc[0] == pytest.approx((w * det["x"]).sum() / w.sum())


def test_min_support_removes_single_slice_noise():
    rng = np.random.default_rng(2)
    real = column("thyroglobulin", 3000.0, 3000.0, 900.0, conf=0.6)
    noise = pd.DataFrame(
        {"experiment": "TS_1", "z": rng.integers(0, 180, 20) * VOXEL_A, "x": rng.uniform(4000, 6000, 20),
         "y": rng.uniform(0, 6000, 20), "w": 260.0, "h": 260.0, "confidence": 0.95, "class_id": 4}
    )  # fmt: skip
    det = pd.concat([real, noise], ignore_index=True)
    loose = AggregateConfig().with_params("thyroglobulin", min_support=1, conf_threshold=0.0)
    assert len(aggregate(det, loose, slice_step_A=VOXEL_A)) == 21
    strict = loose.with_params("thyroglobulin", min_support=2)
    kept = aggregate(det, strict, slice_step_A=VOXEL_A)
    assert len(kept) == 1 and matched(kept, "thyroglobulin", (3000.0, 3000.0, 900.0)) == 1


def test_conf_threshold_filters_by_score():
    det = pd.concat(
        [column("ribosome", 1000.0, 1000.0, 900.0, conf=0.9), column("ribosome", 4000.0, 1000.0, 900.0, conf=0.2)],
        ignore_index=True,
    )
    cands = aggregate(det, apply_thresholds=False, slice_step_A=VOXEL_A)
    mid = float(cands["score"].mean())
    kept = aggregate(det, AggregateConfig().with_params("ribosome", conf_threshold=mid), slice_step_A=VOXEL_A)
    assert len(kept) == 1 and kept["x"].iloc[0] == pytest.approx(1000.0)


def _cands(rows):
    """Candidates from tuples of the leading :data:`CANDIDATE_COLUMNS`; ``share`` 1 (no rival) unless given."""
    out = pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS)[: len(rows[0])])
    return out if "share" in out else out.assign(share=1.0)


def test_nms_keeps_the_higher_score():
    r = particles.get("ribosome").radius_A
    cands = _cands(
        [
            ("TS_1", "ribosome", 1000.0, 1000.0, 500.0, 0.3, 5),
            ("TS_1", "ribosome", 1000.0 + 0.8 * r, 1000.0, 500.0, 0.6, 9),  # closer than 1.0 r: one stays
            ("TS_1", "ribosome", 1000.0 + 2.0 * r, 1000.0, 500.0, 0.2, 4),  # 1.2 r from the best: stays
            ("TS_2", "ribosome", 1000.0, 1000.0, 500.0, 0.1, 3),  # another run: stays
            ("TS_1", "thyroglobulin", 1000.0, 1000.0, 500.0, 0.1, 3),  # another type: stays
        ]
    )
    kept = nms_3d(cands)
    assert len(kept) == 4
    rib1 = kept[(kept["experiment"] == "TS_1") & (kept["particle_type"] == "ribosome")]
    assert sorted(rib1["score"]) == [0.2, 0.6]
    wider = AggregateConfig().with_params("ribosome", nms_fraction=1.3)
    assert sorted(nms_3d(cands, wider)["score"]) == [0.1, 0.1, 0.6]


def test_select_applies_support_then_nms():
    r = particles.get("apo-ferritin").radius_A
    cands = _cands(
        [
            ("TS_1", "apo-ferritin", 500.0, 500.0, 500.0, 0.9, 1),  # best score but one slice
            ("TS_1", "apo-ferritin", 500.0 + 0.5 * r, 500.0, 500.0, 0.5, 6),
        ]
    )
    cfg = AggregateConfig().with_params("apo-ferritin", min_support=2, conf_threshold=0.1)
    kept = select(cands, cfg)
    assert len(kept) == 1 and kept["n_slices"].iloc[0] == 6


def test_min_keep_keeps_each_runs_best_candidates_whatever_their_score():
    r = particles.get("ribosome").radius_A
    rows = [("TS_1", "ribosome", 1000.0 + 3 * r * i, 1000.0, 500.0, s, 5) for i, s in enumerate([0.9, 0.3, 0.2, 0.1])]
    rows += [("TS_2", "ribosome", 1000.0, 1000.0, 500.0, 0.05, 5),
             ("TS_2", "ribosome", 1000.0 + 0.5 * r, 1000.0, 500.0, 0.04, 5),  # NMS-ed by the one above
             ("TS_2", "ribosome", 1000.0 + 3 * r, 1000.0, 500.0, 0.03, 1),  # below min_support: never kept
             ("TS_2", "thyroglobulin", 1000.0, 1000.0, 500.0, 0.01, 5)]  # another type: no floor
    cands = _cands(rows)
    cfg = AggregateConfig().with_params("ribosome", conf_threshold=0.25, min_support=2)
    assert sorted(select(cands, cfg)["score"]) == [0.3, 0.9]
    floor = cfg.with_params("ribosome", min_keep=3)
    kept = select(cands, floor)
    by_run = kept[kept["particle_type"] == "ribosome"].groupby("experiment")["score"].apply(sorted).to_dict()
    assert by_run == {"TS_1": [0.2, 0.3, 0.9], "TS_2": [0.05]}
    assert not (kept["particle_type"] == "thyroglobulin").any()
    # a floor of 1: TS_1 already keeps 2 by the threshold, TS_2 gets its best
    one = select(cands, cfg.with_params("ribosome", min_keep=1))
    assert one.groupby("experiment")["score"].apply(sorted).to_dict() == {"TS_1": [0.3, 0.9], "TS_2": [0.05]}
    assert AggregateConfig.from_dict(floor.to_dict()) == floor
    with pytest.raises(ValueError, match="min_keep"):
        ClassParams(min_keep=-1)


def test_with_floor_sets_min_keep():
    cfg = AggregateConfig().with_floor({"ribosome": 21, "apo-ferritin": 28})
    assert cfg["ribosome"].min_keep == 21 and cfg["apo-ferritin"].min_keep == 28
    assert cfg["thyroglobulin"].min_keep == 0 and cfg["ribosome"].conf_threshold == AggregateConfig()["ribosome"].conf_threshold
    assert cfg.with_floor({"ribosome": 0})["ribosome"].min_keep == 0
    with pytest.raises(ValueError, match="unknown particle type"):
        cfg.with_floor({"ribosomes": 3})
    with pytest.raises(ValueError, match="min_keep"):
        cfg.with_floor({"ribosome": -2})


def test_relative_scores_are_against_each_runs_own_kth_best():
    r = particles.get("ribosome").radius_A
    scores = [0.8, 0.6, 0.4, 0.2]
    rows = [("TS_1", "ribosome", 1000.0 + 3 * r * i, 1000.0, 500.0, s, 5) for i, s in enumerate(scores)]
    rows += [("TS_2", "ribosome", 1000.0 + 3 * r * i, 1000.0, 500.0, s / 4, 5) for i, s in enumerate(scores)]
    rows += [("TS_2", "thyroglobulin", 1000.0, 1000.0, 500.0, 0.01, 5),
             ("TS_3", "ribosome", 1000.0, 1000.0, 500.0, 0.05, 5)]  # one candidate: its own reference
    cands = _cands(rows).sample(frac=1.0, random_state=0)  # order must not matter
    cfg = AggregateConfig().with_ref_rank({"ribosome": 2})
    out = relative_scores(cands, cfg)
    rel = out.set_index(["experiment", "particle_type", "x"])["score"]
    for run, scale in (("TS_1", 1.0), ("TS_2", 0.25)):
        got = [rel[(run, "ribosome", 1000.0 + 3 * r * i)] for i in range(4)]
        assert got == pytest.approx([s / (s + 0.6) for s in scores])  # the 2nd best is 0.6 * scale
    assert rel[("TS_3", "ribosome", 1000.0)] == pytest.approx(0.5)
    assert rel[("TS_2", "thyroglobulin", 1000.0)] == 0.01  # ref_rank 0: absolute
    assert (out.index == cands.index).all()
    assert relative_scores(cands, AggregateConfig()) is cands
    # a run whose scores are all 4 times lower keeps the same particles by a relative threshold
    absolute = select(cands, AggregateConfig().with_params("ribosome", conf_threshold=0.3, min_support=2))
    assert absolute[absolute["particle_type"] == "ribosome"].groupby("experiment").size().to_dict() == {"TS_1": 3}
    relative = select(cands, cfg.with_params("ribosome", conf_threshold=0.35, min_support=2))
    assert relative[relative["particle_type"] == "ribosome"].groupby("experiment").size().to_dict() == {
        "TS_1": 3, "TS_2": 3, "TS_3": 1}
    assert relative["score"].max() < 0.6  # the scores it thresholded on
    back = AggregateConfig.from_dict(cfg.to_dict())
    assert back == cfg and back["ribosome"].ref_rank == 2
    assert AggregateConfig.from_dict({"params": {"ribosome": {"min_keep": 3}}})["ribosome"].ref_rank == 0
    with pytest.raises(ValueError, match="ref_rank"):
        ClassParams(ref_rank=-1)
    with pytest.raises(ValueError, match="unknown particle type"):
        cfg.with_ref_rank({"ribosomes": 3})


def test_select_of_all_candidates_equals_aggregate():
    rng = np.random.default_rng(3)
    parts = [
        column(p.name, *rng.uniform(500, 5500, 2), rng.uniform(300, 1500), conf=rng.uniform(0.1, 0.9), rng=rng,
               jitter_A=5.0, experiment=f"TS_{i % 2}")
        for i, p in enumerate(particles.PARTICLES * 4)
    ]  # fmt: skip
    det = pd.concat(parts, ignore_index=True)
    cfg = AggregateConfig()
    pd.testing.assert_frame_equal(
        select(aggregate(det, cfg, apply_thresholds=False, slice_step_A=VOXEL_A), cfg),
        aggregate(det, cfg, slice_step_A=VOXEL_A),
    )


def test_empty_input_gives_empty_frame():
    empty = pd.DataFrame({c: [] for c in DETECTION_COLUMNS})
    for apply in (True, False):
        out = aggregate(empty, apply_thresholds=apply)
        assert out.empty and list(out.columns) == list(CANDIDATE_COLUMNS)
    assert select(aggregate(empty, apply_thresholds=False)).empty


def test_bad_detections_raise_input_error():
    det = column("ribosome", 1000.0, 1000.0, 500.0)
    with pytest.raises(CziiInputError, match=r"^invalid detections, 1 problem\(s\): missing column\(s\) confidence"):
        aggregate(det.drop(columns="confidence"))
    with pytest.raises(CziiInputError, match=r"class_id: outside 0\.\.5 in rows 0, 1"):
        aggregate(det.assign(class_id=6))
    with pytest.raises(CziiInputError, match="x: missing or infinite value in rows 0, 1"):
        aggregate(det.assign(x=np.nan))
    with pytest.raises(CziiInputError, match="confidence: not a number in row 0$"):
        aggregate(det.assign(confidence=["high"] + [0.5] * (len(det) - 1)))


def test_slice_step_is_inferred_from_z():
    det = column("ribosome", 1000.0, 1000.0, 500.0)
    assert infer_slice_step_A(det["z"]) == pytest.approx(VOXEL_A, abs=1e-3)
    assert infer_slice_step_A(np.array([5.0, 5.0])) is None
    # one box off the slice grid does not change the step
    assert infer_slice_step_A(np.append(det["z"], 500.0)) == pytest.approx(VOXEL_A, abs=1e-3)
    pd.testing.assert_frame_equal(aggregate(det), aggregate(det, slice_step_A=VOXEL_A))


def test_config_json_round_trip(tmp_path):
    cfg = AggregateConfig().with_params("thyroglobulin", conf_threshold=0.123, min_support=4, nms_fraction=0.8)
    path = save_config(cfg, tmp_path / "aggregate.json")
    back = load_config(path)
    assert back == cfg
    assert back["thyroglobulin"] == ClassParams(
        xy_fraction=cfg["thyroglobulin"].xy_fraction, z_fraction=cfg["thyroglobulin"].z_fraction,
        min_support=4, conf_threshold=0.123, nms_fraction=0.8,
    )  # fmt: skip
    assert AggregateConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "bad.json").write_text('{"params": {"ribosome": {"radius": 3}}}')
    with pytest.raises(CziiInputError, match="bad.json"):
        load_config(tmp_path / "bad.json")


def test_default_params_cover_every_type_and_reject_nonsense():
    cfg = AggregateConfig()
    assert set(cfg.params) == set(particles.NAMES)
    with pytest.raises(ValueError):
        ClassParams(min_support=0)
    with pytest.raises(ValueError):
        AggregateConfig({"ribosome": ClassParams()})


def test_share_is_the_candidates_part_of_the_score_at_its_spot():
    """A weak beta-galactosidase column on a thyroglobulin column has a small share; alone it has 1."""
    bg, thy = "beta-galactosidase", "thyroglobulin"
    det = pd.concat(
        [
            column(thy, 1000.0, 1000.0, 800.0, conf=0.8),
            column(bg, 1010.0, 1005.0, 805.0, conf=0.2),  # same particle, another class
            column(bg, 3000.0, 3000.0, 800.0, conf=0.2),  # alone
            column(thy, 1000.0, 1000.0, 800.0, conf=0.8, experiment="TS_2"),  # same place, other run
            column(bg, 1010.0, 1005.0, 805.0, conf=0.2, experiment="TS_3"),
            column(thy, 1000.0 + 60.0, 1000.0, 800.0, conf=0.8, experiment="TS_3"),  # > 0.5 * 90 A away
        ],
        ignore_index=True,
    )
    cands = aggregate(det, apply_thresholds=False, slice_step_A=VOXEL_A).set_index(["experiment", "particle_type", "x"])
    on_thy = cands.loc[("TS_1", bg)].sort_values("x")
    assert len(on_thy) == 2
    s_bg, s_thy = on_thy["score"].iloc[0], cands.loc[("TS_1", thy), "score"].iloc[0]
    assert on_thy["share"].iloc[0] == pytest.approx(s_bg / (s_bg + s_thy)) and on_thy["share"].iloc[0] < 0.4
    assert on_thy["share"].iloc[1] == 1.0  # the lone one
    # the thyroglobulin's rival is the weak beta-galactosidase within 0.5 * 130 A of it
    assert cands.loc[("TS_1", thy), "share"].iloc[0] == pytest.approx(s_thy / (s_thy + s_bg))
    assert (cands.loc[("TS_2", thy), "share"] == 1.0).all()  # rivals never cross runs
    assert (cands.loc[("TS_3", bg), "share"] == 1.0).all()  # nor the beta-galactosidase's own match radius
    # min_share removes the one on the thyroglobulin, keeps the lone one
    cfg = AggregateConfig().with_params(bg, conf_threshold=0.0, min_support=1, min_share=0.5)
    kept = aggregate(det[det["experiment"] == "TS_1"], cfg, slice_step_A=VOXEL_A)
    assert kept[kept["particle_type"] == bg]["x"].round().tolist() == [3000.0]
    with pytest.raises(ValueError, match="min_share"):
        ClassParams(min_share=1.5)
