//! `commit_designs_as_git_source`: a folder of designs committed as originals, then
//! adaptations pinned to the originals' commit, so provenance resolves in the demo even
//! though this repository's own history was squashed.

use munifab_coordinator::catalog::{
    Catalog, CatalogError, MachineProfile, ProvenanceLink, SeedError, commit_designs_as_git_source,
};

use crate::util::{GitRepo, Setup, assert_clean, at, design, key, manifest, workspace_root, write};

#[test]
fn the_sample_designs_seeded_as_a_git_source_resolve_the_adaptations_provenance() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("commons.git");
    let seeded = commit_designs_as_git_source(
        &workspace_root().join("designs"),
        &dest,
        &"commons".parse().unwrap(),
        at(0),
    )
    .expect("the designs commit");
    assert_ne!(seeded.originals, seeded.head);
    let rewritten: Vec<&str> = seeded.rewritten.iter().map(|i| i.as_str()).collect();
    assert_eq!(rewritten, ["wall-bracket-m4"]);

    // What the demo configures: the seeded repository as the source `commons`.
    let setup = Setup::new().git("commons", &dest.display().to_string(), None);
    let profiles = MachineProfile::load_dir(&workspace_root().join("profiles")).unwrap();
    let catalog = Catalog::open(setup.config.clone())
        .unwrap()
        .with_profiles(profiles.values());
    let report = catalog.sync(at(0));
    assert_clean(&report);
    assert!(report.designs >= 6, "only {} designs", report.designs);
    assert_eq!(report.sources[0].commit, Some(seeded.head));

    let adaptation = catalog.design(&key("commons", "wall-bracket-m4")).unwrap();
    let d = adaptation.design.manifest.derived_from.as_ref().unwrap();
    assert_eq!(d.revision, seeded.originals);
    match adaptation.provenance.as_slice() {
        [
            ProvenanceLink::Resolved {
                key, commit, title, ..
            },
        ] => {
            assert_eq!(key, &crate::util::key("commons", "wall-bracket"));
            assert_eq!(*commit, seeded.originals);
            assert!(title.to_lowercase().contains("wall bracket"), "{title}");
        }
        other => panic!("the provenance does not resolve: {other:#?}"),
    }
    assert!(
        adaptation
            .attribution
            .contains(&seeded.originals.to_string()),
        "{}",
        adaptation.attribution
    );
    // The first commit holds the originals only.
    let at_originals = catalog.design_at(&key("commons", "wall-bracket-m4"), seeded.originals);
    assert!(
        matches!(at_originals, Err(CatalogError::UnknownDesign(_))),
        "{at_originals:?}"
    );
    catalog
        .design_at(&key("commons", "calibration-cube"), seeded.originals)
        .expect("originals are in the first commit");

    // Only the revision changed in the adaptation's manifest.
    let shipped =
        std::fs::read_to_string(workspace_root().join("designs/wall-bracket-m4/design.toml"))
            .unwrap();
    let committed = catalog
        .file(
            &"commons".parse().unwrap(),
            seeded.head,
            "wall-bracket-m4/design.toml",
        )
        .unwrap();
    let old = shipped
        .lines()
        .find(|l| l.starts_with("revision"))
        .expect("the shipped manifest pins a revision")
        .to_owned();
    let expected = shipped.replace(&old, &format!("revision = \"{}\"", seeded.originals));
    assert_eq!(String::from_utf8(committed).unwrap(), expected);
}

#[test]
fn seeding_the_same_folder_at_the_same_time_gives_the_same_commits() {
    let out = tempfile::tempdir().unwrap();
    let designs = workspace_root().join("designs");
    let name = "commons".parse().unwrap();
    let a = commit_designs_as_git_source(&designs, &out.path().join("a"), &name, at(5)).unwrap();
    let b = commit_designs_as_git_source(&designs, &out.path().join("b"), &name, at(5)).unwrap();
    assert_eq!((a.originals, a.head), (b.originals, b.head));
    // git itself reads the result: `main` is the head and HEAD names it.
    let git = GitRepo { dir: out };
    let head = git.git(&["--git-dir", "a", "rev-parse", "HEAD"]);
    assert_eq!(head, a.head.to_string());
    let parent = git.git(&["--git-dir", "a", "rev-parse", "main~1"]);
    assert_eq!(parent, a.originals.to_string());
    git.git(&["--git-dir", "a", "fsck", "--strict"]);
}

#[test]
fn an_adaptation_of_another_source_keeps_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    design(dir.path(), "plate", "plate", "G28\n");
    let foreign = "0123456789abcdef0123456789abcdef01234567";
    let derived = format!(
        "[derived_from]\nsource = \"upstream\"\nid = \"plate\"\nrevision = \"{foreign}\"\n"
    );
    design(dir.path(), "plate-long", "plate-long", "G28\n");
    write(
        &dir.path().join("plate-long/design.toml"),
        manifest("plate-long", &derived),
    );
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("r.git");
    let seeded =
        commit_designs_as_git_source(dir.path(), &dest, &"commons".parse().unwrap(), at(0))
            .unwrap();
    assert!(seeded.rewritten.is_empty());
    let catalog = Setup::new()
        .git("commons", &dest.display().to_string(), None)
        .open();
    assert_clean(&catalog.sync(at(0)));
    let d = catalog.design(&key("commons", "plate-long")).unwrap();
    assert_eq!(
        d.design.manifest.derived_from.unwrap().revision.to_string(),
        foreign
    );
}

#[test]
fn seeding_refuses_a_used_destination_an_unknown_original_and_a_bad_manifest() {
    let out = tempfile::tempdir().unwrap();
    let used = out.path().join("used");
    write(&used.join("keep.txt"), "mine");
    let err = commit_designs_as_git_source(
        &workspace_root().join("designs"),
        &used,
        &"commons".parse().unwrap(),
        at(0),
    )
    .unwrap_err();
    assert!(matches!(err, SeedError::DestinationInUse(_)), "{err}");
    assert_eq!(
        std::fs::read_to_string(used.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(&used).unwrap().count(),
        1,
        "nothing written"
    );

    let dir = tempfile::tempdir().unwrap();
    design(dir.path(), "long", "long", "G28\n");
    let derived = "[derived_from]\nsource = \"commons\"\nid = \"absent\"\nrevision = \"0123456789abcdef0123456789abcdef01234567\"\n";
    write(
        &dir.path().join("long/design.toml"),
        manifest("long", derived),
    );
    let err = commit_designs_as_git_source(
        dir.path(),
        &out.path().join("r1"),
        &"commons".parse().unwrap(),
        at(0),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("long/design.toml") && message.contains("commons/absent"),
        "{message}"
    );

    write(
        &dir.path().join("long/design.toml"),
        "id = \"long\"\ncolour = 1\n",
    );
    let err = commit_designs_as_git_source(
        dir.path(),
        &out.path().join("r2"),
        &"commons".parse().unwrap(),
        at(0),
    )
    .unwrap_err();
    assert!(
        matches!(&err, SeedError::Manifest { .. }) && err.to_string().contains("colour"),
        "{err}"
    );
}
