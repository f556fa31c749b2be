#!/bin/bash
# Session 25: a fourth fresh draw of the choice ground, for one candidate: hn + l0 with l0's 1 view, no YOLO.
# Written and committed before any figure of this draw was seen (the seeds below are used by no record or training).
#
# Why: on session 24's third fresh draw (fresh3.sh; selection.md 2026-12-04 03:05 record) "hn + l0, 1 view", printed
# there for the record only, scored highest of all (check 0.76404, against 0.75360 for YOLO + hn + l0 with 2 views,
# the default shipped in session 25). A variant found best on a draw after the fact is a hypothesis, not a result, so it
# gets a draw of its own. It would also be about 40% faster (no YOLO, l0 with 1 view: about 25 s per tomogram against
# 44 s on the 2026-12-04 machine).
#
# The ground: 9 runs of the training looks, seeds 5541 (3, SPEC), 5543 (1, classic), 5544 (3, SPEC), 5545 (2, classic);
# the three unseen families, 6 runs each: diffusion 5361 and 5371, lobes 5362 and 5372, wiener 5363 and 5373 (36 runs);
# the same specs and counts as fresh3. Everything fitted on the same 9 validation runs (5201, 5203, 5204, 5205).
#
# The rule, set before the figures: the check is the mean of two columns, the 9 fresh training-look runs and the 36
# fresh unseen-look runs pooled. The shipped default, (b) YOLO + hn + l0 with 2 views ("YOLO + hn + l0, 2 views" in
# the table), is replaced by (c) hn + l0 with 1 view ("hn + l0, 1 view") only if (c) leads it by 0.005 or more. The
# others (YOLO + hn + l0 with 1 view, hn + l0 with 2 views, l0 alone) are printed for the record only and can win
# nothing here. If (c) passes, YOLO stays in the bundle (`--detectors yolo,heatmap,heatmap_l0` and the ensemble of two
# as alternatives) and the default becomes heatmap,heatmap_l0 with heatmap_l0's tta_views back at 1.
#
# Candidates are cached in runs/cache/fresh4 by weights and run name; the 9 validation runs' and the classic test's
# may be copied from runs/cache/fresh3 (the same weights and runs); the fresh runs' are all new.
#
# Usage: bash benchmarks/results/ensemble_experiments/fresh4.sh [sim|check|all]   (default all; logs in runs/fresh4/)
#        .venv/bin/python benchmarks/results/ensemble_experiments/fresh3_table.py runs/fresh4 "YOLO + hn + l0, 2 views"   (the table)
set -euo pipefail
cd "$(dirname "$0")"
FRESH_OUT=runs/fresh4 FRESH_CACHE=runs/cache/fresh4 FRESH_SEEDS="5541 5543 5544 5545 5361 5371 5362 5372 5363 5373" \
  exec bash ./fresh3.sh "${1:-all}"
