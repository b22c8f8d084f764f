#!/usr/bin/env python3
"""Generate the CNC sample designs' drawings (SVG) and GRBL G-code.

Run from the designs/ folder: `python3 tools/cnc_gcode.py`. The output is deterministic.
Conventions for the `generic-grbl-300x200` profile: mm, absolute, work zero on the stock
top at the machine's front-left, the stock placed at (10, 10) so every tool position,
including the outside of a profile cut, stays at x, y >= 0. One 3 mm flat end mill.
"""

import math
from pathlib import Path

OFFSET = 10.0  # where the stock's corner sits in work coordinates
SAFE_Z = 5.0
FEED = 600
PLUNGE = 150
RPM = 10000
TOOL_D = 3.0

# Single-stroke letters in a 0.6 x 1 box: lists of polylines.
FONT = {
    "F": [[(0, 0), (0, 1), (0.6, 1)], [(0, 0.5), (0.45, 0.5)]],
    "A": [[(0, 0), (0.3, 1), (0.6, 0)], [(0.12, 0.4), (0.48, 0.4)]],
    "B": [
        [(0, 0), (0, 1), (0.45, 1), (0.6, 0.9), (0.6, 0.6), (0.45, 0.5), (0, 0.5)],
        [(0.45, 0.5), (0.6, 0.4), (0.6, 0.1), (0.45, 0), (0, 0)],
    ],
    "L": [[(0, 1), (0, 0), (0.6, 0)]],
    "O": [[(0.15, 0), (0.45, 0), (0.6, 0.2), (0.6, 0.8), (0.45, 1), (0.15, 1), (0, 0.8), (0, 0.2), (0.15, 0)]],
    "P": [[(0, 0), (0, 1), (0.45, 1), (0.6, 0.85), (0.6, 0.65), (0.45, 0.5), (0, 0.5)]],
    "E": [[(0.6, 1), (0, 1), (0, 0), (0.6, 0)], [(0, 0.5), (0.45, 0.5)]],
    "N": [[(0, 0), (0, 1), (0.6, 0), (0.6, 1)]],
}


def text_strokes(text, x, y, height, gap):
    strokes = []
    for ch in text:
        if ch != " ":
            for line in FONT[ch]:
                strokes.append([(x + px * height, y + py * height) for px, py in line])
        x += 0.6 * height + gap
    return strokes


def text_width(text, height, gap):
    return len(text) * 0.6 * height + (len(text) - 1) * gap


def fmt(v):
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


class Program:
    def __init__(self, title):
        self.lines = [
            f"({title})",
            # GRBL's host sessions refuse lines over 79 characters (its line buffer),
            # comments included: keep every line shorter.
            "(profile generic-grbl-300x200, 3 mm flat end mill)",
            "(work zero = stock top, front-left)",
            "G21",
            "G90",
            "G17",
            "G94",
            f"G0 Z{fmt(SAFE_Z)}",
            f"M3 S{RPM}",
            "G4 P2",
        ]

    def polyline(self, points, depth):
        x0, y0 = points[0]
        self.lines.append(f"G0 X{fmt(x0 + OFFSET)} Y{fmt(y0 + OFFSET)}")
        self.lines.append(f"G1 Z{fmt(-depth)} F{PLUNGE}")
        first = True
        for x, y in points[1:]:
            feed = f" F{FEED}" if first else ""
            self.lines.append(f"G1 X{fmt(x + OFFSET)} Y{fmt(y + OFFSET)}{feed}")
            first = False
        self.lines.append(f"G0 Z{fmt(SAFE_Z)}")

    def finish(self):
        self.lines += [f"G0 Z{fmt(SAFE_Z)}", "M5", "G0 X0 Y0", "M30"]
        too_long = [line for line in self.lines if len(line) > 79]
        assert not too_long, f"lines over GRBL's 79 characters: {too_long}"
        return "\n".join(self.lines) + "\n"


def rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def svg(width, height, paths, title):
    body = "\n".join(
        '  <polyline fill="none" stroke="black" stroke-width="0.5" points="{}"/>'.format(
            " ".join(f"{fmt(x)},{fmt(height - y)}" for x, y in p)
        )
        for p in paths
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{fmt(width)}mm" height="{fmt(height)}mm" '
        f'viewBox="0 0 {fmt(width)} {fmt(height)}">\n'
        f"  <title>{title}</title>\n"
        f'  <rect x="0" y="0" width="{fmt(width)}" height="{fmt(height)}" fill="none" stroke="grey" stroke-width="0.2"/>\n'
        f"{body}\n</svg>\n"
    )


def sign():
    w, h = 140.0, 70.0
    paths = [rect(5, 5, w - 5, h - 5)]
    big, small = 20.0, 10.0
    paths += text_strokes("FABLAB", (w - text_width("FABLAB", big, 6)) / 2, 32, big, 6)
    paths += text_strokes("OPEN", (w - text_width("OPEN", small, 4)) / 2, 13, small, 4)
    prog = Program("engraved-sign: FABLAB / OPEN on a 140 x 70 mm plywood blank, 1 mm deep")
    for p in paths:
        prog.polyline(p, 1.0)
    return svg(w, h, paths, "Engraved fablab sign"), prog.finish()


def tray():
    w, h = 100.0, 60.0
    px0, py0, px1, py1 = 15.0, 15.0, 85.0, 45.0  # pocket
    r = TOOL_D / 2
    prog = Program("pocket-tray: 100 x 60 mm tray in 9 mm plywood, 4 mm pocket, outside profile")
    depth = 0.0
    while depth < 4.0 - 1e-9:
        depth = min(depth + 1.0, 4.0)
        # zigzag clearing inside the pocket, then one pass along the wall
        ys = []
        y = py0 + r
        while y < py1 - r - 1e-9:
            ys.append(y)
            y += 1.2
        ys.append(py1 - r)
        zig = []
        for i, y in enumerate(ys):
            xs = (px0 + r, px1 - r) if i % 2 == 0 else (px1 - r, px0 + r)
            zig += [(xs[0], y), (xs[1], y)]
        prog.polyline(zig, depth)
        prog.polyline(rect(px0 + r, py0 + r, px1 - r, py1 - r), depth)
    # outside profile, tool outside the line, stopping 0.5 mm short of the 9 mm stock:
    # the skin is cut with a knife, so the part never comes loose under the tool
    depth = 0.0
    while depth < 8.5 - 1e-9:
        depth = min(depth + 1.5, 8.5)
        prog.polyline(rect(-r, -r, w + r, h + r), depth)
    drawing = [rect(0, 0, w, h), rect(px0, py0, px1, py1)]
    return svg(w, h, drawing, "Pocket tray: outline and 4 mm pocket"), prog.finish()


def main():
    root = Path(__file__).resolve().parent.parent
    for name, (drawing, gcode) in (("engraved-sign", sign()), ("pocket-tray", tray())):
        (root / name / f"{name}.svg").write_text(drawing)
        (root / name / f"{name}.generic-grbl-300x200.nc").write_text(gcode)
        print(f"{name}: {len(gcode.splitlines())} lines of G-code")


if __name__ == "__main__":
    main()
