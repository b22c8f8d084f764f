//! `munifab-bridge analyze` as a maker runs it: real files, real process, exit codes.
#![cfg(feature = "serial")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn analyze(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_munifab-bridge"))
        .arg("analyze")
        .args(args)
        .output()
        .expect("the binary runs")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("munifab-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn a_valid_file_exits_zero_with_every_json_key() {
    let file = fixture("gcode/cura.gcode");
    let out = analyze(&[file.as_os_str(), "--json".as_ref()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    for key in [
        "lines",
        "bytes",
        "bounds",
        "extrusion_mm",
        "estimated_seconds",
        "slicer",
        "layers",
        "findings",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["bytes"], std::fs::metadata(&file).unwrap().len());
    assert_eq!(v["bounds"]["max"]["x"], 30.0);
    assert_eq!(v["bounds"]["min"]["z"], 0.0);
    assert_eq!(v["slicer"]["name"], "Cura");
    assert_eq!(v["slicer"]["estimated_seconds"], 1234.0);
    assert_eq!(v["slicer"]["filament_mm"], 750.0);
    assert_eq!(v["layers"], 1);
}

#[test]
fn a_refused_file_exits_one_and_lists_the_finding() {
    let file = temp_file("eeprom.gcode", "G28\nG1 X10 F600\nM500\n");
    let out = analyze(&[file.as_os_str(), "--json".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let f = &v["findings"][0];
    assert_eq!(f["severity"], "error");
    assert_eq!(f["line"], 3);
    assert!(f["message"].as_str().unwrap().contains("EEPROM"), "{f}");
}

#[test]
fn a_profile_refuses_what_the_machine_cannot_do_in_the_readable_report() {
    let file = fixture("gcode/router.nc");
    let profile = fixture("profiles/printer.toml");
    let out = analyze(&[file.as_os_str(), "--profile".as_ref(), profile.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains("wrong_process"), "{report}");
    assert!(report.contains("REFUSED"), "{report}");
    let ok = analyze(&[
        file.as_os_str(),
        "--profile".as_ref(),
        fixture("profiles/router.toml").as_os_str(),
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[test]
fn an_unreadable_file_or_profile_exits_two_with_a_reason() {
    let out = analyze(&["/nonexistent/part.gcode".as_ref()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/part.gcode"));

    let bad = temp_file(
        "bad.toml",
        &std::fs::read_to_string(fixture("profiles/printer.toml"))
            .unwrap()
            .replace("tool_count = 1", "tool_count = 1\nmax_speed = 3"),
    );
    let file = fixture("gcode/cura.gcode");
    let out = analyze(&[file.as_os_str(), "--profile".as_ref(), bad.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("capabilities.max_speed"),
        "{err}"
    );
}
