#!/usr/bin/env bash
# Use the authors' released FIANet checkpoint: convert it once, register it under a short name,
# then segment with -m NAME. The .pth (the authors' trained model, from the BaiduNetDisk share
# linked in github.com/Shaosifan/FIANet/issues/11, extraction code 65g4) is read without running
# pickled code; every tensor must map, or the conversion stops and says which.
#
#   bash examples/convert_released.sh RELEASED.pth [NAME] [OUT_DIR]
#   fiacli segment scene.tif "the airplane on the left" -m NAME -o plane.gpkg --preview plane.png
set -euo pipefail
released="$1"
name="${2:-fianet-released}"
out="${3:-.}"
mkdir -p "$out"
fiacli convert "$released" -o "$out/$name.safetensors" --overwrite --json
fiacli models add "$name" "$out/$name.safetensors" --overwrite \
    --description "converted from $(basename "$released")"
fiacli models
