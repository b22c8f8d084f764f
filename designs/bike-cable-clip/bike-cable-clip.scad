// Bicycle cable clip: snaps onto a frame tube and holds one brake or gear cable housing.
// Replaces the small plastic clips that break on older frames.
tube_diameter = 25;    // frame tube, mm
housing_diameter = 5;  // cable housing, mm
wall = 2;              // ring wall, mm
height = 3;            // clip height (print height), mm
opening = 80;          // gap in the tube ring, degrees

$fn = 32;

module ring(d, w, gap) {
    difference() {
        cylinder(d = d + 2 * w, h = height);
        translate([0, 0, -0.01]) cylinder(d = d, h = height + 0.02);
        // the snap-on opening
        translate([0, 0, -0.01]) rotate([0, 0, -gap / 2])
            rotate_extrude(angle = gap) square([d, height + 0.02]);
    }
}

union() {
    ring(tube_diameter, wall, opening);
    // housing loop on the far side of the opening
    translate([-(tube_diameter / 2 + wall + housing_diameter / 2), 0, 0])
        ring(housing_diameter, wall, 40);
}
