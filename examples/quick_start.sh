#!/usr/bin/env bash
# Quick start: find "the yellow vehicle" in the bundled demo scene (a synthetic 2,048 x 2,048 px GeoTIFF,
# EPSG:32633, 0.5 m/px) with the bundled demo model, offline, on a CPU. Writes a GeoPackage that
# QGIS opens (the vehicle's polygon, georeferenced) and a preview PNG with it outlined.
# --min-area 15 drops polygons under 15 m²: the demo model also marks bits of look-alike objects
# in chips without any yellow vehicle (a referring model always answers; see the README).
#
#   bash examples/quick_start.sh [OUT_DIR]
#
# The demo model was trained by fiacli on synthetic scenes only (examples/train_demo_model.sh);
# for real imagery convert a released checkpoint (examples/convert_released.sh) or train one.
set -euo pipefail
out="${1:-.}"
mkdir -p "$out"
fiacli segment --demo "the yellow vehicle" --min-area 15 -o "$out/demo.gpkg" \
    --preview "$out/demo.png" --overwrite
