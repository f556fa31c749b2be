"""Experiment (session 23): the heatmap network's maps averaged over input scales (test-time zoom), scored with its
own thresholds, against one scale, on given sets. .venv/bin/python benchmarks/results/ensemble_experiments/scale_tta.py SCALES... -- ROOT:SOLUTION..."""
import sys, glob, time
from pathlib import Path
import numpy as np, pandas as pd
from scipy.ndimage import zoom
REPO = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(REPO))
from czii_kaggle import layout, metric, submission, picks
from czii_kaggle.bundle import load_detectors
from czii_kaggle.detectors.heatmap import read_input, heatmap_candidates
from czii_kaggle.predict import scored_only
i = sys.argv.index('--')
scales = [float(s) for s in sys.argv[1:i]]
det = load_detectors(REPO / 'czii_kaggle/models', ['heatmap'])[0]
cfg = det.bundle.config
cache = REPO / 'runs/scale_cache'
rows = []
for spec in sys.argv[i + 1:]:
    root, sol = spec.split(':')
    root = Path(root)
    split = 'test' if sol != 'train' else 'train'
    runs = layout.list_runs(root, split)
    truth = submission.read_solution(sol) if sol != 'train' else picks.read_all_picks(root, layout.list_pick_runs(root))
    cands = {k: [] for k in ['1'] + [f'1+{s}' for s in scales] + ['all']}
    for run in runs:
        zarr = layout.tomogram_path(root, split, run)
        f = cache / f'{root.parent.name}_{run}.npz'
        if f.exists():
            maps = dict(np.load(f))
        else:
            t = time.time()
            volume, vs = read_input(zarr, cfg)
            maps = {'1': det.probabilities(volume, zarr)[0]}
            for s in scales:
                z = zoom(volume, s, order=1).astype(np.float32)
                need = max(cfg.window_vox[0] - z.shape[0], 0)  # zoomed out below one window deep: pad in z, crop after
                lo = need // 2
                zp = np.pad(z, ((lo, need - lo), (0, 0), (0, 0)), mode='reflect') if need else z
                p = det.probabilities(zp, zarr)[0]
                if need:
                    r = p.shape[1] / zp.shape[0]
                    p = p[:, int(round(lo * r)):int(round((lo + z.shape[0]) * r))]
                maps[str(s)] = zoom(p, [1] + [a / b for a, b in zip(maps['1'].shape[1:], p.shape[1:])], order=1)
            maps['vs'] = np.array(vs)
            cache.mkdir(exist_ok=True, parents=True)
            np.savez(f, **maps)
            print(run, f'{time.time() - t:.1f} s', flush=True)
        vs = float(maps['vs'])
        cands['1'].append(heatmap_candidates(maps['1'], vs, run, cfg))
        for s in scales:
            cands[f'1+{s}'].append(heatmap_candidates((maps['1'] + maps[str(s)]) / 2, vs, run, cfg))
        cands['all'].append(heatmap_candidates(np.mean([maps['1']] + [maps[str(s)] for s in scales], axis=0), vs, run, cfg))
    for k, v in cands.items():
        sub = submission.make_submission(scored_only(det.select(pd.concat(v, ignore_index=True))))
        t = metric.score_table(truth, sub)
        rows.append({'set': root.parent.name, 'maps': k, 'score': metric.score(truth, sub), **t['f_beta'].to_dict()})
    print(pd.DataFrame(rows[-len(cands):]).round(3).to_string(), flush=True)
df = pd.DataFrame(rows)
print(df.groupby('maps', sort=False).mean(numeric_only=True).round(3).to_string())
