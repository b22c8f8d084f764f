//! Every manifest error case, each through a real sync of a real git repository: the
//! design is left out and the error names the file, the key and the problem.

use munifab_coordinator::catalog::{Catalog, DesignError, MachineProfile, SyncReport};

use crate::util::{GitRepo, Setup, at, design, manifest, only_error};

/// Sync a repository with one good design and the design `bad` as changed by `edit`.
fn sync_with_bad(edit: impl FnOnce(&GitRepo)) -> SyncReport {
    sync_with_bad_in(Setup::new(), edit, |c| c)
}

fn sync_with_bad_in(
    setup: Setup,
    edit: impl FnOnce(&GitRepo),
    prepare: impl FnOnce(Catalog) -> Catalog,
) -> SyncReport {
    let repo = GitRepo::new();
    design(repo.path(), "good", "good", "G28\n");
    design(repo.path(), "bad", "bad", "G28\n");
    edit(&repo);
    repo.commit("designs");
    let mut setup = setup.git("commons", &repo.url(), None);
    setup.config.max_file_bytes = 1000;
    let catalog = setup.open().map(prepare);
    let report = catalog.sync(at(0));
    assert_eq!(
        report.designs, 1,
        "the good design is still served: {:#?}",
        report.errors
    );
    report
}

fn check(e: &DesignError, key: &str, words: &[&str]) {
    assert_eq!(e.path.as_deref(), Some("bad/design.toml"));
    assert_eq!(e.key.as_deref(), Some(key), "{}", e.message);
    assert!(
        e.message.starts_with("bad/design.toml: key `"),
        "{}",
        e.message
    );
    for w in words {
        assert!(e.message.contains(w), "`{w}` missing from: {}", e.message);
    }
}

fn set_manifest(repo: &GitRepo, extra: &str, replace: (&str, &str)) {
    repo.write(
        "bad/design.toml",
        manifest("bad", extra).replace(replace.0, replace.1),
    );
}

#[test]
fn an_unknown_key_is_an_error() {
    let report = sync_with_bad(|r| set_manifest(r, "nozzle = 0.4", ("", "")));
    check(only_error(&report), "nozzle", &["unknown key"]);
}

#[test]
fn a_non_open_licence_is_an_error_saying_why() {
    let report = sync_with_bad(|r| set_manifest(r, "", ("CERN-OHL-S-2.0", "CC-BY-NC-SA-4.0")));
    check(
        only_error(&report),
        "licence",
        &["CC-BY-NC-SA-4.0", "non-commercial"],
    );
}

#[test]
fn an_unknown_licence_is_an_error() {
    let report = sync_with_bad(|r| set_manifest(r, "", ("CERN-OHL-S-2.0", "Proprietary")));
    check(
        only_error(&report),
        "licence",
        &["Proprietary", "not a licence identifier"],
    );
}

#[test]
fn a_path_with_dot_dot_is_an_error() {
    let report = sync_with_bad(|r| {
        set_manifest(
            r,
            "",
            ("file = \"part.stl\"", "file = \"../good/part.stl\""),
        )
    });
    check(
        only_error(&report),
        "sources[0].file",
        &["..", "inside the design folder"],
    );
}

#[test]
fn an_absolute_path_is_an_error() {
    let report = sync_with_bad(|r| {
        set_manifest(
            r,
            "",
            ("file = \"part.gcode\"", "file = \"/etc/part.gcode\""),
        )
    });
    check(only_error(&report), "gcode[0].file", &["absolute"]);
}

#[test]
fn a_symlink_leaving_the_folder_is_an_error() {
    let report = sync_with_bad(|r| {
        std::fs::remove_file(r.path().join("bad/part.gcode")).unwrap();
        std::os::unix::fs::symlink("../good/part.gcode", r.path().join("bad/part.gcode")).unwrap();
    });
    check(
        only_error(&report),
        "gcode[0].file",
        &["symbolic link", "part.gcode", "leaves the design folder"],
    );
}

#[test]
fn an_absolute_symlink_is_an_error() {
    let report = sync_with_bad(|r| {
        std::fs::remove_file(r.path().join("bad/part.stl")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", r.path().join("bad/part.stl")).unwrap();
    });
    check(
        only_error(&report),
        "sources[0].file",
        &["leaves the design folder"],
    );
}

#[test]
fn a_symlinked_folder_leaving_the_design_is_an_error() {
    let report = sync_with_bad(|r| {
        std::os::unix::fs::symlink("../good", r.path().join("bad/shared")).unwrap();
        set_manifest(r, "", ("file = \"part.stl\"", "file = \"shared/part.stl\""));
    });
    check(
        only_error(&report),
        "sources[0].file",
        &["`shared`", "leaves the design folder"],
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let report = sync_with_bad(|r| std::fs::remove_file(r.path().join("bad/part.stl")).unwrap());
    check(
        only_error(&report),
        "sources[0].file",
        &["part.stl", "does not exist"],
    );
}

#[test]
fn an_oversized_file_is_an_error() {
    let report = sync_with_bad(|r| r.write("bad/part.gcode", "G1 X1\n".repeat(200)));
    check(
        only_error(&report),
        "gcode[0].file",
        &["1200 bytes", "limit of 1000 bytes"],
    );
}

#[test]
fn a_bad_slug_is_an_error() {
    let report = sync_with_bad(|r| set_manifest(r, "", ("id = \"bad\"", "id = \"Bad Design\"")));
    check(only_error(&report), "id", &["Bad Design", "not a slug"]);
}

#[test]
fn a_folder_named_as_a_file_is_an_error() {
    let report = sync_with_bad(|r| {
        std::fs::remove_file(r.path().join("bad/part.stl")).unwrap();
        r.write("bad/part.stl/inside.txt", "x");
    });
    check(only_error(&report), "sources[0].file", &["is a folder"]);
}

#[test]
fn a_duplicate_id_in_one_source_is_an_error() {
    // Folders are read in order, so `bad` keeps the id and `good` is refused.
    let report = sync_with_bad(|r| set_manifest(r, "", ("id = \"bad\"", "id = \"good\"")));
    let e = only_error(&report);
    assert_eq!(e.path.as_deref(), Some("good/design.toml"));
    assert_eq!(e.key.as_deref(), Some("id"));
    assert!(e.message.contains("already used by `bad`"), "{}", e.message);
}

fn profiles() -> Vec<MachineProfile> {
    MachineProfile::load_dir(&crate::util::workspace_root().join("profiles"))
        .expect("shipped profiles load")
        .into_values()
        .collect()
}

#[test]
fn gcode_for_an_unknown_profile_is_an_error_when_profiles_are_known() {
    let report = sync_with_bad_in(
        Setup::new(),
        |r| set_manifest(r, "", ("generic-marlin-220", "no-such-printer")),
        |c| c.with_profiles(&profiles()),
    );
    check(
        only_error(&report),
        "gcode[0].profile",
        &["no-such-printer", "not a known machine profile"],
    );
}

#[test]
fn gcode_for_a_profile_of_another_process_is_an_error() {
    let report = sync_with_bad_in(
        Setup::new(),
        |r| set_manifest(r, "", ("generic-marlin-220", "generic-grbl-300x200")),
        |c| c.with_profiles(&profiles()),
    );
    check(
        only_error(&report),
        "gcode[0].profile",
        &["cnc machines", "design is fdm"],
    );
}

#[test]
fn a_symlink_loop_is_an_error_not_a_hang() {
    let report = sync_with_bad(|r| {
        std::fs::remove_file(r.path().join("bad/part.stl")).unwrap();
        std::os::unix::fs::symlink("loop.stl", r.path().join("bad/part.stl")).unwrap();
        std::os::unix::fs::symlink("part.stl", r.path().join("bad/loop.stl")).unwrap();
    });
    check(
        only_error(&report),
        "sources[0].file",
        &["too many symbolic links"],
    );
}
