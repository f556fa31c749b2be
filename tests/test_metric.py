"""The competition metric against hand-worked cases, real picks and a brute-force copy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import metric, particles
from czii_kaggle.errors import CziiInputError

REAL = Path("/work/shared/czii-real/train/overlay/ExperimentRuns")
COLS = ["experiment", "particle_type", "x", "y", "z"]


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLS).astype({"x": float, "y": float, "z": float})


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    """The real ground-truth picks of the 5 available training runs (plain json reader)."""
    if not REAL.is_dir():
        pytest.skip("real CZII picks not available")
    rows = []
    for path in sorted(REAL.glob("*/Picks/*.json")):
        data = json.loads(path.read_text())
        for p in data["points"]:
            loc = p["location"]
            rows.append((data["run_name"], data["pickable_object_name"], loc["x"], loc["y"], loc["z"]))
    df = _frame(rows)
    assert len(df) == 836 and df["experiment"].nunique() == 5
    return df


# ---------------------------------------------------------------- match_counts
def test_match_counts_boundary_just_inside_and_outside():
    rng = np.random.default_rng(0)
    for name in particles.SCORED:
        r = particles.get(name).radius_A
        ref = np.array([[3000.0, 2000.0, 900.0]])
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        assert metric.match_counts(ref, ref + 0.49 * r * u, r) == (1, 0, 0)
        assert metric.match_counts(ref, ref + 0.51 * r * u, r) == (0, 1, 1)


def test_match_counts_distance_equal_to_half_radius_matches():
    # Kaggle's KDTree ball query is inclusive: distance == 0.5 * radius is a match.
    ref = np.array([[1000.0, 1000.0, 1000.0]])
    assert metric.match_counts(ref, ref + [30.0, 0, 0], 60.0) == (1, 0, 0)


def test_match_counts_empty_sides():
    pts = np.array([[1.0, 2.0, 3.0], [400.0, 2.0, 3.0]])
    assert metric.match_counts(np.empty((0, 3)), pts, 60.0) == (0, 2, 0)
    assert metric.match_counts(pts, [], 60.0) == (0, 0, 2)
    assert metric.match_counts([], [], 60.0) == (0, 0, 0)


def test_match_counts_one_candidate_covering_two_refs_gives_negative_fp():
    # Kaggle: tp counts distinct references, fp = n_cand - tp, not clipped.
    refs = np.array([[1000.0, 1000.0, 1000.0], [1100.0, 1000.0, 1000.0]])
    cand = np.array([[1050.0, 1000.0, 1000.0]])
    assert metric.match_counts(refs, cand, 150.0) == (2, -1, 0)


def test_match_counts_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        metric.match_counts(np.zeros((4, 2)), np.zeros((1, 3)), 60.0)


# ---------------------------------------------------------------- real picks
def test_truth_against_itself_is_one(truth):
    assert metric.score(truth, truth) == pytest.approx(1.0)
    table = metric.score_table(truth, truth)
    assert list(table.index) == list(particles.SCORED)
    scored = truth[truth["particle_type"].isin(particles.SCORED)]
    assert table["tp"].to_dict() == scored["particle_type"].value_counts().to_dict()
    assert (table[["fp", "fn"]] == 0).all().all()
    runs = metric.score_runs(truth, truth)
    assert sorted(runs.index) == sorted(truth["experiment"].unique())
    assert np.allclose(runs["score"], 1.0)


def test_empty_submission_scores_zero(truth):
    assert metric.score(truth, truth.iloc[:0]) == 0.0
    assert metric.score(truth, pd.DataFrame(columns=COLS)) == 0.0
    table = metric.score_table(truth, truth.iloc[:0])
    assert (table["tp"] == 0).all() and (table["fp"] == 0).all()
    assert (table["fn"] > 0).all()


def test_duplicate_beside_true_particle_is_a_false_positive(truth):
    apo = truth[truth["particle_type"] == "apo-ferritin"].iloc[:10]
    dup = apo.assign(x=apo["x"] + 5.0)
    sub = pd.concat([truth, dup], ignore_index=True)
    base, table = metric.score_table(truth, truth), metric.score_table(truth, sub)
    assert table.loc["apo-ferritin", "fp"] == base.loc["apo-ferritin", "fp"] + 10
    assert table.loc["apo-ferritin", "tp"] == base.loc["apo-ferritin", "tp"]
    assert table.loc["apo-ferritin", "f_beta"] < 1.0
    assert metric.score(truth, sub) < metric.score(truth, truth)


def test_rows_of_other_runs_are_ignored(truth):
    runs = sorted(truth["experiment"].unique())
    solution = truth[truth["experiment"].isin(runs[:2])]
    other = truth[~truth["experiment"].isin(runs[:2])]
    # other runs' rows (even an unknown type there) do not count as false positives
    stray = _frame([("TS_not_in_solution", "no-such-particle", 1.0, 2.0, 3.0)])
    sub = pd.concat([solution, other, stray], ignore_index=True)
    assert len(other) > 0
    assert metric.score(solution, sub) == pytest.approx(1.0)
    pd.testing.assert_frame_equal(metric.score_table(solution, sub), metric.score_table(solution, solution))


def test_row_order_does_not_matter(truth):
    rng = np.random.default_rng(3)
    sub = truth.sample(frac=0.6, random_state=1)
    sub = pd.concat([sub, sub.assign(y=sub["y"] + 200.0).iloc[:50]], ignore_index=True)
    expected = metric.score_table(truth, sub)
    shuffled_sub = sub.iloc[rng.permutation(len(sub))].reset_index(drop=True)
    shuffled_sol = truth.iloc[rng.permutation(len(truth))]
    pd.testing.assert_frame_equal(metric.score_table(shuffled_sol, shuffled_sub), expected)
    assert metric.score(shuffled_sol, shuffled_sub) == metric.score(truth, sub)


def test_beta_amylase_never_changes_the_score(truth):
    rng = np.random.default_rng(5)
    sub = truth.sample(frac=0.7, random_state=2)
    amylase = _frame(
        [("TS_5_4", "beta-amylase", *rng.uniform(0, 6000, 3)) for _ in range(40)]
    )
    without = sub[sub["particle_type"] != "beta-amylase"]
    expected = metric.score(truth, sub)
    assert metric.score(truth, pd.concat([sub, amylase], ignore_index=True)) == expected
    assert metric.score(truth, without) == expected
    assert metric.score(truth[truth["particle_type"] != "beta-amylase"], sub) == expected
    assert "beta-amylase" not in metric.score_table(truth, sub).index


# ---------------------------------------------------------------- hand-worked
def test_hand_worked_example():
    # apo-ferritin: match radius 30 A; ribosome: 75 A.
    solution = _frame(
        [
            ("A", "apo-ferritin", 1000, 1000, 1000),
            ("A", "apo-ferritin", 2000, 1000, 1000),
            ("A", "apo-ferritin", 3000, 1000, 1000),
            ("A", "ribosome", 3000, 3000, 1000),
            ("B", "apo-ferritin", 1000, 1000, 500),
        ]
    )
    submission = _frame(
        [
            ("A", "apo-ferritin", 1010, 1000, 1000),  # TP for ref 1
            ("A", "apo-ferritin", 1000, 1020, 1000),  # second hit on ref 1: FP
            ("A", "apo-ferritin", 5000, 5000, 500),  # far: FP
            ("A", "ribosome", 3000, 3070, 1000),  # 70 A <= 75 A: TP
            ("A", "thyroglobulin", 10, 10, 10),  # type absent from the solution: FP, F=0 anyway
            ("B", "apo-ferritin", 1000, 1000, 529),  # 29 A: TP
            ("B", "apo-ferritin", 4000, 4000, 100),  # far: FP
            ("B", "ribosome", 10, 10, 10),  # no ribosome in run B: FP
        ]
    )
    table = metric.score_table(solution, submission)
    assert table.loc["apo-ferritin", ["tp", "fp", "fn"]].tolist() == [2, 3, 2]
    assert table.loc["ribosome", ["tp", "fp", "fn"]].tolist() == [1, 1, 0]
    assert table.loc["thyroglobulin", ["tp", "fp", "fn"]].tolist() == [0, 1, 0]
    assert table.loc["apo-ferritin", "precision"] == pytest.approx(0.4)
    assert table.loc["apo-ferritin", "recall"] == pytest.approx(0.5)
    # F4 = 17 P R / (16 P + R): apo 17*0.2/6.9 = 3.4/6.9, ribosome 17*0.5/9 = 8.5/9
    assert table.loc["apo-ferritin", "f_beta"] == pytest.approx(0.4927536, abs=1e-6)
    assert table.loc["ribosome", "f_beta"] == pytest.approx(0.9444444, abs=1e-6)
    assert table.loc["thyroglobulin", "f_beta"] == 0.0
    # (1 * 0.4927536 + 1 * 0.9444444) / 7
    assert metric.score(solution, submission) == pytest.approx(0.2053140, abs=1e-6)
    assert table["tp"].dtype == np.int64 and table["weight"].tolist() == [1, 2, 1, 2, 1]
    # beta changes the weighting: F1 of apo-ferritin = 2*0.2/0.9
    f1 = metric.score_table(solution, submission, beta=1.0)
    assert f1.loc["apo-ferritin", "f_beta"] == pytest.approx(0.4444444, abs=1e-6)
    runs = metric.score_runs(solution, submission)
    assert runs.loc["B", "score"] == pytest.approx((17 * 0.5 * 1 / (16 * 0.5 + 1)) / 7)


def test_type_absent_from_solution_still_counts_in_the_denominator():
    # Kaggle divides by the sum of all weights (7), whatever types the solution holds.
    solution = _frame([("A", "apo-ferritin", 100, 100, 100)])
    assert metric.score(solution, solution) == pytest.approx(1 / 7)
    assert metric.score(solution.iloc[:0], solution) == 0.0


# ---------------------------------------------------------------- errors
def test_unknown_particle_type_is_an_error():
    solution = _frame([("A", "apo-ferritin", 100, 100, 100)])
    bad = _frame([("A", "apo-feritin", 100, 100, 100)])
    with pytest.raises(ValueError, match="apo-feritin"):
        metric.score(solution, bad)
    with pytest.raises(ValueError, match="apo-feritin"):
        metric.score_table(bad, solution)


def test_missing_columns_are_listed():
    solution = _frame([("A", "apo-ferritin", 100, 100, 100)])
    with pytest.raises(CziiInputError, match=r"^invalid submission, 1 problem\(s\): missing column\(s\) particle_type, z"):
        metric.score(solution, solution.drop(columns=["particle_type", "z"]))


def test_non_finite_coordinates_and_repeated_solution_points_are_errors():
    solution = _frame([("A", "apo-ferritin", 100, 100, 100), ("A", "ribosome", 500, 500, 500)])
    with pytest.raises(CziiInputError, match=r"^invalid submission, 1 problem\(s\): z: missing or infinite value in row 0$"):
        metric.score(solution, solution.assign(z=[np.nan, 1.0]))
    with pytest.raises(CziiInputError, match=r"invalid solution.*x: coordinate beyond"):
        metric.score(solution.assign(x=[1e300, 1.0]), solution)
    repeated = pd.concat([solution, solution.iloc[:1]], ignore_index=True)
    with pytest.raises(CziiInputError, match="repeats"):
        metric.score(repeated, solution)


# ---------------------------------------------------------------- brute force
def _brute_force(solution: pd.DataFrame, submission: pd.DataFrame, beta: float = 4.0):
    """Independent copy of the metric definition with full numpy distance matrices."""
    exps = set(solution["experiment"])
    submission = submission[submission["experiment"].isin(exps)]
    fbetas = {}
    for name in particles.SCORED:
        thr = 0.5 * particles.get(name).radius_A
        tp = fp = fn = 0
        for exp in exps:
            ref = solution[(solution.experiment == exp) & (solution.particle_type == name)][["x", "y", "z"]].to_numpy()
            cand = submission[(submission.experiment == exp) & (submission.particle_type == name)][["x", "y", "z"]].to_numpy()
            d = np.sqrt(((ref[:, None, :] - cand[None, :, :]) ** 2).sum(-1))
            hit = int((d <= thr).any(axis=1).sum()) if d.size else 0
            tp, fp, fn = tp + hit, fp + len(cand) - hit, fn + len(ref) - hit
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        fbetas[name] = (1 + beta**2) * p * r / (beta**2 * p + r) if p + r else 0.0
    return sum(particles.get(n).weight * f for n, f in fbetas.items()) / 7.0, fbetas


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_data(seed):
    rng = np.random.default_rng(seed)
    sol_rows, sub_rows = [], []
    for exp in ("r0", "r1", "r2"):
        for name in particles.NAMES:
            n = int(rng.integers(0, 25))
            ref = rng.uniform(0, 1500, (n, 3))
            sol_rows += [(exp, name, *p) for p in ref]
            r = particles.get(name).radius_A
            keep = ref[rng.random(n) < 0.7]
            # jitter of up to ~0.7 r: some in range, some just out
            cand = keep + rng.normal(0, 0.25 * r, keep.shape)
            cand = np.vstack([cand, cand[: len(cand) // 3] + rng.normal(0, 0.1 * r, (len(cand) // 3, 3))])
            cand = np.vstack([cand, rng.uniform(0, 1500, (int(rng.integers(0, 10)), 3))])
            sub_rows += [(exp, name, *p) for p in cand]
    sub_rows += [("not_in_solution", "ribosome", 1.0, 1.0, 1.0)]
    solution, submission = _frame(sol_rows), _frame(sub_rows)
    expected, fbetas = _brute_force(solution, submission)
    assert metric.score(solution, submission) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    table = metric.score_table(solution, submission)
    assert table["f_beta"].to_dict() == pytest.approx(fbetas)
    runs = metric.score_runs(solution, submission)
    for exp in ("r0", "r1", "r2"):
        one = solution[solution.experiment == exp]
        assert runs.loc[exp, "score"] == pytest.approx(_brute_force(one, submission)[0])


# ---------------------------------------------------------------- bootstrap_scores
def _noisy(truth: pd.DataFrame, seed: int, keep: float) -> pd.DataFrame:
    """The truth with some particles dropped, the rest jittered within range, and a few false picks."""
    rng = np.random.default_rng(seed)
    sub = truth[rng.random(len(truth)) < keep].copy()
    sub[["x", "y", "z"]] += rng.normal(0, 5.0, (len(sub), 3))
    false = truth.sample(n=len(truth) // 5, random_state=seed).copy()
    false[["x", "y", "z"]] += 400.0
    return pd.concat([sub, false], ignore_index=True)


def test_bootstrap_scores_each_resample_as_the_metric_scores_the_resampled_runs(truth):
    subs = {"good": _noisy(truth, 1, 0.9), "worse": _noisy(truth, 2, 0.6)}
    boot = metric.bootstrap_scores(truth, subs, n_boot=5, seed=3)
    assert list(boot.columns) == ["good", "worse"] and len(boot) == 5
    experiments = sorted(truth["experiment"].unique())
    draws = np.random.default_rng(3).integers(0, len(experiments), (5, len(experiments)))
    for i, row in enumerate(draws):  # the resample by hand: each drawn run a copy of its own name
        def resample(df):
            return pd.concat([df[df.experiment == experiments[r]].assign(experiment=f"{experiments[r]}#{k}")
                              for k, r in enumerate(row)], ignore_index=True)
        for name, sub in subs.items():
            assert boot.loc[i, name] == pytest.approx(metric.score(resample(truth), resample(sub)), abs=1e-12)
    assert boot.loc[0, "good"] != boot.loc[1, "good"] or boot.loc[1, "good"] != boot.loc[2, "good"]  # runs differ


def test_bootstrap_scores_are_paired_and_seeded(truth):
    sub = _noisy(truth, 4, 0.8)
    boot = metric.bootstrap_scores(truth, {"a": sub, "same": sub.copy(), "truth": truth}, n_boot=200, seed=0)
    assert (boot["a"] == boot["same"]).all()  # the same draws for every submission
    assert np.allclose(boot["truth"], 1.0)
    assert boot["a"].std() > 0
    assert boot.equals(metric.bootstrap_scores(truth, {"a": sub, "same": sub, "truth": truth}, n_boot=200, seed=0))
    one = truth[truth.experiment == truth.experiment.iloc[0]]
    single = metric.bootstrap_scores(one, {"a": sub}, n_boot=3)
    assert np.allclose(single["a"], metric.score(one, sub))  # one run: every resample is that run


def test_bootstrap_scores_refuses_an_empty_solution_or_no_resample(truth):
    with pytest.raises(ValueError, match="at least one experiment"):
        metric.bootstrap_scores(truth.iloc[:0], {"a": truth})
    with pytest.raises(ValueError, match="n_boot"):
        metric.bootstrap_scores(truth, {"a": truth}, n_boot=0)


# ---------------------------------------------------------------- candidate_audit
def _cands(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*COLS, "score"]).astype({"x": float, "y": float, "z": float, "score": float})


def test_candidate_audit_hand_worked():
    """Two apo-ferritin (radius 60 A, match 30 A) and one thyroglobulin (radius 130 A) in one run."""
    sol = _frame([("r", "apo-ferritin", 0, 0, 0), ("r", "apo-ferritin", 1000, 0, 0),
                  ("r", "thyroglobulin", 0, 1000, 0)])
    cands = _cands([
        ("r", "apo-ferritin", 10, 0, 0, 0.2),          # finds particle 0, ranked 5th
        ("r", "apo-ferritin", 1045, 0, 0, 0.1),        # 45 A off particle 1: within 2 radii only
        ("r", "apo-ferritin", 0, 1050, 0, 0.9),        # inside the thyroglobulin (50 A < 130 A)
        ("r", "apo-ferritin", 5000, 5000, 0, 0.8),     # on nothing
        ("r", "apo-ferritin", 6000, 5000, 0, 0.7),
        ("r", "apo-ferritin", 7000, 5000, 0, 0.6),
        ("r", "apo-ferritin", 8000, 5000, 0, 0.5),
        ("r", "ribosome", 1000, 20, 0, 0.3),           # another type's candidate on particle 1
        ("other-run", "apo-ferritin", 0, 0, 0, 1.0),   # a run the solution lacks: ignored
    ])
    table = metric.candidate_audit(sol, cands, top_factor=2.0).set_index("particle_type")
    assert list(table.reset_index().columns) == metric.AUDIT_COLUMNS
    apo = table.loc["apo-ferritin"]
    assert apo["particles"] == 2 and apo["top"] == 4  # ceil(2 * 2) best: 0.9, 0.8, 0.7, 0.6
    assert apo["found"] == 0.5 and apo["found_2r"] == 1.0 and apo["found_any_type"] == 1.0
    assert apo["offset_A"] == 27.5  # the median of 10 A and 45 A
    assert apo["other_higher"] == 0.5  # particle 1: the ribosome candidate 20 A off, its own 45 A off
    assert apo["in_top"] == 0.0  # the one that finds particle 0 is 5th
    assert (apo["top_on_self"], apo["top_on_other"], apo["top_on_nothing"]) == (0.0, 0.25, 0.75)
    thy = table.loc["thyroglobulin"]
    assert thy["particles"] == 1 and thy["found"] == 0.0 and thy["found_any_type"] == 1.0  # the apo one, 50 A < 65 A
    assert thy["other_higher"] == 1.0
    assert thy["top"] == 0 and np.isnan(thy["top_on_self"]) and np.isnan(thy["offset_A"])
    assert table.loc["ribosome", "particles"] == 0 and np.isnan(table.loc["ribosome", "found"])


def test_candidate_audit_of_the_truth_itself_finds_and_ranks_everything(truth):
    cands = truth.assign(score=1.0)
    table = metric.candidate_audit(truth, cands, top_factor=1.0)
    scored = table[table["particles"] > 0]
    assert len(scored) == 5
    assert (scored[["found", "found_2r", "found_any_type", "in_top", "top_on_self"]] == 1.0).all().all()
    assert (scored[["top_on_nothing", "offset_A", "other_higher"]] == 0.0).all().all()
    with pytest.raises(ValueError, match="top_factor"):
        metric.candidate_audit(truth, cands, top_factor=0)


def test_candidate_audit_a_particle_with_nothing_near_is_lost_not_taken_for_another():
    sol = _frame([("r", "ribosome", 0, 0, 0), ("r", "ribosome", 3000, 0, 0)])
    cands = _cands([("r", "ribosome", 3000, 0, 0, 0.5), ("r", "thyroglobulin", 3010, 0, 0, 0.9)])
    rib = metric.candidate_audit(sol, cands).set_index("particle_type").loc["ribosome"]
    assert (rib["found"], rib["other_higher"], rib["in_top"], rib["top"]) == (0.5, 0.5, 0.5, 1)
