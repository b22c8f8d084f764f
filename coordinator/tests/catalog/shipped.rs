//! The repository's own `designs/` and `profiles/`: they sync with zero errors, every
//! G-code file names a shipped profile and stays inside that profile's limits.

use std::collections::BTreeMap;

use munifab_coordinator::catalog::{
    Catalog, DesignKey, DesignQuery, FileRole, MachineProfile, Process, ProfileId,
};

use crate::util::{Setup, assert_clean, at, workspace_root};

/// Sample G-code must stay small: the demo and tests stream every file.
const MAX_GCODE_BYTES: u64 = 400 * 1024;

fn profiles() -> BTreeMap<ProfileId, MachineProfile> {
    MachineProfile::load_dir(&workspace_root().join("profiles")).expect("shipped profiles load")
}

#[test]
fn the_shipped_profiles_include_the_generic_marlin_and_grbl_machines() {
    let p = profiles();
    let marlin = &p[&"generic-marlin-220".parse::<ProfileId>().unwrap()];
    assert_eq!(marlin.capabilities.process, Process::Fdm);
    assert_eq!(marlin.capabilities.build_volume.max.x, 220.0);
    let grbl = &p[&"generic-grbl-300x200".parse::<ProfileId>().unwrap()];
    assert_eq!(grbl.capabilities.process, Process::Cnc);
    assert_eq!(grbl.capabilities.build_volume.min.z, -40.0);
}

fn shipped_catalog(setup: &Setup) -> Catalog {
    Catalog::open(setup.config.clone())
        .expect("catalog opens")
        .with_profiles(profiles().values())
}

#[test]
fn the_shipped_designs_sync_with_zero_errors_and_known_profiles() {
    let setup = Setup::new().overlay("commons", &workspace_root().join("designs"));
    let catalog = shipped_catalog(&setup);
    let report = catalog.sync(at(0));
    assert_clean(&report);
    assert!(report.designs >= 6, "only {} designs", report.designs);

    let all = catalog.search(&DesignQuery::default()).items;
    let fdm = all.iter().filter(|d| d.process == Process::Fdm).count();
    let cnc = all.iter().filter(|d| d.process == Process::Cnc).count();
    assert!(fdm >= 3 && cnc >= 2, "fdm {fdm}, cnc {cnc}");
    for licence in ["CERN-OHL-S-2.0", "CC-BY-SA-4.0", "LicenseRef-PPL"] {
        assert!(
            all.iter().any(|d| d.licence == licence),
            "no design under {licence}"
        );
    }
    assert!(
        all.iter().any(|d| d.derived_from.is_some()),
        "no adaptation"
    );
    for summary in &all {
        let design = catalog.design(&summary.key).unwrap().design;
        assert!(
            design.files.iter().any(|f| f.role == FileRole::Licence),
            "{} has no licence file",
            design.key
        );
        assert!(
            !design.manifest.gcode.is_empty(),
            "{} has no G-code",
            design.key
        );
        if design.manifest.process == Process::Fdm {
            let has = |ext: &str| {
                design
                    .manifest
                    .sources
                    .iter()
                    .any(|s| s.file.to_string().ends_with(ext))
            };
            assert!(
                has(".scad") && has(".stl"),
                "{} lacks SCAD or STL",
                design.key
            );
        }
    }
}

/// A line-by-line bounds and limits check, deliberately simple: it only needs to hold
/// for the G-code this repository ships (the full analysis lives in the firmware
/// bridge).
fn check_gcode(name: &str, text: &str, profile: &MachineProfile) {
    let caps = &profile.capabilities;
    let (min, max) = (caps.build_volume.min, caps.build_volume.max);
    let mut pos: [Option<f64>; 3] = [None; 3];
    let mut relative = false;
    for (n, raw) in text.lines().enumerate() {
        let at = || format!("{name}:{}: `{raw}`", n + 1);
        let trimmed = raw.trim_start();
        assert!(
            !trimmed.starts_with('$'),
            "{}: settings commands are not allowed",
            at()
        );
        let mut line = raw.split(';').next().unwrap_or("").to_ascii_uppercase();
        while let (Some(open), Some(close)) = (line.find('('), line.find(')')) {
            line.replace_range(open..=close, " ");
        }
        let words: Vec<(char, f64)> = line
            .split_whitespace()
            .map(|w| {
                let (letter, number) = w.split_at(1);
                let value = number
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad word `{w}`", at()));
                (letter.chars().next().unwrap(), value)
            })
            .collect();
        let Some(&(letter, code)) = words.first() else {
            continue;
        };
        let arg = |l: char| words.iter().find(|(w, _)| *w == l).map(|(_, v)| *v);
        match (letter, code as u32) {
            ('G', 90) => relative = false,
            ('G', 91) => relative = true,
            ('G', 28) => {
                pos = [
                    Some(min.x.max(0.0)),
                    Some(min.y.max(0.0)),
                    Some(min.z.max(0.0)),
                ]
            }
            ('G', 92) => assert!(
                arg('X').is_none() && arg('Y').is_none() && arg('Z').is_none(),
                "{}: G92 on an axis",
                at()
            ),
            ('G', 0..=3) => {
                for (i, axis) in ['X', 'Y', 'Z'].into_iter().enumerate() {
                    let Some(v) = arg(axis) else { continue };
                    pos[i] = if relative {
                        pos[i].map(|p| p + v)
                    } else {
                        Some(v)
                    };
                    if let Some(p) = pos[i] {
                        let (lo, hi) = [(min.x, max.x), (min.y, max.y), (min.z, max.z)][i];
                        assert!(
                            p >= lo - 1e-6 && p <= hi + 1e-6,
                            "{}: {axis}{p} outside {lo}..{hi}",
                            at()
                        );
                    }
                }
            }
            ('M', 104 | 109) => {
                let limit = caps.max_hotend_temp_c.expect("hotend limit");
                assert!(
                    arg('S').unwrap_or(0.0) <= limit,
                    "{}: hotend over {limit}",
                    at()
                );
            }
            ('M', 140 | 190) => {
                let limit = caps.max_bed_temp_c.expect("bed limit");
                assert!(
                    arg('S').unwrap_or(0.0) <= limit,
                    "{}: bed over {limit}",
                    at()
                );
            }
            ('M', 3 | 4) => {
                let limit = caps.spindle_max_rpm.expect("spindle limit");
                assert!(
                    arg('S').unwrap_or(0.0) <= limit,
                    "{}: spindle over {limit}",
                    at()
                );
            }
            _ => {}
        }
    }
}

#[test]
fn every_shipped_gcode_file_is_small_and_inside_its_profile_limits() {
    let setup = Setup::new().overlay("commons", &workspace_root().join("designs"));
    let catalog = shipped_catalog(&setup);
    assert_clean(&catalog.sync(at(0)));
    let profiles = profiles();
    let mut checked = 0;
    for summary in catalog.search(&DesignQuery::default()).items {
        let design = catalog.design(&summary.key).unwrap().design;
        for g in &design.manifest.gcode {
            let file = design.gcode_file(&g.profile).unwrap();
            assert!(
                file.size <= MAX_GCODE_BYTES,
                "{} is {} bytes",
                file.repo_path,
                file.size
            );
            let pinned = catalog
                .resolve(&design.pinned_spec().parse().unwrap(), &g.profile)
                .unwrap();
            let text = String::from_utf8(pinned.bytes).expect("G-code is text");
            check_gcode(&file.repo_path, &text, &profiles[&g.profile]);
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} G-code files checked");
}

#[test]
fn the_gcode_check_catches_a_move_outside_the_volume_and_a_settings_command() {
    let p = profiles();
    let marlin = &p[&"generic-marlin-220".parse::<ProfileId>().unwrap()];
    let grbl = &p[&"generic-grbl-300x200".parse::<ProfileId>().unwrap()];
    for (text, profile) in [
        ("G28\nG1 X230 Y10\n", marlin),
        ("M104 S300\n", marlin),
        ("G28\nG91\nG1 Z251\n", marlin),
        ("$H\n", grbl),
        ("M3 S20000\n", grbl),
        ("G1 Z-41\n", grbl),
    ] {
        let outcome = std::panic::catch_unwind(|| check_gcode("t", text, profile));
        assert!(outcome.is_err(), "`{text}` passed");
    }
}

#[test]
fn the_repository_itself_works_as_a_git_source_with_subdir_designs() {
    // This repository, its `designs/` folder, at HEAD. The adaptation's provenance is not
    // checked here: its checked-in revision is a placeholder since the history was
    // squashed (docs/designs.md); `seed.rs` checks the chain the demo serves.
    let mut setup = Setup::new().git(
        "commons",
        &workspace_root().display().to_string(),
        Some("designs"),
    );
    setup.config.sources[0].git_ref = "HEAD".into();
    let catalog = shipped_catalog(&setup);
    let report = catalog.sync(at(0));
    assert_clean(&report);
    assert!(report.designs >= 6, "only {} designs", report.designs);
    let adaptation = catalog
        .design(&DesignKey {
            source: "commons".parse().unwrap(),
            id: "wall-bracket-m4".parse().unwrap(),
        })
        .unwrap();
    assert!(adaptation.design.manifest.derived_from.is_some());
}
