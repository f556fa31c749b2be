"""Per-class threshold tuning (czii_kaggle.tune)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from czii_kaggle import metric, particles
from czii_kaggle.aggregate import CANDIDATE_COLUMNS, AggregateConfig, select
from czii_kaggle.errors import CziiInputError
from czii_kaggle.tune import TABLE_COLUMNS, sweep_counts, tune_thresholds

RUNS = ("TS_a", "TS_b", "TS_c")


def make_case(seed=0, n_per_type=30, n_fp=40, fp_support=(1, 8), fp_scores=(0.0, 0.35)):
    """Picks of every type in three runs and candidates: 90 % of picks found (score 0.3..0.9), some FPs.

    FPs lie far from every pick with scores in ``fp_scores`` and ``fp_support`` slices.
    """
    rng = np.random.default_rng(seed)
    sol, cand = [], []
    for run in RUNS:
        for p in particles.PARTICLES:
            xyz = np.column_stack([rng.uniform(0, 6000, n_per_type), rng.uniform(0, 6000, n_per_type),
                                   rng.uniform(0, 1800, n_per_type)])  # fmt: skip
            sol.append(pd.DataFrame({"experiment": run, "particle_type": p.name,
                                     "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2]}))  # fmt: skip
            found = rng.random(n_per_type) < 0.9
            off = rng.normal(0, 0.1 * p.radius_A, (found.sum(), 3))
            cand.append(pd.DataFrame({"experiment": run, "particle_type": p.name,
                                      "x": xyz[found, 0] + off[:, 0], "y": xyz[found, 1] + off[:, 1],
                                      "z": xyz[found, 2] + off[:, 2], "score": rng.uniform(0.3, 0.9, found.sum()),
                                      "n_slices": rng.integers(4, 15, found.sum())}))  # fmt: skip
            cand.append(pd.DataFrame({"experiment": run, "particle_type": p.name,
                                      "x": rng.uniform(7000, 9000, n_fp), "y": rng.uniform(0, 6000, n_fp),
                                      "z": rng.uniform(0, 1800, n_fp), "score": rng.uniform(*fp_scores, n_fp),
                                      "n_slices": rng.integers(*fp_support, n_fp)}))  # fmt: skip
    cand = pd.concat(cand, ignore_index=True).assign(share=1.0)  # no rival class anywhere
    return pd.concat(sol, ignore_index=True), cand[list(CANDIDATE_COLUMNS)]


def test_sweep_counts_match_the_metric():
    sol, cand = make_case(seed=1)
    name = "thyroglobulin"
    refs, cs = sol[sol["particle_type"] == name], cand[cand["particle_type"] == name]
    thresholds = np.array([0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
    sweep = sweep_counts(refs, cs, particles.get(name).radius_A, thresholds)
    for t, row in zip(thresholds, sweep.itertuples()):
        table = metric.score_table(sol, cand[cand["score"] >= t])
        assert (row.tp, row.fp, row.fn) == tuple(table.loc[name, ["tp", "fp", "fn"]])
        assert row.f_beta == pytest.approx(table.loc[name, "f_beta"])


def test_tuning_beats_a_bad_default_and_reports_the_metric():
    sol, cand = make_case(seed=2)
    bad = AggregateConfig({n: AggregateConfig()[n].__class__(conf_threshold=0.85, min_support=1) for n in particles.NAMES})
    tuned, table = tune_thresholds(cand, sol, bad)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert set(table["particle_type"]) == set(particles.NAMES)
    assert (table["f_beta"] > table["default_f_beta"]).all()
    # the table's F-beta is what the metric gives for select(candidates, tuned config)
    scored = metric.score_table(sol, select(cand, tuned)).loc[list(particles.SCORED), "f_beta"]
    np.testing.assert_allclose(table.set_index("particle_type").loc[list(particles.SCORED), "f_beta"], scored)
    assert metric.score(sol, select(cand, tuned)) > metric.score(sol, select(cand, bad))
    # the FPs score <= 0.35 and true ones >= 0.3: the chosen thresholds lie in between
    assert all(0.0 < tuned[n].conf_threshold <= 0.36 for n in particles.NAMES)


def test_min_support_is_tuned_when_fps_are_thin():
    sol, cand = make_case(seed=3, fp_support=(1, 3))
    cand.loc[cand["n_slices"] < 3, "score"] = 0.6  # thin FPs with high scores: only support removes them
    tuned, table = tune_thresholds(cand, sol, AggregateConfig(), support_grid=(1, 2, 3, 4))
    assert all(tuned[n].min_support == 3 for n in particles.NAMES)
    assert (table["precision"] == 1.0).all()
    fixed, _ = tune_thresholds(cand, sol, AggregateConfig(), support_grid=None)
    assert all(fixed[n].min_support == AggregateConfig()[n].min_support for n in particles.NAMES)


@pytest.mark.parametrize("fp_scores", [(0.0, 0.35), (0.0, 0.25)])
def test_tuning_never_scores_below_the_default(fp_scores):
    sol, cand = make_case(seed=4, fp_scores=fp_scores)
    # FPs <= 0.25 and true ones >= 0.3: a threshold of 0.28 is already the best there is
    start = AggregateConfig({n: AggregateConfig()[n].__class__(conf_threshold=0.28, min_support=1)
                             for n in particles.NAMES})  # fmt: skip
    tuned, table = tune_thresholds(cand, sol, start)
    assert (table["f_beta"] >= table["default_f_beta"]).all()
    kept = table["f_beta"] == table["default_f_beta"]
    for name in table.loc[kept, "particle_type"]:
        assert tuned[name] == start[name]
    if fp_scores[1] < 0.28:
        assert kept.all()
    assert metric.score(sol, select(cand, tuned)) >= metric.score(sol, select(cand, start))


def test_types_absent_from_the_solution_keep_their_params():
    sol, cand = make_case(seed=5)
    sol = sol[sol["particle_type"] != "ribosome"]
    cfg = AggregateConfig().with_params("ribosome", conf_threshold=0.77)
    tuned, table = tune_thresholds(cand, sol, cfg)
    assert tuned["ribosome"] == cfg["ribosome"]
    assert "ribosome" not in set(table["particle_type"])


def test_candidates_of_other_runs_are_ignored():
    sol, cand = make_case(seed=6)
    noise = cand[cand["experiment"] == "TS_a"].assign(experiment="TS_other", score=0.99)
    a, ta = tune_thresholds(cand, sol)
    b, tb = tune_thresholds(pd.concat([cand, noise]), sol)
    assert a == b
    pd.testing.assert_frame_equal(ta, tb)


def test_bad_frames_raise_input_error():
    sol, cand = make_case(seed=7, n_per_type=3, n_fp=2)
    with pytest.raises(CziiInputError, match="score"):
        tune_thresholds(cand.drop(columns="score"), sol)
    with pytest.raises(CziiInputError, match="solution"):
        tune_thresholds(cand, sol.drop(columns="z"))


def test_min_share_is_tuned_when_fps_sit_on_another_class():
    """Beta-galactosidase FPs on thyroglobulin particles (share < 0.3) and true ones alone (share 1)."""
    sol, cand = make_case(seed=8, n_fp=0)
    bg, thy = "beta-galactosidase", "thyroglobulin"
    on_thy = cand[cand["particle_type"] == thy].assign(particle_type=bg, share=0.2, score=0.8)
    cand = pd.concat([cand, on_thy], ignore_index=True)
    tuned, table = tune_thresholds(cand, sol, AggregateConfig())
    assert 0.2 < tuned[bg].min_share <= 1.0
    row = table.set_index("particle_type").loc[bg]
    assert row["min_share"] == tuned[bg].min_share and row["precision"] == 1.0
    assert all(tuned[n].min_share == 0.0 for n in particles.NAMES if n != bg)  # nothing to gain there
    assert metric.score(sol, select(cand, tuned)) > metric.score(sol, select(cand, tuned.with_params(bg, min_share=0.0)))
    fixed, _ = tune_thresholds(cand, sol, AggregateConfig(), share_grid=None)
    assert fixed[bg].min_share == 0.0


def test_the_floor_is_carried_but_not_counted_while_tuning():
    """Thresholds are tuned as without a floor (min_keep); the floor is kept in the config and
    select adds its candidates on top."""
    sol, cand = make_case(seed=10, n_fp=60, fp_scores=(0.0, 0.6))
    start = AggregateConfig({n: AggregateConfig()[n].__class__(min_support=1, conf_threshold=0.95)
                             for n in particles.NAMES})  # fmt: skip
    plain, plain_table = tune_thresholds(cand, sol, start)
    floored, table = tune_thresholds(cand, sol, start.with_floor({n: 20 for n in particles.NAMES}))
    assert all(floored[n].min_keep == 20 for n in particles.NAMES)
    assert all(floored[n].conf_threshold == plain[n].conf_threshold for n in particles.NAMES)
    pd.testing.assert_frame_equal(table, plain_table)
    # a threshold above most true ones: the floor's 20 per run are most of the TPs
    high = AggregateConfig({n: replace(floored[n], conf_threshold=0.95) for n in particles.NAMES})
    with_floor = metric.score_table(sol, select(cand, high)).loc[list(particles.SCORED), "tp"]
    without = metric.score_table(sol, select(cand, high.with_floor({n: 0 for n in particles.NAMES})))
    assert (with_floor > 40).all() and (without.loc[list(particles.SCORED), "tp"] < 30).all()


def test_relative_scores_carry_thresholds_to_a_run_whose_scores_all_drop():
    """Tuned on two runs, applied to a third whose every score is 0.3 times lower (a look the model
    never saw): absolute thresholds lose its particles, thresholds on relative scores keep them; the
    tuning table is what the metric gives for ``select`` with the tuned (relative) config."""
    sol, cand = make_case(seed=5)
    fit = cand["experiment"] != "TS_c"
    low = cand[~fit].assign(score=cand.loc[~fit, "score"] * 0.3)
    sol_fit, sol_c = sol[sol["experiment"] != "TS_c"], sol[sol["experiment"] == "TS_c"]
    start = AggregateConfig({n: replace(AggregateConfig()[n], min_support=1) for n in particles.NAMES})
    absolute, _ = tune_thresholds(cand[fit], sol_fit, start)
    relative, table = tune_thresholds(cand[fit], sol_fit, start.with_ref_rank({n: 25 for n in particles.NAMES}))
    assert all(relative[n].ref_rank == 25 for n in particles.NAMES)
    scored = metric.score_table(sol_fit, select(cand[fit], relative)).loc[list(particles.SCORED), "f_beta"]
    np.testing.assert_allclose(table.set_index("particle_type").loc[list(particles.SCORED), "f_beta"], scored)
    on_c = {name: metric.score(sol_c, select(low, cfg)) for name, cfg in (("absolute", absolute), ("relative", relative))}
    assert on_c["relative"] > 0.8 > on_c["absolute"]
    assert metric.score(sol_c, select(cand[~fit], relative)) == pytest.approx(on_c["relative"])  # scale-free
