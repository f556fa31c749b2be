"""The fresh-draw check's table (session 24) from fresh3.sh's four logs: runs/fresh3/check_v{1,2}_{training,unseen}.log.

Each log is bench_selection.py's printout with the fresh training-look (or unseen-look) roots as --val-looks; the check
is the mean of the two fresh columns (fresh3.sh's header: the rule, set before the figures). In session 24 the
shipped default was "YOLO + hn + l0, 1 view", its candidates (b) "YOLO + hn + l0, 2 views" and (a) "hn + l0, 2 views".
Also fresh4.sh's table (session 25): `fresh3_table.py runs/fresh4 "YOLO + hn + l0, 2 views"` (the second argument:
the shipped variant the leads are taken over)."""
import ast
import sys
from pathlib import Path

LOGS = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fresh3")
SHIPPED = sys.argv[2] if len(sys.argv) > 2 else "YOLO + hn + l0, 1 view"  # the default of that check's time
NAMES = {("1", "ensemble logit yolo + heatmap + heatmap2, floor, relative"): "YOLO + hn + l0, 1 view",
         ("1", "ensemble logit heatmap + heatmap2, floor, relative"): "hn + l0, 1 view",
         ("1", "second heatmap, floor, relative"): "l0 alone, 1 view",
         ("2", "ensemble logit yolo + heatmap + heatmap2, floor, relative"): "YOLO + hn + l0, 2 views",
         ("2", "ensemble logit heatmap + heatmap2, floor, relative"): "hn + l0, 2 views",
         ("2", "second heatmap, floor, relative"): "l0 alone, 2 views"}


def rows(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(" {")
        if rest and (name.startswith("ensemble") or name.startswith("second")):
            out[name] = ast.literal_eval("{" + rest)
    return out


table = {}
for v in ("1", "2"):
    for ground in ("training", "unseen"):
        path = LOGS / f"check_v{v}_{ground}.log"
        if not path.exists():
            continue
        for name, r in rows(path).items():
            t = table.setdefault(NAMES.get((v, name), f"{name} ({v} view)"), {})
            t["validation (fit, 9)"] = r["validation"]
            t["classic test"] = r["classic-test"]
            t[f"fresh {ground}"] = r["unseen-look validation"]
            t[f"{ground} bgal"] = r["unseen-look val beta-galactosidase"]
            t[f"{ground} thyro"] = r["unseen-look val thyroglobulin"]
cols = ["validation (fit, 9)", "classic test", "fresh training", "training bgal", "training thyro",
        "fresh unseen", "unseen bgal", "unseen thyro", "check (mean)"]
for t in table.values():
    if "fresh training" in t and "fresh unseen" in t:
        t["check (mean)"] = (t["fresh training"] + t["fresh unseen"]) / 2
base = table.get(SHIPPED, {}).get("check (mean)")
print("| variant | " + " | ".join(cols) + f" | lead over {SHIPPED} (shipped) |")
print("| --- |" + " --- |" * (len(cols) + 1))
for name in NAMES.values():
    t = table.get(name)
    if not t:
        continue
    lead = t["check (mean)"] - base if base is not None and "check (mean)" in t else None
    cells = [f"{t[c]:.4f}" if c == "check (mean)" and c in t else (f"{t[c]:.3f}" if c in t else "") for c in cols]
    print(f"| {name} | " + " | ".join(cells) + f" | {'' if lead is None else f'{lead:+.4f}'} |")
