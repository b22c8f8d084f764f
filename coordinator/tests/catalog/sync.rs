use munifab_coordinator::catalog::{
    CatalogError, DesignKey, DesignQuery, DesignSpec, FileRole, Process, ProfileId, Sha256,
    SourceKind,
};

use crate::util::{GitRepo, Setup, assert_clean, at, design, manifest, only_error, write};

fn key(s: &str) -> DesignKey {
    let (source, id) = s.split_once('/').expect("source/id");
    DesignKey {
        source: source.parse().unwrap(),
        id: id.parse().unwrap(),
    }
}

fn marlin() -> ProfileId {
    "generic-marlin-220".parse().unwrap()
}

#[test]
fn sync_reads_designs_from_a_git_repository_and_records_its_commit() {
    let repo = GitRepo::new();
    design(repo.path(), "designs/cube", "cube", "G28\nG1 X10 Y10\n");
    design(repo.path(), "designs/hook", "hook", "G28\n");
    repo.write("README.md", "not a design");
    let commit = repo.commit("two designs");

    let setup = Setup::new().git("commons", &repo.url(), Some("designs"));
    let catalog = setup.open();
    let report = catalog.sync(at(0));
    assert_clean(&report);
    assert_eq!(report.designs, 2);
    assert_eq!(report.sources[0].commit, Some(commit));
    assert_eq!(report.sources[0].synced_at, Some(at(0)));

    let detail = catalog.design(&key("commons/cube")).unwrap();
    let d = &detail.design;
    assert_eq!(d.commit, commit);
    assert_eq!(d.folder, "designs/cube");
    let gcode = d.gcode_file(&marlin()).expect("gcode for the profile");
    assert_eq!(gcode.repo_path, "designs/cube/part.gcode");
    assert_eq!(gcode.sha256, Sha256::of(b"G28\nG1 X10 Y10\n"));
    assert_eq!(gcode.size, 15);
    assert!(d.files.iter().any(|f| f.role == FileRole::Licence));
    assert!(
        d.licence_text
            .as_deref()
            .unwrap()
            .contains("CERN-OHL-S-2.0")
    );
    assert!(
        detail.attribution.contains("Test Author"),
        "{}",
        detail.attribution
    );
    assert!(
        detail
            .attribution
            .contains(&format!("commons/cube@{commit}"))
    );
}

#[test]
fn a_local_path_works_as_well_as_a_file_url() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    repo.commit("one");
    let setup = Setup::new().git("commons", &repo.path().display().to_string(), None);
    let report = setup.open().sync(at(0));
    assert_clean(&report);
    assert_eq!(report.designs, 1);
}

#[test]
fn a_new_revision_and_a_deleted_design_show_after_the_next_sync() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28 ; v1\n");
    design(repo.path(), "hook", "hook", "G28\n");
    let first = repo.commit("v1");
    let setup = Setup::new().git("commons", &repo.url(), None);
    let catalog = setup.open();
    assert_clean(&catalog.sync(at(0)));

    repo.write("cube/part.gcode", "G28 ; v2\n");
    repo.remove("hook");
    let second = repo.commit("v2, hook removed");
    let report = catalog.sync(at(60));
    assert_clean(&report);
    assert_eq!(report.designs, 1);
    assert_eq!(report.sources[0].commit, Some(second));

    let cube = catalog.design(&key("commons/cube")).unwrap().design;
    assert_eq!(cube.commit, second);
    let pinned = catalog
        .resolve(&"commons/cube".parse().unwrap(), &marlin())
        .unwrap();
    assert_eq!(pinned.bytes, b"G28 ; v2\n");
    assert!(matches!(
        catalog.design(&key("commons/hook")),
        Err(CatalogError::UnknownDesign(_))
    ));
    // The deleted design is still there at the old commit.
    let old_hook = catalog.design_at(&key("commons/hook"), first).unwrap();
    assert_eq!(old_hook.design.commit, first);
}

#[test]
fn a_job_pinned_to_an_old_commit_gets_the_old_file_after_the_source_moves_on() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28 ; first\n");
    repo.commit("first");
    let setup = Setup::new().git("commons", &repo.url(), None);
    let catalog = setup.open();
    assert_clean(&catalog.sync(at(0)));
    let pinned = catalog
        .resolve(&"commons/cube".parse().unwrap(), &marlin())
        .unwrap();
    let spec: DesignSpec = format!("commons/cube@{}", pinned.commit).parse().unwrap();

    // The upstream rewrites its history: the old commit no longer exists there at all.
    repo.git(&["checkout", "-q", "--orphan", "rewritten"]);
    repo.write("cube/part.gcode", "G28 ; second\n");
    repo.commit("rewritten");
    repo.git(&["branch", "-D", "main"]);
    repo.git(&["branch", "-m", "main"]);
    repo.git(&["reflog", "expire", "--expire=now", "--all"]);
    repo.git(&["gc", "-q", "--prune=now"]);
    assert_clean(&catalog.sync(at(60)));

    let again = catalog.resolve(&spec, &marlin()).unwrap();
    assert_eq!(again.bytes, b"G28 ; first\n");
    assert_eq!(again.sha256, pinned.sha256);
    assert_eq!(again.commit, pinned.commit);
    assert_eq!(again.path, "cube/part.gcode");
    let bytes = catalog
        .file(
            &"commons".parse().unwrap(),
            pinned.commit,
            "cube/part.gcode",
        )
        .unwrap();
    assert_eq!(bytes, b"G28 ; first\n");
    let latest = catalog
        .resolve(&"commons/cube".parse().unwrap(), &marlin())
        .unwrap();
    assert_eq!(latest.bytes, b"G28 ; second\n");
    // A reopened catalog (a restarted coordinator) still serves the pin.
    drop(catalog);
    let reopened = setup.open();
    assert_eq!(
        reopened.resolve(&spec, &marlin()).unwrap().bytes,
        b"G28 ; first\n"
    );
}

#[test]
fn one_bad_design_does_not_stop_the_rest() {
    let repo = GitRepo::new();
    design(repo.path(), "good", "good", "G28\n");
    design(repo.path(), "bad", "bad", "G28\n");
    repo.write("bad/design.toml", manifest("bad", "colour = \"red\""));
    let commit = repo.commit("one good, one bad");
    let catalog = Setup::new().git("commons", &repo.url(), None).open();
    let report = catalog.sync(at(0));
    assert_eq!(report.designs, 1);
    let e = only_error(&report);
    assert_eq!(e.source.as_str(), "commons");
    assert_eq!(e.commit, Some(commit));
    assert_eq!(e.path.as_deref(), Some("bad/design.toml"));
    assert_eq!(e.key.as_deref(), Some("colour"));
    assert!(e.message.contains("bad/design.toml"), "{}", e.message);
    assert_eq!(catalog.errors(), report.errors);
}

#[test]
fn a_failing_source_keeps_serving_its_previous_designs() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    let commit = repo.commit("one");
    let setup = Setup::new().git("commons", &repo.url(), None);
    let catalog = setup.open();
    assert_clean(&catalog.sync(at(0)));

    std::fs::remove_dir_all(repo.path().join(".git")).unwrap();
    let report = catalog.sync(at(60));
    let e = only_error(&report);
    assert_eq!(e.path, None);
    assert!(e.message.contains("commons"), "{}", e.message);
    let status = &report.sources[0];
    assert!(status.error.is_some());
    assert_eq!(status.commit, Some(commit));
    assert_eq!(
        catalog.design(&key("commons/cube")).unwrap().design.commit,
        commit
    );
}

#[test]
fn a_missing_ref_is_a_source_error() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    repo.commit("one");
    let mut setup = Setup::new().git("commons", &repo.url(), None);
    setup.config.sources[0].git_ref = "no-such-branch".into();
    let report = setup.open().sync(at(0));
    let e = only_error(&report);
    assert!(e.message.contains("no-such-branch"), "{}", e.message);
    assert_eq!(report.designs, 0);
}

#[test]
fn a_reopened_catalog_serves_the_last_sync_without_fetching() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    let commit = repo.commit("one");
    let setup = Setup::new().git("commons", &repo.url(), None);
    assert_clean(&setup.open().sync(at(0)));
    std::fs::remove_dir_all(repo.path().join(".git")).unwrap();
    let reopened = setup.open();
    assert_eq!(reopened.sources()[0].commit, Some(commit));
    assert_eq!(
        reopened.design(&key("commons/cube")).unwrap().design.commit,
        commit
    );
}

#[test]
fn overlays_serve_local_designs_and_keep_old_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    design(
        dir.path(),
        "bracket-long",
        "bracket-long",
        "G28 ; local v1\n",
    );
    write(
        &dir.path().join(".git-ignored-by-overlay/x"),
        "hidden folders are skipped",
    );
    let catalog = Setup::new().overlay("fablab", dir.path()).open();
    let first = catalog.sync(at(0));
    assert_clean(&first);
    let first_commit = first.sources[0].commit.unwrap();
    assert!(matches!(first.sources[0].kind, SourceKind::Overlay { .. }));

    // Unchanged folder, same snapshot commit.
    assert_eq!(catalog.sync(at(30)).sources[0].commit, Some(first_commit));

    write(
        &dir.path().join("bracket-long/part.gcode"),
        "G28 ; local v2\n",
    );
    let second = catalog.sync(at(60));
    let second_commit = second.sources[0].commit.unwrap();
    assert_ne!(second_commit, first_commit);
    let spec = |c| {
        format!("fablab/bracket-long@{c}")
            .parse::<DesignSpec>()
            .unwrap()
    };
    assert_eq!(
        catalog
            .resolve(&spec(first_commit), &marlin())
            .unwrap()
            .bytes,
        b"G28 ; local v1\n"
    );
    assert_eq!(
        catalog
            .resolve(&spec(second_commit), &marlin())
            .unwrap()
            .bytes,
        b"G28 ; local v2\n"
    );
}

#[test]
fn an_overlay_symlink_inside_the_folder_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    design(dir.path(), "cube", "cube", "G28\n");
    let folder = dir.path().join("cube");
    std::fs::create_dir_all(folder.join("gcode")).unwrap();
    std::fs::rename(folder.join("part.gcode"), folder.join("gcode/real.gcode")).unwrap();
    std::os::unix::fs::symlink("gcode/real.gcode", folder.join("part.gcode")).unwrap();
    let catalog = Setup::new().overlay("fablab", dir.path()).open();
    assert_clean(&catalog.sync(at(0)));
    assert_eq!(
        catalog
            .resolve(&"cube".parse().unwrap(), &marlin())
            .unwrap()
            .bytes,
        b"G28\n"
    );
}

#[test]
fn two_sources_with_the_same_id_are_told_apart_by_source_name() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28 ; global\n");
    repo.commit("one");
    let dir = tempfile::tempdir().unwrap();
    design(dir.path(), "cube", "cube", "G28 ; local\n");
    let catalog = Setup::new()
        .git("commons", &repo.url(), None)
        .overlay("fablab", dir.path())
        .open();
    assert_clean(&catalog.sync(at(0)));
    let global = catalog
        .resolve(&"commons/cube".parse().unwrap(), &marlin())
        .unwrap();
    let local = catalog
        .resolve(&"fablab/cube".parse().unwrap(), &marlin())
        .unwrap();
    assert_eq!(global.bytes, b"G28 ; global\n");
    assert_eq!(local.bytes, b"G28 ; local\n");
    match catalog.resolve(&"cube".parse().unwrap(), &marlin()) {
        Err(CatalogError::AmbiguousDesign { sources, .. }) => assert_eq!(sources.len(), 2),
        other => panic!("expected ambiguity, got {other:?}"),
    }
}

#[test]
fn a_profile_without_gcode_is_refused_with_the_profiles_that_exist() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    repo.commit("one");
    let catalog = Setup::new().git("commons", &repo.url(), None).open();
    assert_clean(&catalog.sync(at(0)));
    let grbl: ProfileId = "generic-grbl-300x200".parse().unwrap();
    match catalog.resolve(&"commons/cube".parse().unwrap(), &grbl) {
        Err(CatalogError::NoGcode { available, .. }) => assert_eq!(available, [marlin()]),
        other => panic!("expected NoGcode, got {other:?}"),
    }
}

#[test]
fn files_are_served_by_content_hash_and_unknown_hashes_are_refused() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28 ; hashed\n");
    repo.commit("one");
    let catalog = Setup::new().git("commons", &repo.url(), None).open();
    assert_clean(&catalog.sync(at(0)));
    let hash = Sha256::of(b"G28 ; hashed\n");
    assert_eq!(catalog.file_by_hash(&hash).unwrap(), b"G28 ; hashed\n");
    let unknown = Sha256::of(b"nothing like this");
    assert!(matches!(
        catalog.file_by_hash(&unknown),
        Err(CatalogError::HashNotFound(_))
    ));
    let commit = catalog.sources()[0].commit.unwrap();
    let source = "commons".parse().unwrap();
    assert!(matches!(
        catalog.file(&source, commit, "cube/none.gcode"),
        Err(CatalogError::FileNotFound { .. })
    ));
    assert!(matches!(
        catalog.file(&source, commit, "../cube/part.gcode"),
        Err(CatalogError::FileNotFound { .. })
    ));
}

#[test]
fn search_filters_by_text_process_material_licence_and_tag_with_paging() {
    let dir = tempfile::tempdir().unwrap();
    for (id, extra_licence, process, material, tag) in [
        ("alpha", "CERN-OHL-S-2.0", "fdm", "PLA", "calibration"),
        ("beta", "CC-BY-SA-4.0", "fdm", "PETG", "bicycle"),
        ("gamma", "LicenseRef-PPL", "cnc", "PLYWOOD", "sign"),
    ] {
        let text = manifest(id, "")
            .replace("CERN-OHL-S-2.0", extra_licence)
            .replace("process = \"fdm\"", &format!("process = \"{process}\""))
            .replace("[\"PLA\"]", &format!("[\"{material}\"]"))
            .replace("[\"test\"]", &format!("[\"{tag}\"]"));
        write(&dir.path().join(id).join("design.toml"), text);
        write(&dir.path().join(id).join("part.stl"), "solid\n");
        write(&dir.path().join(id).join("part.gcode"), "G28\n");
    }
    let catalog = Setup::new().overlay("lab", dir.path()).open();
    assert_clean(&catalog.sync(at(0)));
    let ids = |q: DesignQuery| {
        catalog
            .search(&q)
            .items
            .into_iter()
            .map(|s| s.key.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(DesignQuery::default()), ["alpha", "beta", "gamma"]);
    let q = |f: fn(&mut DesignQuery)| {
        let mut q = DesignQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(ids(q(|q| q.text = Some("design BETA".into()))), ["beta"]);
    assert_eq!(ids(q(|q| q.process = Some(Process::Cnc))), ["gamma"]);
    assert_eq!(ids(q(|q| q.material = Some("petg".into()))), ["beta"]);
    assert_eq!(
        ids(q(|q| q.licence = Some("LicenseRef-PPL".into()))),
        ["gamma"]
    );
    assert_eq!(ids(q(|q| q.tag = Some("calibration".into()))), ["alpha"]);
    assert!(ids(q(|q| q.text = Some("nothing matches this".into()))).is_empty());
    let page = catalog.search(&DesignQuery {
        offset: 1,
        limit: Some(1),
        ..DesignQuery::default()
    });
    assert_eq!(page.total, 3);
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].key.id.as_str(), "beta");
}

#[test]
fn a_tag_can_be_followed_instead_of_a_branch() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28 ; tagged\n");
    let tagged = repo.commit("release");
    repo.git(&["tag", "v1"]);
    repo.write("cube/part.gcode", "G28 ; after the tag\n");
    repo.commit("later");
    let mut setup = Setup::new().git("commons", &repo.url(), None);
    setup.config.sources[0].git_ref = "v1".into();
    let report = setup.open().sync(at(0));
    assert_clean(&report);
    assert_eq!(report.sources[0].commit, Some(tagged));
}

#[test]
fn the_catalog_can_be_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<munifab_coordinator::catalog::Catalog>();
}

#[test]
fn a_catalog_that_never_synced_serves_nothing_and_reports_no_error() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    repo.commit("one");
    let catalog = Setup::new().git("commons", &repo.url(), None).open();
    let status = &catalog.sources()[0];
    assert_eq!(status.commit, None);
    assert_eq!(status.error, None);
    assert!(catalog.errors().is_empty());
    assert_eq!(catalog.search(&DesignQuery::default()).total, 0);
}

#[test]
fn reports_and_details_serialise_to_plain_json_for_the_api() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    let commit = repo.commit("one");
    let catalog = Setup::new().git("commons", &repo.url(), None).open();
    let report = serde_json::to_value(catalog.sync(at(0))).unwrap();
    assert_eq!(report["sources"][0]["synced_at"], "2027-01-15T08:00:00Z");
    assert_eq!(report["sources"][0]["commit"], commit.to_string());
    assert_eq!(report["sources"][0]["kind"]["kind"], "git");
    let detail = serde_json::to_value(catalog.design(&key("commons/cube")).unwrap()).unwrap();
    let d = &detail["design"];
    assert_eq!(d["key"]["id"], "cube");
    assert_eq!(d["manifest"]["licence"], "CERN-OHL-S-2.0");
    assert_eq!(d["manifest"]["process"], "fdm");
    let gcode = d["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["role"]["kind"] == "gcode")
        .unwrap();
    assert_eq!(gcode["role"]["profile"], "generic-marlin-220");
    assert_eq!(gcode["sha256"], Sha256::of(b"G28\n").to_string());
}
