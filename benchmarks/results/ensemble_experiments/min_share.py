"""Experiment (session 27): the shipped ensemble with no per-type minimum class share (min_share 0 for
beta-galactosidase, or for every type) against as shipped, on the cached candidates of the headline's sets
(bench_ensemble.py --cache runs/cache/s26bf --cache-yolo runs/cache/s26/yolo). Prints each set's score and
beta-galactosidase's, and the mean of the three held-out looks. .venv/bin/python benchmarks/results/ensemble_experiments/min_share.py
Result (2026-12-04 14:45): held-out looks 0.6647 shipped, 0.6679 / 0.6682 without (beta-galactosidase 0.411 -> 0.422);
classic test 0.9292 -> 0.9112 / 0.9101; training looks 0.8917 -> 0.8914 / 0.8919. Not a lever: nothing changed."""
import sys, glob, dataclasses, pandas as pd
from pathlib import Path
REPO = Path(__file__).resolve().parents[3]; sys.path.insert(0, str(REPO))
from czii_kaggle import metric, submission
from czii_kaggle.bundle import load_ensembles
from czii_kaggle.ensemble import select_ensemble
from czii_kaggle.predict import scored_only
ens=load_ensembles(str(REPO)+'/czii_kaggle/models')[0]
def variant(ms):
    agg=ens.aggregate
    params={n:(dataclasses.replace(p,min_share=ms.get(n,p.min_share))) for n,p in agg.params.items()} if hasattr(agg,'params') else None
    return dataclasses.replace(ens, aggregate=dataclasses.replace(agg, params=params))
sets={'classic-test':(str(REPO)+'/runs/hml/test_medium/test_solution.csv',)}
for look in ['model-subunits','filter-anisotropic','ctf-unflipped','training-looks']:
    sets[look]=(glob.glob(f'{REPO}/runs/bench_detection/{look}/medium/seed*_n8_184x630x630')[0]+'/test_solution.csv',)
V={'shipped':{}, 'bgal0':{'beta-galactosidase':0.0}, 'all0':{n:0.0 for n in ['apo-ferritin','beta-galactosidase','ribosome','thyroglobulin','virus-like-particle']}}
rows=[]
for s,(sol,) in sets.items():
    truth=submission.read_solution(sol)
    cands={}
    for det,root in [('yolo',str(REPO)+'/runs/cache/s26/yolo'),('heatmap',str(REPO)+'/runs/cache/s26bf/heatmap'),('heatmap_l0',str(REPO)+'/runs/cache/s26bf/heatmap_l0')]:
        cands[det]=pd.concat([pd.read_csv(f) for f in glob.glob(f'{root}/{s}/*.csv')],ignore_index=True)
    for v,ms in V.items():
        picked=select_ensemble(cands, variant(ms))
        t=metric.score_table(truth, submission.make_submission(scored_only(picked)))
        rows.append(dict(set=s,variant=v,score=metric.score(truth, submission.make_submission(scored_only(picked))), bgal=t.loc['beta-galactosidase','f_beta'] if 'beta-galactosidase' in t.index else None))
df=pd.DataFrame(rows); print(df.round(4).to_string())
print(df[df.set.isin(['model-subunits','filter-anisotropic','ctf-unflipped'])].groupby('variant')[['score','bgal']].mean().round(4))
