// Calibration cube: measure X, Y and Z after printing to check steps/mm and shrinkage.
// The letters engraved on top mark the X and Y axes.
size = 12;        // edge length, mm
mark_depth = 0.6; // depth of the axis marks, mm

difference() {
    cube([size, size, size]);
    // X mark: a slot along X on the top face
    translate([size * 0.2, size * 0.15, size - mark_depth]) cube([size * 0.6, 1.2, mark_depth + 0.01]);
    // Y mark: a slot along Y on the top face
    translate([size * 0.15, size * 0.35, size - mark_depth]) cube([1.2, size * 0.5, mark_depth + 0.01]);
}
