// Wall bracket for M4 bolts: the parametric wall bracket with thicker walls and larger holes,
// adapted by a fablab for mounting on perforated steel rails.
// Change the parameters below (or pass -D name=value to openscad) and re-slice.
arm_length = 16;     // length of both arms, mm
width = 10;          // bracket width, mm
thickness = 4;       // wall thickness, mm
hole_diameter = 4.5; // screw hole for M4 bolts, mm

$fn = 24;

module arm_with_hole(length) {
    difference() {
        cube([length, width, thickness]);
        translate([length * 0.6, width / 2, -0.01]) cylinder(d = hole_diameter, h = thickness + 0.02);
    }
}

union() {
    // horizontal arm (on the bed)
    arm_with_hole(arm_length);
    // vertical arm (against the wall), holes drilled through its thickness
    translate([thickness, 0, 0]) rotate([0, -90, 0]) arm_with_hole(arm_length);
    // gusset in the middle of the width for stiffness
    translate([thickness, width / 2 - 1, thickness])
        rotate([90, 0, 0]) translate([0, 0, -2])
            linear_extrude(2) polygon([[0, 0], [arm_length * 0.45, 0], [0, arm_length * 0.45]]);
}
