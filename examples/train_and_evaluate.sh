#!/usr/bin/env bash
# Train fianet-tiny on synthetic scenes, evaluate it on held-out scenes, report and use it; on a
# CPU. With the defaults this is the synth recipe (about 10 minutes of training on 2 cores).
#
#   bash examples/train_and_evaluate.sh [WORK_DIR]
#
# Sizes come from the environment, so a smoke test can shrink them:
#   TRAIN_REFS (4000)  VAL_REFS (200)  TEST_REFS (400)  SIZE (96)  EPOCHS (the recipe's)
set -euo pipefail
work="${1:-synth-example}"
mkdir -p "$work"
size="${SIZE:-96}"
fiacli data synth -o "$work/data" --seed 0 --size "$size" \
    --train "${TRAIN_REFS:-4000}" --val "${VAL_REFS:-200}" --test "${TEST_REFS:-400}"
fiacli train --dataset synth --data-root "$work/data" -o "$work/run" --image-size "$size" \
    ${EPOCHS:+--epochs "$EPOCHS"}
fiacli eval -m "$work/run/best.safetensors" --data-root "$work/data" --split test \
    --save-preds "$work/preds" --json > "$work/test_metrics.json"
fiacli report "$work/run" --preds "$work/preds" -o "$work/report.html"
fiacli models add synth-example "$work/run/best.safetensors" --overwrite
echo "test metrics: $work/test_metrics.json; report: $work/report.html; model: -m synth-example"
