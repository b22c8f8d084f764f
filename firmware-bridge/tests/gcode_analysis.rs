//! The G-code analysis on hand-written files whose figures are known exactly, on slicer
//! headers, and against machine profiles.

use std::path::{Path, PathBuf};

use munifab_firmware_bridge::gcode::{
    Analysis, Analyzer, FindingCode, KEPT_PER_CODE, MachineProfile, ThumbnailFormat, analyze_bytes,
    analyze_reader,
};
use munifab_protocol::{Flavour, Process, Severity};
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn profile(name: &str) -> MachineProfile {
    MachineProfile::load(&fixture(&format!("profiles/{name}.toml"))).expect("fixture profile loads")
}

fn analyze(text: &str) -> Analysis {
    analyze_bytes(text.as_bytes(), None)
}

fn with(text: &str, profile_name: &str) -> Analysis {
    analyze_bytes(text.as_bytes(), Some(&profile(profile_name)))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[track_caller]
fn assert_close(actual: f64, expected: f64) {
    assert!(close(actual, expected), "expected {expected}, got {actual}");
}

/// The findings of one code, as (line, column).
fn places(a: &Analysis, code: FindingCode) -> Vec<(u64, u32)> {
    a.findings
        .iter()
        .filter(|f| f.code == code)
        .map(|f| (f.line, f.column))
        .collect()
}

const SQUARE: &str = "\
G21
G90
M82
G28
G92 E0
G1 Z0.2 F600
G1 X10 E1
G1 X10 Y10 E2
G1 X0 Y10 E3
G1 X0 Y0 E4
";

#[test]
fn a_square_has_exact_bounds_extrusion_and_duration() {
    let a = analyze(SQUARE);
    let b = a.bounds.expect("moves");
    assert_eq!((b.min.x, b.min.y, b.min.z), (0.0, 0.0, 0.0));
    assert_eq!((b.max.x, b.max.y, b.max.z), (10.0, 10.0, 0.2));
    let w = a.work_bounds.expect("extruding moves");
    assert_eq!((w.min.z, w.max.z), (0.2, 0.2));
    assert_close(a.extrusion_mm, 4.0);
    // Z 0.2 mm at 10 mm/s: 0.01 s up, 0.01 s down, 0.1 mm cruise = 0.03 s. Each side
    // 10 mm at 10 mm/s with 1000 mm/s², stopping at every right angle: 1.01 s.
    assert_close(a.estimated_seconds, 0.03 + 4.0 * 1.01);
    assert_eq!(a.layers, 1);
    assert_eq!(a.lines, 10);
    assert_eq!(a.bytes, SQUARE.len() as u64);
    assert_eq!(a.flavour, Flavour::Reprap);
    assert_eq!(a.process, Process::Fdm);
    assert!(a.findings.is_empty(), "{:?}", a.findings);
}

#[test]
fn a_straight_line_in_pieces_takes_as_long_as_in_one_move() {
    let one = analyze("G28\nG1 X30 F600\n");
    let three = analyze("G28\nG1 X10 F600\nG1 X20\nG1 X30\n");
    assert_close(one.estimated_seconds, 0.02 + (30.0 - 0.1) / 10.0);
    assert_close(three.estimated_seconds, one.estimated_seconds);
}

#[test]
fn the_profile_motion_limits_drive_the_estimate() {
    // 100 mm asked at 6000 mm/min, the router caps XY at 3000 mm/min (50 mm/s), 300 mm/s².
    let a = with("G21 G90\nG0 X0 Y0 Z0\nG1 X100 F6000\n", "router");
    let ramp = 50.0 / 300.0;
    let ramp_dist = 50.0 * 50.0 / (2.0 * 300.0);
    assert_close(
        a.estimated_seconds,
        2.0 * ramp + (100.0 - 2.0 * ramp_dist) / 50.0,
    );
}

#[test]
fn dwell_adds_its_time() {
    let a = analyze("G4 P1500\nG4 S2\n");
    assert_close(a.estimated_seconds, 3.5);
}

#[test]
fn relative_and_absolute_switches_and_g92_mid_file_are_followed() {
    let a = analyze(
        "G28\n\
         G91\n\
         G1 X5 Y5 F600\n\
         G1 X5 E1\n\
         G90\n\
         G1 X20 E3\n\
         G92 E0\n\
         G1 X30 E2\n\
         G92 X0\n\
         G1 X10 E4\n\
         M83\n\
         G1 X5 E1\n",
    );
    // E: +1 relative, +2 to absolute 3, reset, +2, +2, +1 relative.
    assert_close(a.extrusion_mm, 8.0);
    let b = a.bounds.unwrap();
    // G92 X0 at physical 30: X10 is physical 40, X5 physical 35.
    assert_eq!((b.min.x, b.max.x), (0.0, 40.0));
    assert_eq!((b.min.y, b.max.y), (0.0, 5.0));
}

#[test]
fn a_motion_mode_stays_in_force_for_lines_of_bare_coordinates() {
    let a = analyze("G21 G90\nG0 X0 Y0 Z0\nG1 X10 F600\nY20\nX30 Y5\n");
    let b = a.bounds.unwrap();
    assert_eq!((b.max.x, b.max.y), (30.0, 20.0));
    // 10 + 20 + hypot(20, 15) = 55 mm of feed moves, each starting and ending at rest.
    assert!(a.estimated_seconds > 5.5, "{}", a.estimated_seconds);
}

#[test]
fn inch_files_are_measured_in_millimetres() {
    let a = analyze("G20\nG90\nG28\nG1 X1 Y2 F10\n");
    let b = a.bounds.unwrap();
    assert_close(b.max.x, 25.4);
    assert_close(b.max.y, 50.8);
}

#[test]
fn a_half_circle_reaches_beyond_its_end_points() {
    // From (10,0) counter-clockwise around the origin to (-10,0): over the top.
    let a = analyze("G28\nG1 X10 Y0 F600\nG3 X-10 Y0 I-10 J0 E5\n");
    let w = a.work_bounds.unwrap();
    assert_close(w.max.y, 10.0);
    assert_close(w.min.y, 0.0);
    assert_eq!((w.min.x, w.max.x), (-10.0, 10.0));
    // And back under the bottom: the moves span the whole circle.
    let a = analyze("G28\nG1 X10 Y0 F600\nG3 X-10 Y0 I-10 J0\nG3 X10 Y0 I10 J0\n");
    let b = a.bounds.unwrap();
    assert_close(b.min.y, -10.0);
    assert_close(b.max.y, 10.0);
}

#[test]
fn a_full_circle_covers_its_diameter_and_its_circumference() {
    let a = analyze("G28\nG1 X10 Y0 F600\nG2 X10 Y0 I-10 J0 F6000\n");
    let b = a.bounds.unwrap();
    assert_eq!((b.min.x, b.max.x), (-10.0, 10.0));
    assert_close(b.min.y, -10.0);
    assert_close(b.max.y, 10.0);
    // 10 mm at 10 mm/s (1.01 s), then 20π mm at 100 mm/s with 1000 mm/s² ramps.
    let circle = 20.0 * std::f64::consts::PI;
    assert_close(a.estimated_seconds, 1.01 + 0.2 + (circle - 10.0) / 100.0);
}

#[test]
fn radius_arcs_take_the_short_way_or_with_negative_r_the_long_way() {
    let short = analyze("G28\nG1 X0 Y0 F600\nG3 X10 Y10 R10\n");
    let b = short.bounds.unwrap();
    for (got, want) in [
        (b.min.x, 0.0),
        (b.max.x, 10.0),
        (b.min.y, 0.0),
        (b.max.y, 10.0),
    ] {
        assert_close(got, want);
    }
    // The long way round the centre (10,0) passes (10,-10) and (20,0).
    let long = analyze("G28\nG1 X0 Y0 F600\nG3 X10 Y10 R-10\n");
    let b = long.bounds.unwrap();
    assert_close(b.max.x, 20.0);
    assert_close(b.min.y, -10.0);
    assert_close(b.max.y, 10.0);
}

#[test]
fn an_arc_whose_end_is_off_its_circle_is_refused() {
    let a = analyze("G28\nG1 X10 Y0 F600\nG3 X0 Y12 I-10 J0\n");
    assert_eq!(places(&a, FindingCode::InvalidArc), vec![(3, 1)]);
    let a = analyze("G28\nG2 X30 Y0 R5\n");
    assert_eq!(places(&a, FindingCode::InvalidArc), vec![(2, 11)]);
}

#[test]
fn real_world_noise_does_not_change_the_analysis() {
    let clean = analyze(SQUARE);
    let noisy = "%\r\n\
        ; header comment\r\n\
        \r\n\
        n1 g21 (units)*12\r\n\
        N2 G90\r\n\
        m82 ; absolute E\r\n\
        G28\r\n\
        G92 E0\r\n\
        \r\n\
        g1 z0.2 f600\r\n\
        N10 G1 X10 E1 *77\r\n\
        G1X10Y10E2\r\n\
        G1 X 0 Y10 E3\r\n\
        G1 X0 Y0 E4 ; done\r\n\
        %\r\n";
    let a = analyze(noisy);
    assert_eq!(a.bounds, clean.bounds);
    assert_close(a.extrusion_mm, clean.extrusion_mm);
    assert_close(a.estimated_seconds, clean.estimated_seconds);
    assert_eq!(a.lines, 15);
    assert!(a.findings.is_empty(), "{:?}", a.findings);
}

#[test]
fn layers_and_their_heights_are_counted_from_extruding_moves() {
    let a = analyze(
        "G28\nG90\nM83\nG1 Z0.3 F600\nG1 X10 E1\nG1 Z1 F600\nG1 Z0.5\nG1 X0 E1\nG1 Z0.7\nG1 X10 E1\n",
    );
    assert_eq!(a.layers, 3);
    let h = a.layer_heights.unwrap();
    assert_close(h.first_z, 0.3);
    assert_close(h.last_z, 0.7);
    assert_close(h.min_mm, 0.2);
    assert_close(h.max_mm, 0.3);
}

#[test]
fn a_prusaslicer_file_yields_its_header_thumbnail_and_figures() {
    let a = analyze_bytes(&read("gcode/prusaslicer.gcode"), None);
    let s = a.slicer.as_ref().expect("slicer metadata");
    assert_eq!(s.name.as_deref(), Some("PrusaSlicer"));
    assert_eq!(s.version.as_deref(), Some("2.7.1+linux-x64-GTK3"));
    assert_eq!(s.printer_model.as_deref(), Some("MK3S"));
    assert_eq!(s.nozzle_diameter_mm, Some(0.4));
    assert_eq!(s.layer_height_mm, Some(0.2));
    assert_eq!(s.filament_type.as_deref(), Some("PETG"));
    assert_eq!(s.estimated_seconds, Some(80.0));
    assert_eq!(s.filament_mm, Some(20.5));
    assert_eq!(s.filament_g, Some(0.06));
    assert_eq!(s.filament_density_g_cm3, Some(1.24));
    // Intro line 12.5 mm, retract and prime cancel, 8 sides of 1 mm.
    assert_close(a.extrusion_mm, 20.5);
    assert_eq!(a.layers, 2);
    assert_eq!(a.temperatures.hotend_c, Some(215.0));
    assert_eq!(a.temperatures.bed_c, Some(60.0));
    assert_close(a.fan_max_percent.unwrap(), 127.0 / 255.0 * 100.0);
    let w = a.work_bounds.unwrap();
    assert_eq!(
        (w.min.x, w.max.x, w.min.y, w.max.y),
        (60.0, 120.0, -3.0, 120.0)
    );
    assert!(a.findings.is_empty(), "{:?}", a.findings);
    let summary = a.summary(None);
    let grams = summary.material_grams.expect("density from the header");
    let expected = std::f64::consts::PI * 0.875 * 0.875 * 20.5 / 1000.0 * 1.24;
    assert_close(grams, expected);
}

#[test]
fn an_embedded_thumbnail_decodes_to_a_valid_png() {
    let a = analyze_bytes(&read("gcode/prusaslicer.gcode"), None);
    assert_eq!(a.thumbnails.len(), 1);
    let t = &a.thumbnails[0];
    assert_eq!(t.format, ThumbnailFormat::Png);
    assert_eq!((t.width, t.height), (16, 16));
    assert_eq!(t.line, 5);
    assert_eq!(&t.data[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&t.data[12..16], b"IHDR", "first chunk is IHDR");
    let w = u32::from_be_bytes(t.data[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(t.data[20..24].try_into().unwrap());
    assert_eq!((w, h), (16, 16));
    assert_eq!(&t.data[t.data.len() - 8..t.data.len() - 4], b"IEND");
}

#[test]
fn a_qoi_thumbnail_keeps_its_format_and_bytes() {
    // "qoif" + width 2 + height 1 + channels + colourspace, base64 split over two lines.
    let a =
        analyze("; thumbnail_QOI begin 2x1 20\n; cW9pZgAAAAIA\n; AAABBAA=\n; thumbnail_QOI end\n");
    assert_eq!(a.thumbnails.len(), 1, "{:?}", a.findings);
    let t = &a.thumbnails[0];
    assert_eq!(t.format, ThumbnailFormat::Qoi);
    assert_eq!((t.width, t.height), (2, 1));
    assert_eq!(&t.data[..4], b"qoif");
    assert_eq!(t.data.len(), 14);
}

#[test]
fn a_broken_thumbnail_is_a_warning_not_a_refusal() {
    let a = analyze("; thumbnail begin 2x2 8\n; !!!!\n; thumbnail end\nG28\n");
    assert_eq!(places(&a, FindingCode::InvalidThumbnail), vec![(1, 1)]);
    assert!(!a.is_refused());
}

#[test]
fn a_cura_file_yields_its_header_and_both_tools() {
    let a = analyze_bytes(&read("gcode/cura.gcode"), None);
    let s = a.slicer.as_ref().expect("slicer metadata");
    assert_eq!(s.name.as_deref(), Some("Cura"));
    assert_eq!(s.version.as_deref(), Some("5.4.0"));
    assert_eq!(s.estimated_seconds, Some(1234.0));
    assert_close(s.filament_mm.unwrap(), 750.0);
    assert_eq!(s.layer_height_mm, Some(0.2));
    assert_eq!(s.printer_model.as_deref(), Some("Creality Ender-3"));
    assert_eq!(s.nozzle_diameter_mm, Some(0.6));
    assert_eq!(s.nozzle_line, Some(12));
    assert_eq!(a.tools.len(), 2);
    assert_close(a.tools[0].extrusion_mm, 2.0);
    assert_close(a.tools[1].extrusion_mm, 3.0);
    assert_eq!(a.tools[0].hotend_c, Some(230.0));
    assert_eq!(a.tools[1].hotend_c, Some(240.0));
    let t1 = a.tools[1].work_bounds.unwrap();
    assert_eq!(
        (t1.min.x, t1.max.x, t1.min.y, t1.max.y),
        (10.0, 30.0, 10.0, 30.0)
    );
    assert_eq!(a.temperatures.hotend_c, Some(240.0));
    assert_eq!(a.temperatures.bed_c, Some(70.0));
    let req = a.requirements();
    assert_eq!(req.tools, 2);
    assert_eq!(req.nozzle_diameter_mm, Some(0.6));
    assert_eq!(req.hotend_temp_c, Some(240.0));
}

#[test]
fn a_fusion_router_file_is_grbl_cnc_with_its_evidence() {
    let a = analyze_bytes(&read("gcode/router.nc"), None);
    assert_eq!(a.flavour, Flavour::Grbl);
    assert_eq!(a.process, Process::Cnc);
    assert!(
        a.flavour_evidence
            .iter()
            .any(|e| e.line == 13 && e.what.contains("M3"))
    );
    assert_eq!(a.spindle_rpm, vec![12000.0]);
    let w = a.work_bounds.unwrap();
    // The arc from (50,0) around (50,10) clockwise to (60,10) bulges to y -0? No: it
    // starts at the bottom of its circle, so the cut spans x 0..60, y 0..40, z -3.
    assert_eq!((w.min.x, w.max.x, w.min.y, w.max.y), (0.0, 60.0, 0.0, 40.0));
    assert_eq!(w.min.z, -3.0);
    let s = a.slicer.as_ref().unwrap();
    assert_eq!(s.name.as_deref(), Some("Fusion"));
    assert_eq!(s.printer_model.as_deref(), Some("Generic 3-axis"));
    // `M6` waits for an operator: a warning, the job is not refused.
    assert_eq!(places(&a, FindingCode::AttentionCommand), vec![(12, 4)]);
    assert!(!a.is_refused());
    let fit = with(
        &String::from_utf8(read("gcode/router.nc")).unwrap(),
        "router",
    );
    assert!(!fit.is_refused(), "{:?}", fit.findings);
}

#[test]
fn each_forbidden_command_is_refused_on_its_line() {
    for cmd in [
        "M500",
        "M501",
        "M502",
        "M997",
        "M112",
        "M303 E0 S210 C8",
        "M999",
        "M410",
        "M110 N0",
        "M575 B9600",
        "M28 a.gco",
        "M30 old.gco",
        "M42 P4 S255",
        "M121",
        "M211 S0",
        "M302 P1",
        "$32=1",
        "$X",
        "$J=X10 F100",
        "$RST=*",
        "$N0=G20",
        "$SLP",
        "$C",
    ] {
        let a = analyze(&format!("G28\nG1 X1 F600\n{cmd}\nG1 X2\n"));
        let forbidden: Vec<_> = a
            .findings
            .iter()
            .filter(|f| f.code == FindingCode::ForbiddenCommand)
            .collect();
        assert_eq!(forbidden.len(), 1, "{cmd}: {:?}", a.findings);
        assert_eq!((forbidden[0].line, forbidden[0].column), (3, 1), "{cmd}");
        assert_eq!(forbidden[0].severity, Severity::Error);
        assert!(a.is_refused(), "{cmd}");
    }
}

#[test]
fn harmless_lookalikes_of_forbidden_commands_pass() {
    let a = analyze("M211 S1\nM302\nM30\nM117 M500 is not sent\n$G\n");
    assert!(!a.is_refused(), "{:?}", a.findings);
}

#[test]
fn unknown_commands_are_warnings_reported_once_each() {
    let a = analyze("M4242\nG1 X1\nM4242\nG777\nSTART_PRINT BED=60\n");
    assert_eq!(
        places(&a, FindingCode::UnknownCommand),
        vec![(1, 1), (4, 1), (5, 1)]
    );
    assert!(a.findings.iter().all(|f| f.severity == Severity::Warning));
    assert!(!a.is_refused());
}

#[test]
fn a_malformed_line_gets_a_diagnostic_with_its_column() {
    let a = analyze("G28\nG1 X10 Y#5\n");
    let f = &a.findings[0];
    assert_eq!(f.code, FindingCode::MalformedLine);
    assert_eq!(f.line, 2);
    assert!(f.column >= 8, "{f:?}");
    assert!(f.message.contains("G1 X10 Y#5"), "{}", f.message);
    let a = analyze("G1 X10 & Y5\n");
    assert_eq!(places(&a, FindingCode::MalformedLine), vec![(1, 8)]);
}

#[test]
fn a_move_outside_the_build_volume_is_refused_on_its_line_and_column() {
    let a = with("G28\nG1 X100 Y100 F600\nG1 X230 Y100\nG1 Z-1\n", "printer");
    assert_eq!(places(&a, FindingCode::OutOfVolume), vec![(3, 4), (4, 4)]);
    assert!(
        a.findings[0].message.contains("X 230.000"),
        "{}",
        a.findings[0].message
    );
}

#[test]
fn an_arc_bulging_outside_the_volume_is_refused_even_with_end_points_inside() {
    let a = with("G28\nG1 X5 Y100 F600\nG2 X5 Y120 I0 J10\n", "printer");
    // Counter-clockwise would stay right of x=5; clockwise from the bottom bulges to x -5.
    assert_eq!(places(&a, FindingCode::OutOfVolume), vec![(3, 4)]);
}

#[test]
fn temperatures_above_the_limits_are_refused_on_their_lines() {
    let a = with("M104 S255\nM109 S280\nM140 S60\nM190 S110\n", "printer");
    assert_eq!(places(&a, FindingCode::HotendTooHot), vec![(2, 6)]);
    assert_eq!(places(&a, FindingCode::BedTooHot), vec![(4, 6)]);
}

#[test]
fn a_spindle_above_its_maximum_and_a_printer_tool_it_lacks_are_refused() {
    let a = with("G21 G90\nM3 S10000\nS15000\nM5\nS20000\nT1 M6\n", "router");
    // S20000 with the spindle off is only a preset; it is checked when the spindle starts.
    assert_eq!(places(&a, FindingCode::SpindleTooFast), vec![(3, 1)]);
    // A router's tool numbers name cutters changed by hand: T1 is no missing tool there.
    assert_eq!(places(&a, FindingCode::ToolMissing), vec![]);
    let a = with("T0\nM104 T1 S200\nT1\n", "printer");
    assert_eq!(places(&a, FindingCode::ToolMissing), vec![(3, 1)]);
}

#[test]
fn nozzle_and_material_mismatches_point_at_the_header_lines() {
    let text =
        "; generated by PrusaSlicer 2.7.1\nG28\n; nozzle_diameter = 0.6\n; filament_type = ABS\n";
    let a = with(text, "printer");
    assert_eq!(places(&a, FindingCode::NozzleMismatch), vec![(3, 1)]);
    assert_eq!(places(&a, FindingCode::MaterialMismatch), vec![(4, 1)]);
    assert!(
        a.findings[0].message.contains("0.6 mm nozzle"),
        "{}",
        a.findings[0].message
    );
}

#[test]
fn a_printer_file_on_a_router_is_refused_for_process_and_dialect() {
    let a = analyze_bytes(&read("gcode/cura.gcode"), Some(&profile("router")));
    assert_eq!(places(&a, FindingCode::WrongProcess).len(), 1);
    assert_eq!(places(&a, FindingCode::WrongFlavour).len(), 1);
    assert!(a.is_refused());
}

#[test]
fn a_file_that_fits_is_accepted_and_its_requirements_fit_too() {
    let bytes = read("gcode/prusaslicer.gcode");
    let text = String::from_utf8(bytes.clone()).unwrap();
    // The fixture prints at y -3 (the purge line): move it onto this bed for the check.
    let text = text
        .replace("G1 X60 Y-3", "G1 X60 Y3")
        .replace("filament_type = PETG", "filament_type = PLA");
    let p = profile("printer");
    let a = with(&text, "printer");
    assert!(!a.is_refused(), "{:?}", a.findings);
    assert_eq!(a.requirements().unmet_by(&p.capabilities), vec![]);
    let refused = analyze_bytes(&bytes, Some(&p));
    assert_eq!(places(&refused, FindingCode::OutOfVolume), vec![(34, 8)]);
    assert_eq!(refused.findings.len(), 1, "{:?}", refused.findings);
    assert_eq!(refused.requirements().unmet_by(&p.capabilities).len(), 1);
}

#[test]
fn findings_are_capped_per_code_but_still_refuse() {
    let mut text = String::from("G28\n");
    for i in 0..1000 {
        text.push_str(&format!("G1 X{} F600\n", 300 + i));
    }
    let a = with(&text, "printer");
    assert_eq!(a.findings.len(), KEPT_PER_CODE as usize);
    assert_eq!(a.suppressed_findings, 1000 - u64::from(KEPT_PER_CODE));
    assert!(a.is_refused());
}

#[test]
fn a_file_without_newlines_is_cut_at_the_line_limit() {
    let mut a = Analyzer::new();
    let chunk = vec![b' '; 256 * 1024];
    for _ in 0..8 {
        a.feed(&chunk);
    }
    a.feed(b"G1 X1\n");
    let a = a.finish();
    assert_eq!(a.lines, 1);
    assert_eq!(places(&a, FindingCode::LineTooLong), vec![(1, 1)]);
}

#[test]
fn requirements_and_summary_carry_the_figures_to_the_wire() {
    let a = analyze_bytes(&read("gcode/prusaslicer.gcode"), None);
    let req = a.requirements();
    assert_eq!(req.process, Process::Fdm);
    assert_eq!(req.flavour, Flavour::Reprap);
    assert_eq!(req.bounds, a.bounds);
    assert_eq!(req.hotend_temp_c, Some(215.0));
    assert_eq!(req.bed_temp_c, Some(60.0));
    assert_eq!(req.nozzle_diameter_mm, Some(0.4));
    assert_eq!(req.material.as_deref(), Some("PETG"));
    assert_eq!(req.tools, 1);
    let s = a.summary(Some(1.0));
    assert_eq!((s.lines, s.bytes, s.layers), (a.lines, a.bytes, 2));
    assert_close(s.extrusion_mm, 20.5);
    assert_close(s.material_grams.unwrap(), a.material_grams(1.0));
    let wire = with("M500\n", "printer").wire_findings();
    assert_eq!(wire[0].code, "forbidden_command");
    assert_eq!((wire[0].line, wire[0].column), (1, 1));
}

#[test]
fn a_header_density_of_zero_falls_back_to_the_typical_density_of_the_named_filament() {
    let file =
        |header: &str| format!("{header}M82\nG28\nG1 Z0.3 F600\nG1 X10 E10 F1200\nG1 X20 E20\n");
    let grams = |header: &str| {
        analyze_bytes(file(header).as_bytes(), None)
            .summary(None)
            .material_grams
    };
    let expected = std::f64::consts::PI * 0.875 * 0.875 * 20.0 / 1000.0;
    let zero = grams("; filament_type = PETG\n; filament_density = 0\n").expect("typical PETG");
    assert_close(zero, expected * 1.27);
    let stated = grams("; filament_type = PETG\n; filament_density = 1.5\n").expect("stated");
    assert_close(stated, expected * 1.5);
    assert_eq!(grams("; filament_type = UNOBTAINIUM\n"), None);
    assert_eq!(grams(""), None, "no header: no guess");
    assert_eq!(
        munifab_firmware_bridge::gcode::typical_density_g_cm3(" pla "),
        Some(1.24)
    );
}

#[test]
fn reading_from_a_file_gives_the_same_analysis_as_from_memory() {
    let file = std::fs::File::open(fixture("gcode/prusaslicer.gcode")).unwrap();
    let streamed = analyze_reader(std::io::BufReader::with_capacity(7, file), None).unwrap();
    assert_eq!(
        streamed,
        analyze_bytes(&read("gcode/prusaslicer.gcode"), None)
    );
}

proptest! {
    #[test]
    fn splitting_a_file_into_arbitrary_chunks_gives_the_same_report(
        which in 0usize..4,
        cuts in proptest::collection::vec(0usize..4096, 0..40),
    ) {
        let bytes = match which {
            0 => read("gcode/prusaslicer.gcode"),
            1 => read("gcode/cura.gcode"),
            2 => read("gcode/router.nc"),
            _ => SQUARE.replace('\n', "\r\n").into_bytes(),
        };
        let whole = analyze_bytes(&bytes, Some(&profile("printer")));
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut a = Analyzer::with_profile(&profile("printer"));
        let mut start = 0;
        for cut in cuts {
            a.feed(&bytes[start..cut]);
            start = cut;
        }
        a.feed(&bytes[start..]);
        prop_assert_eq!(a.finish(), whole);
    }
}

fn move_line() -> impl Strategy<Value = String> {
    let word = |letter: &'static str, lo: f64, hi: f64| {
        proptest::option::of((lo..hi).prop_map(move |v| format!(" {letter}{v:.3}")))
    };
    (
        prop_oneof![Just("G0"), Just("G1"), Just("g1")],
        word("X", -20.0, 240.0),
        word("Y", -20.0, 240.0),
        word("Z", 0.0, 5.0),
        word("E", -1.0, 3.0),
        proptest::option::of((300.0..9000.0f64).prop_map(|f| format!(" F{f:.0}"))),
        proptest::option::of(Just(" ; note")),
    )
        .prop_map(|(g, x, y, z, e, f, c)| {
            [Some(g.to_string()), x, y, z, e, f, c.map(str::to_string)]
                .into_iter()
                .flatten()
                .collect::<String>()
        })
}

proptest! {
    #[test]
    fn the_fast_path_for_plain_moves_agrees_with_the_general_one(
        lines in proptest::collection::vec(move_line(), 1..60),
        relative_e in any::<bool>(),
    ) {
        let head = if relative_e { "G28\nM83\n" } else { "G28\nM82\n" };
        let fast = format!("{head}{}\n", lines.join("\n"));
        // `G01`/`G00` mean the same but do not take the fast path.
        let general = fast.replace("G1 ", "G01 ").replace("g1 ", "G01 ").replace("G0 ", "G00 ");
        let p = profile("printer");
        let (a, b) = (analyze_bytes(fast.as_bytes(), Some(&p)), analyze_bytes(general.as_bytes(), Some(&p)));
        prop_assert_eq!(a.bounds, b.bounds);
        prop_assert_eq!(a.work_bounds, b.work_bounds);
        prop_assert_eq!(a.extrusion_mm, b.extrusion_mm);
        prop_assert_eq!(a.layers, b.layers);
        prop_assert_eq!(a.estimated_seconds, b.estimated_seconds);
        prop_assert_eq!(&a.tools, &b.tools);
        let places = |x: &Analysis| x.findings.iter().map(|f| (f.code, f.line)).collect::<Vec<_>>();
        prop_assert_eq!(places(&a), places(&b));
    }
}
