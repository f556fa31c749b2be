"""Diagnostic (session 23): where do the top bgal candidates that are wrong sit?"""
import sys
from pathlib import Path
import numpy as np, pandas as pd
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agree_diag import C, K, MATCH_RADIUS_FRACTION, NAMES, PARTICLES, REPO, SCORED, TAGS, sets  # noqa: E402
out = []
for group, s, truth in sets():
    for run in sorted(truth['experiment'].astype(str).unique()):
        f = sorted((C / TAGS['hn']).glob(f'*/{run}.csv'))
        if not f: continue
        c = pd.read_csv(f[0]); tr = truth[truth['experiment'].astype(str) == run]
        for cls in ['beta-galactosidase', 'thyroglobulin']:
            top = c[c.particle_type == cls].sort_values('score', ascending=False).head(K[cls])
            pts = top[['x','y','z']].to_numpy(float)
            reach = PARTICLES[NAMES.index(cls)].radius_A * MATCH_RADIUS_FRACTION
            own = tr[tr.particle_type == cls][['x','y','z']].to_numpy(float)
            tp = np.isfinite(cKDTree(own).query(pts, distance_upper_bound=reach)[0]) if len(own) else np.zeros(len(pts), bool)
            near = {}
            for o in SCORED + ['beta-amylase']:
                if o == cls: continue
                op = tr[tr.particle_type == o][['x','y','z']].to_numpy(float)
                if len(op) == 0: near[o] = np.zeros(len(pts), bool); continue
                r = max(reach, 0.5 * PARTICLES[NAMES.index(o)].radius_A)
                near[o] = np.isfinite(cKDTree(op).query(pts, distance_upper_bound=r)[0])
            anyo = np.any(list(near.values()), axis=0)
            # near own but outside match radius
            own_near = np.isfinite(cKDTree(own).query(pts, distance_upper_bound=2*reach)[0]) if len(own) else np.zeros(len(pts), bool)
            out.append(dict(group=group, cls=cls, n=len(pts), tp=tp.sum(), own_offset=(own_near & ~tp).sum(),
                            on_other=(anyo & ~tp & ~own_near).sum(), background=(~anyo & ~tp & ~own_near).sum(),
                            **{f'on_{o[:6]}': (near[o] & ~tp).sum() for o in near}))
df = pd.DataFrame(out)
pd.set_option('display.width', 250)
pd.set_option("display.max_columns", 30)
print(df.groupby(['group', 'cls']).sum(numeric_only=True))
