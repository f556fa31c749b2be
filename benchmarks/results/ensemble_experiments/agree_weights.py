"""Experiment (session 23): the ensemble's detector weights set per run and class by each detector's agreement with
the others there (unsupervised, at test time): w_d = base_w_d * agree_d ** GAMMA, normalised, where agree_d is the share
of detector d's top-K merged groups (K: the recipe's count floor of the class) where another detector is in its own
top-K too. GAMMA 0 is the shipped rule. Run through bench_selection with ensemble.combine (and tune's) replaced.
    bash benchmarks/results/ensemble_experiments/agree_sweep.sh GAMMA...  (or agree_weights.py GAMMA <bench_selection arguments>)"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import bench_selection  # noqa: E402
from czii_kaggle import ensemble, tune  # noqa: E402
from czii_kaggle.recipe import load_recipe  # noqa: E402
from czii_kaggle.particles import NAMES  # noqa: E402

GAMMA = float(sys.argv[1])
K = load_recipe().tuning.min_keep(None)
K_ARR = np.array([max(int(K.get(n, 0)), 1) for n in NAMES])
original = ensemble.combine


def agreement_weights(best: np.ndarray, lab_group: np.ndarray, class_w: np.ndarray) -> np.ndarray:
    """(groups, detectors) weights: class_w scaled per (run, class) by each detector's agreement ** GAMMA."""
    n_lab, n_det = best.shape
    in_top = np.zeros_like(best, dtype=bool)
    order = np.argsort(lab_group, kind="stable")
    bounds = np.flatnonzero(np.diff(lab_group[order])) + 1
    out = class_w.copy()
    for idx in np.split(order, bounds):
        k = K_ARR[lab_group[idx[0]] % len(NAMES)]
        for d in range(n_det):
            col = best[idx, d]
            top = idx[np.argsort(-col, kind="stable")[:k]]
            top = top[best[top, d] > 0]
            in_top[top, d] = True
        agree = np.ones(n_det)
        for d in range(n_det):
            mine = in_top[idx, d]
            if mine.any():
                others = np.delete(in_top[idx], d, axis=1).any(axis=1)
                agree[d] = max(others[mine].mean(), 1e-3)
        w = class_w[idx] * agree ** GAMMA
        out[idx] = w / w.sum(axis=1, keepdims=True)
    return out


def combine_agree(candidates, config):
    # czii_kaggle.ensemble.combine as of commit 88f1c69, with the per-class weights replaced by agreement_weights
    # (a frozen copy on purpose: the experiment's rule must not follow later changes of the shipped merge)
    if GAMMA == 0 or len(config.detectors) < 2:
        return original(candidates, config)
    src = ensemble
    missing = [d for d in config.detectors if d not in candidates]
    if missing:
        raise ValueError(f"no candidates of detectors {missing}")
    parts, relative = [], config.relative()
    for k, det in enumerate(config.detectors):
        c = src.frames.validate(candidates[det], src.frames.CANDIDATES, what=f"candidates of detector {det}")
        if len(c):
            parts.append(pd.DataFrame({"experiment": c["experiment"].astype(str).to_numpy(),
                                       "particle_type": c["particle_type"].to_numpy(),
                                       "x": c["x"].to_numpy(float), "y": c["y"].to_numpy(float),
                                       "z": c["z"].to_numpy(float),
                                       "p": src.calibrate(src.relative_scores(c, relative), config.calibration.get(det, {})),
                                       "det": k}))
    if not parts:
        return src.empty_candidates()
    df = pd.concat(parts, ignore_index=True)
    exp_codes, exp_names = pd.factorize(df["experiment"], sort=True)
    cls = pd.Categorical(df["particle_type"], categories=list(NAMES)).codes.astype(np.int64)
    group = exp_codes.astype(np.int64) * len(NAMES) + cls
    reach = (np.array([p.radius_A for p in src.PARTICLES]) * src.MATCH_RADIUS_FRACTION)[cls]
    x, y, z, p, det = (df[c].to_numpy() for c in ("x", "y", "z", "p", "det"))
    pts = src._scaled_points(x, y, z, group, reach, reach)
    indptr, nbr, _ = src._neighbour_lists(pts)
    label, _ = src._greedy_seeds(np.argsort(-p, kind="stable"), indptr, nbr)
    n_det, n_lab = len(config.detectors), int(label.max()) + 1
    best = np.zeros((n_lab, n_det))
    np.maximum.at(best, (label, det), p)
    is_best = p == best[label, det]
    w = np.where(is_best, p, 0.0)
    wsum = np.bincount(label, weights=w, minlength=n_lab)
    safe = np.where(wsum > 0, wsum, 1.0)
    cx, cy, cz = (np.bincount(label, weights=w * v, minlength=n_lab) / safe for v in (x, y, z))
    lab_group = np.zeros(n_lab, dtype=np.int64)
    lab_group[label] = group
    lab_cls, lab_exp = lab_group % len(NAMES), lab_group // len(NAMES)
    class_w = np.stack([config.class_weights(n) for n in NAMES])[lab_cls]
    class_w = agreement_weights(best, lab_group, class_w)
    assert config.fusion == "logit"
    score = 1.0 / (1.0 + np.exp(-(src._logit(best) * class_w).sum(axis=1)))
    out = pd.DataFrame({
        "experiment": np.asarray(exp_names, dtype=object)[lab_exp],
        "particle_type": np.asarray(NAMES, dtype=object)[lab_cls],
        "x": cx, "y": cy, "z": cz, "score": score,
        "n_slices": (best > 0).sum(axis=1).astype(np.int64),
        "share": src.class_share(np.column_stack([cx, cy, cz]), lab_exp, lab_cls, score),
    })
    out = out.sort_values(["experiment", "particle_type", "score"], ascending=[True, True, False], kind="stable")
    return out.reset_index(drop=True)


ensemble.combine = combine_agree
tune.combine = combine_agree
print(f"agreement weights, gamma {GAMMA}", flush=True)
sys.exit(bench_selection.main(sys.argv[2:]))
