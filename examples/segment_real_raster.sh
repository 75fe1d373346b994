#!/usr/bin/env bash
# Segment a real GeoTIFF the way a GIS analyst would: polygons reprojected to WGS 84, specks
# dropped, a mask GeoTIFF beside them, a preview PNG and the run manifest (model, options).
#
#   bash examples/segment_real_raster.sh SCENE.tif "EXPRESSION" [MODEL] [OUT_DIR]
#
# MODEL is a checkpoint path or a name from `fiacli models`; without it the bundled demo model
# runs, which only knows synthetic scenes: expect its answers on real imagery to be poor.
# Example with the shared test rasters:
#   bash examples/segment_real_raster.sh ../shared/rasters/cogeo.tif "the vehicle on the road"
set -euo pipefail
scene="$1"
expression="$2"
model="${3:-}"
out="${4:-.}"
stem="$(basename "${scene%.*}")"
mkdir -p "$out"
fiacli segment "$scene" "$expression" ${model:+-m "$model"} \
    -o "$out/$stem.gpkg" -o "$out/$stem.tif" --preview "$out/$stem.png" \
    --min-area 10 --dst-crs EPSG:4326 --overwrite --json > "$out/$stem.summary.json"
echo "wrote $out/$stem.gpkg, $out/$stem.tif, $out/$stem.png (summary: $out/$stem.summary.json)"
