"""What labelled runs of an unseen look buy without training: the fine-tuning's fit on them.

Kaggle gives 7 labelled runs of its real look. The fine-tuning (``notebooks/train.ipynb``,
:mod:`czii_kaggle.finetune`) trains YOLO and the heatmap networks on them on a GPU; its last
step, :func:`czii_kaggle.finetune.fit_heatmap_ensemble`, refits every detector's thresholds and
every ensemble on those runs, scores each leaving one run out and picks the default detectors by
those scores. That step needs no GPU. This bench plays it on each held-out look
(``--domains``): ``--runs`` labelled runs of the look simulated apart (seed ``--refit-seed`` +
1000 per domain index, train split), the start bundle's detectors as they are (no training:
its YOLO candidates stand in for the folds' out-of-fold ones, ``heatmap_steps`` 0), the fit;
then every option is scored on the look's test runs (``bench_ensemble.py``'s sets, seeds and
folders) twice: with the bundle's own thresholds and ensembles (shipped) and with those fitted
on the look's labelled runs (refit), beside the leave-one-run-out score the fit chose by.

    .venv/bin/python benchmarks/bench_refit.py --weights czii_kaggle/models \\
        --domains model-subunits filter-anisotropic ctf-unflipped --n-runs 4 --runs 7 \\
        --cache-yolo runs/cache/sel/yolo-e2f4e3821db0 --cache runs/s21/bench_cache

Test-run candidates are kept as ``bench_ensemble.py`` keeps them (``--cache-yolo``, ``--cache``);
the labelled runs under ``--work``. Appends the table, with the command, date and machine, to
``benchmarks/results/refit.md``. All simulated: no real voxels.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import append_result, describe as describe_machine  # noqa: E402
sys.path.insert(0, str(REPO))

from bench_adapt import score_submission, simulate_labelled  # noqa: E402
from bench_detection import DOMAINS, TRAINING_DOMAINS  # noqa: E402
from bench_ensemble import add_test_set_args, fmt, lead, submission_of, test_sets  # noqa: E402
from czii_kaggle import finetune, layout, metric  # noqa: E402
from czii_kaggle.aggregate import select  # noqa: E402
from czii_kaggle.bundle import default_detectors, load_bundle, load_detectors, load_ensembles, load_heatmap_bundle  # noqa: E402
from czii_kaggle.detectors import run_candidates  # noqa: E402
from czii_kaggle.ensemble import select_ensemble  # noqa: E402
from czii_kaggle.tune import tune_thresholds  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "refit.md"


def detector_candidates(weights: Path, names: list[str], root: Path, split: str, runs: list[str], set_name: str,
                        cache: Path | None, cache_yolo: Path | None) -> dict[str, pd.DataFrame]:
    """Each detector's unthresholded candidates of ``runs``, kept per detector and set as bench_ensemble.py keeps them."""
    dirs = {**({n: cache / n / set_name for n in names if n != "yolo"} if cache else {}),
            **({"yolo": cache_yolo / set_name} if cache_yolo else {})}
    found, report = run_candidates(load_detectors(weights, names), root, split, runs, progress=False, cache=dirs)
    bad = report[report["status"] != "ok"]
    if len(bad):
        raise SystemExit(f"{set_name}: {'; '.join(bad['error'].astype(str))}")
    return found


def pick(option: str, cands: dict[str, pd.DataFrame], aggregates: dict, ensembles: dict) -> pd.DataFrame:
    """The picks of one option (a detector, or detectors joined by commas: their ensemble)."""
    if "," in option:
        return select_ensemble(cands, ensembles[option])
    return select(cands[option], aggregates[option])


def refit_leads(boots: dict[str, pd.DataFrame], level: float = 0.95) -> list[dict]:
    """Refit's lead over shipped for each option, per look and on the mean of the looks, with the central
    ``level`` interval of the paired run bootstrap (``boots[look]``: :func:`czii_kaggle.metric.bootstrap_scores`
    with columns ``"{option} [shipped]"`` and ``"{option} [refit]"``; the mean's resamples are the looks' own, drawn apart, averaged;
    an option is in the mean only where every look has both of its columns)."""
    parts = dict(boots)
    if len(boots) > 1:
        common = set.intersection(*(set(b.columns) for b in boots.values()))
        parts["mean of the looks"] = sum(b[sorted(common)] for b in boots.values()) / len(boots)
    rows = []
    for look, boot in parts.items():
        for option in dict.fromkeys(c.rsplit(" [", 1)[0] for c in boot.columns):
            if f"{option} [shipped]" in boot.columns and f"{option} [refit]" in boot.columns:
                rows.append({"look": look, "detectors": option, "resamples": len(boot),
                             **lead(boot[f"{option} [refit]"] - boot[f"{option} [shipped]"], level)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=REPO / "czii_kaggle" / "models", help="the start bundle")
    add_test_set_args(ap)
    ap.add_argument("--runs", type=int, default=7, help="labelled runs simulated per look (Kaggle gives 7)")
    ap.add_argument("--refit-seed", type=int, default=71210, help="their seed (+1000 per domain index)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_refit")
    ap.add_argument("--cache", type=Path, help="reuse / keep the heatmap networks' test candidates in DIR/{detector}/{set}")
    ap.add_argument("--cache-yolo", type=Path, help="reuse / keep YOLO's test candidates in DIR/{set}")
    ap.add_argument("--n-boot", type=int, default=2000, help="resamples of the test runs for the leads' intervals")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    unknown = [d for d in a.domains if d not in DOMAINS or d in ("random", *TRAINING_DOMAINS)]
    if unknown or not a.domains:
        raise SystemExit(f"--domains: one or more held-out looks, not {unknown or 'none'}")

    start = load_bundle(a.weights)
    networks = finetune.heatmap_networks(a.weights)
    names = ["yolo", *networks]
    shipped_agg = {"yolo": start.aggregate, **{n: load_heatmap_bundle(a.weights, n).aggregate for n in networks}}
    shipped_ens = {",".join(e.detectors): e for e in load_ensembles(a.weights)}
    default = ",".join(default_detectors(a.weights))
    sets = {name: (root, truth) for name, root, truth in test_sets(a)}
    rows, seconds, boots = [], {}, {}
    for domain in a.domains:
        seed = a.refit_seed + 1000 * list(DOMAINS).index(domain)
        t0 = time.perf_counter()
        root = simulate_labelled(a.work / domain / f"seed{seed}_n{a.runs}", a.runs, seed, DOMAINS[domain])
        runs = layout.list_pick_runs(root)[:a.runs]
        seconds[f"{domain} simulate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = finetune.plan_fine_tune(root, finetune.FineTuneConfig(init=str(a.weights), k_folds=len(runs),
                                                                     heatmap_steps=0, max_hours=1e6))
        oof = detector_candidates(a.weights, ["yolo"], root, "train", runs, f"refit-{domain}", None,
                                  a.work / "cache" / "yolo")["yolo"]
        yolo_tuned = finetune.tune_oof(root, oof, start)[0]
        fit = finetune.fit_heatmap_ensemble(root, plan, oof)
        seconds[f"{domain} fit"] = time.perf_counter() - t0
        print(fit.note, flush=True)
        test_root, truth = sets[domain]
        cands = detector_candidates(a.weights, names, test_root, "test", layout.list_runs(test_root, "test"), domain,
                                    a.cache, a.cache_yolo)
        refit_agg = {"yolo": yolo_tuned, **fit.aggregates}
        chosen = ",".join(fit.default)
        subs = {}  # "{option} [{variant}]" -> submission on the test runs; the fit's choice as option "(the fit's choice)"
        for option in fit.held_out:
            for variant, aggs, ens in (("shipped", shipped_agg, shipped_ens), ("refit", refit_agg, fit.ensembles)):
                if "," in option and option not in ens:
                    continue
                subs[f"{option} [{variant}]"] = sub = submission_of(pick(option, cands, aggs, ens))
                mark = (option == default) if variant == "shipped" else (option == chosen)
                row = {"look": domain, "detectors": option, "thresholds": variant,
                       "default": ("shipped default" if variant == "shipped" else "chosen") if mark else "",
                       f"left out on the {len(runs)}": fit.held_out[option] if variant == "refit" else float("nan"),
                       **score_submission(sub, truth)}
                rows.append(row)
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        # the fit's choice, as the fine-tuned bundle would run it, against the shipped default as shipped
        subs["(the fit's choice) [refit]"] = subs[f"{chosen} [refit]"]
        subs["(the fit's choice) [shipped]"] = subs[f"{default} [shipped]"]
        rows.append({"look": domain, "detectors": "(the fit's choice)", "thresholds": "refit", "default": chosen,
                     f"left out on the {len(runs)}": fit.held_out[chosen],
                     **score_submission(subs[f"{chosen} [refit]"], truth)})
        boots[domain] = metric.bootstrap_scores(truth, subs, a.n_boot, seed=list(DOMAINS).index(domain))
    table = pd.DataFrame(rows)
    mean = (table.groupby(["detectors", "thresholds"], sort=False).mean(numeric_only=True).reset_index()
            .assign(look="mean of the looks", default=""))
    table = pd.concat([table, mean[table.columns]], ignore_index=True)
    leads = pd.DataFrame(refit_leads(boots))
    print(fmt(table))
    print(fmt(leads, "{:.4f}"))
    if not a.no_write:
        text = "\n".join([
            f"## {_dt.datetime.now():%Y-%m-%d %H:%M}",
            "",
            f"- command: `python benchmarks/bench_refit.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
            f"- machine: {describe_machine()}",
            f"- bundle `{a.weights}` (default {default}); per look {a.runs} labelled medium runs simulated apart "
            f"(seed {a.refit_seed} + 1000 per domain index); the fit: `finetune.fit_heatmap_ensemble` with the "
            "bundle's detectors untrained (heatmap_steps 0, its YOLO candidates for the folds'), YOLO's thresholds "
            f"by `finetune.tune_oof`; test sets: {', '.join(f'{n} ({t.experiment.nunique()} runs)' for n, (_, t) in sets.items())}; "
            f"seconds: {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}; all simulated, no real voxels",
            "",
            "Each option on the look's test runs with the bundle's thresholds and ensembles (shipped) and with those "
            "fitted on the look's labelled runs (refit); `left out`: the score the fit chose the default by (each "
            "labelled run selected by thresholds fitted on the others); (chosen): the fit's default.",
            "",
            fmt(table),
            "",
            f"**Refit's lead over shipped** per option (for `(the fit's choice)`: the fit's default, refit, over the "
            f"shipped default, shipped), with its 95% interval over test runs (each look's runs resampled with "
            f"replacement {a.n_boot} times, the looks apart; every option on the same draws):",
            "",
            fmt(leads, "{:.4f}"),
        ])
        append_result(RESULTS, "What labelled runs of an unseen look buy without training (the fine-tuning's fit)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
