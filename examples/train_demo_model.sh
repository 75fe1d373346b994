#!/usr/bin/env bash
# How the bundled demo model and scene were made, exactly (about 15 CPU minutes on 2 cores):
#   1. synthetic referring data (fiacli data synth),
#   2. fianet-tiny trained with the recipe in examples/demo_model.yaml,
#   3. evaluated on the held-out test split,
#   4. packed into fiacli/assets (float16, without the frozen offline text encoder, which every
#      installation has), with these commands and the test metrics in its provenance,
#   5. the demo scene redrawn at the model's object scale, and every demo expression scored.
#
#   bash examples/train_demo_model.sh [WORK_DIR]
#
# It replaces fiacli/assets/fianet-tiny-demo.safetensors and demo_scene.tif/.json.
set -euo pipefail
work="$(mkdir -p "${1:-demo-model}" && cd "${1:-demo-model}" && pwd)"
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # a shared CPU: spinning OpenMP threads cost more

synth=(fiacli data synth -o "$work/data" --seed 0 --size 96 --train 4000 --val 200 --test 400)
train=(fiacli train --config examples/demo_model.yaml --data-root "$work/data" -o "$work/run")
"${synth[@]}"
"${train[@]}"
fiacli eval -m "$work/run/best.safetensors" --data-root "$work/data" --split test --json \
    > "$work/test.json"
printf '%s\n' "${synth[*]}" "${train[*]}" > "$work/recipe.txt"
python -m fiacli.app.demo_tools pack "$work/run/best.safetensors" --recipe "$work/recipe.txt" \
    --test-metrics "$work/test.json"
python -m fiacli.app.demo_tools scene
python -m fiacli.app.demo_tools check
