"""Diagnostic (session 23): does a detector's agreement with the others on a run predict its precision there?"""
import sys
from pathlib import Path
import numpy as np, pandas as pd
from scipy.spatial import cKDTree
REPO = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / 'benchmarks'))
from czii_kaggle import picks, layout, submission
from czii_kaggle.particles import PARTICLES, NAMES, MATCH_RADIUS_FRACTION
from czii_kaggle.recipe import load_recipe
C = REPO / 'runs/cache/sel'
TAGS = {'yolo': 'yolo-e2f4e3821db0', 'hn': 'heatmap-0813628a075c-bn0.5-whiten_zxy', 'l0': 'heatmap-b7820a0ad0d5-bn0.5-whiten_zxy-v1'}
VAL = ['runs/hml/val', 'runs/hml/val_classic', 'runs/hml/val2', 'runs/hml/val2_classic']
LOOKS = ['runs/hml/val_diffusion', 'runs/hml/val_lobes', 'runs/fresh/val_diffusion', 'runs/fresh/val_lobes', 'runs/hml/val_wiener', 'runs/fresh/val_wiener']
K = load_recipe().tuning.min_keep(None)
SCORED = ['apo-ferritin', 'beta-galactosidase', 'ribosome', 'thyroglobulin', 'virus-like-particle']
def sets():
    for i, r in enumerate(VAL):
        root = REPO / r / 'czii-cryo-et-object-identification'
        yield 'train-look val', f'val{i}', picks.read_all_picks(root, layout.list_pick_runs(root))
    for i, r in enumerate(LOOKS):
        root = REPO / r / 'czii-cryo-et-object-identification'
        yield 'unseen val', f'vallooks{i}', picks.read_all_picks(root, layout.list_pick_runs(root))
    import glob
    for name in ['model-subunits', 'filter-anisotropic', 'ctf-unflipped', 'training-looks', 'classic-test']:
        if name == 'classic-test':
            sol = REPO / 'runs/hml/test_medium/test_solution.csv'
        else:
            sol = sorted(glob.glob(str(REPO / f'runs/bench_detection/{name}/medium/seed*_n[48]_*/test_solution.csv')))[0]
        truth = submission.read_solution(sol)
        truth = truth[truth['experiment'].astype(str).str.rsplit('_', n=1).str[1].astype(int) < 4]  # the first 4 runs, as measured
        yield ('held-out test' if name not in ('training-looks', 'classic-test') else 'train-look test'), name, truth


def main():
    rows = []
    for group, s, truth in sets():
        for run in sorted(truth['experiment'].astype(str).unique()):
            files = {d: sorted((C / t).glob(f'*/{run}.csv')) for d, t in TAGS.items()}
            if not all(files.values()):
                print('missing', s, run, {d: len(v) for d, v in files.items()}); continue
            cands = {d: pd.read_csv(v[0]) for d, v in files.items()}
            tr = truth[truth['experiment'].astype(str) == run]
            for cls in SCORED:
                p = PARTICLES[NAMES.index(cls)]; reach = p.radius_A * MATCH_RADIUS_FRACTION
                tops = {}
                for d, c in cands.items():
                    c = c[c['particle_type'] == cls].sort_values('score', ascending=False).head(K[cls])
                    tops[d] = c[['x', 'y', 'z']].to_numpy(float)
                tt = tr[tr['particle_type'] == cls][['x', 'y', 'z']].to_numpy(float)
                for d, pts in tops.items():
                    if len(pts) == 0: continue
                    prec = np.isfinite(cKDTree(tt).query(pts, distance_upper_bound=reach)[0]).mean() if len(tt) else 0.0
                    others = np.concatenate([tops[o] for o in tops if o != d and len(tops[o])])
                    agree = np.isfinite(cKDTree(others).query(pts, distance_upper_bound=reach)[0]).mean()
                    rows.append(dict(group=group, set=s, run=run, cls=cls, det=d, prec=prec, agree=agree))
    df = pd.DataFrame(rows)
    df.to_csv(REPO / 'runs/agree_diag.csv', index=False)
    pd.set_option('display.width', 200)
    print(df.groupby(['group', 'det'])[['prec', 'agree']].mean().round(3))
    print(df[df.cls.isin(['beta-galactosidase','thyroglobulin'])].groupby(['group', 'cls', 'det'])[['prec', 'agree']].mean().round(3))
    for g, d in df.groupby('det'):
        print(g, 'corr(prec, agree) over run x class:', round(np.corrcoef(d.prec, d.agree)[0, 1], 3))


if __name__ == '__main__':
    main()
