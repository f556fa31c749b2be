"""Diagnostic (session 23): would cross-class context re-rank the ensemble's candidates? Per class, a logistic fit on the
9 validation runs' merged candidates: own logit score, n detectors, and each other type's best merged logit score
within this type's radius; ranking quality (mean over runs of precision of the best K, K the floor) before/after."""
import sys, glob
from pathlib import Path
import numpy as np, pandas as pd
from scipy.spatial import cKDTree
sys.path.insert(0, str(Path(__file__).resolve().parent))
from agree_diag import C, K, MATCH_RADIUS_FRACTION, NAMES, PARTICLES, REPO, SCORED, TAGS, sets  # noqa: E402
from czii_kaggle.bundle import load_ensemble
from czii_kaggle.ensemble import combine, is_true_positive, fit_logistic, _logit
from czii_kaggle.aggregate import EXPERIMENT_GAP_A
cfg = load_ensemble(REPO / 'czii_kaggle/models')
DT = {'yolo': TAGS['yolo'], 'heatmap': TAGS['hn'], 'heatmap_l0': TAGS['l0']}
data = {}
for group, s, truth in sets():
    runs = sorted(truth['experiment'].astype(str).unique())
    c = {d: pd.concat([pd.read_csv(sorted((C / t).glob(f'*/{r}.csv'))[0]).assign(experiment=f'{s}/{r}') for r in runs], ignore_index=True) for d, t in DT.items()}
    m = combine(c, cfg)
    tr = truth.assign(experiment=f'{s}/' + truth['experiment'].astype(str))
    m['tp'] = is_true_positive(m, tr)
    data.setdefault(group, []).append(m)
data = {g: pd.concat(v, ignore_index=True) for g, v in data.items()}
def features(m):
    exp = pd.factorize(m['experiment'])[0] * EXPERIMENT_GAP_A
    X = {'own': _logit(m['score'].to_numpy()), 'n': m['n_slices'].to_numpy(float)}
    pts = np.column_stack([m[['x','y','z']].to_numpy(float), exp])
    for o in NAMES:
        om = (m['particle_type'] == o).to_numpy()
        tree = cKDTree(pts[om]); so = _logit(m.loc[om, 'score'].to_numpy())
        f = np.full(len(m), -9.2)
        r = np.array([PARTICLES[NAMES.index(c)].radius_A for c in m['particle_type']])
        for rad in np.unique(r):
            sel = np.flatnonzero(r == rad)
            nb = tree.query_ball_point(pts[sel], rad)
            f[sel] = [so[j].max() if len(j) else -9.2 for j in nb]
        X[o] = f
    return pd.DataFrame(X)
feats = {g: features(m) for g, m in data.items()}
def topk_prec(m, score, cls):
    out = []
    for e, d in m[m.particle_type == cls].assign(s=score[(m.particle_type == cls).to_numpy()]).groupby('experiment'):
        out.append(d.sort_values('s', ascending=False).head(K[cls])['tp'].mean())
    return np.mean(out)
def fit(X, y, l2=1e-2):
    # plain Newton logistic on several features
    Xb = np.column_stack([X, np.ones(len(X))]); w = np.zeros(Xb.shape[1])
    from scipy.special import expit
    for _ in range(50):
        p = expit(Xb @ w); g = Xb.T @ (p - y) + l2 * len(y) * np.r_[w[:-1], 0]
        H = (Xb * (p * (1 - p))[:, None]).T @ Xb + l2 * len(y) * np.diag(np.r_[np.ones(len(w) - 1), 1e-9])
        w -= np.linalg.solve(H, g)
    return w
for cls in SCORED:
    m0, X0 = data['train-look val'], feats['train-look val']
    rank = m0.groupby(['experiment', 'particle_type'])['score'].rank(ascending=False, method='first')
    sel = ((m0.particle_type == cls) & (rank <= 4 * K[cls])).to_numpy()
    cols = ['own', 'n'] + [o for o in NAMES if o != cls]
    w = fit(X0.loc[sel, cols].to_numpy(), m0.loc[sel, 'tp'].to_numpy(float))
    line = [cls[:8], 'w=' + ' '.join(f'{c[:4]}:{v:+.2f}' for c, v in zip(cols, w))]
    for g in ['train-look val', 'unseen val', 'held-out test', 'train-look test']:
        m, X = data[g], feats[g]
        base = m['score'].to_numpy()
        new = np.column_stack([X[cols].to_numpy(), np.ones(len(X))]) @ w
        line.append(f'{g}: {topk_prec(m, base, cls):.3f}->{topk_prec(m, new, cls):.3f}')
    print(' | '.join(line), flush=True)
