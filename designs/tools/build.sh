#!/bin/sh
# Rebuild the sample designs' STL and G-code from their sources.
# Needs openscad and prusa-slicer (Debian: apt-get install openscad prusa-slicer) and python3.
# Run from anywhere; after it, re-run the catalog tests (they check sizes and limits).
set -eu
cd "$(dirname "$0")/.."
for design in calibration-cube wall-bracket bike-cable-clip wall-bracket-m4; do
    [ -d "$design" ] || continue
    (
        cd "$design"
        openscad -o "$design.stl" "$design.scad"
        prusa-slicer --export-gcode --load ../tools/prusa-generic-marlin-220.ini \
            -o "$design.generic-marlin-220.gcode" "$design.stl"
    )
done
python3 tools/cnc_gcode.py
