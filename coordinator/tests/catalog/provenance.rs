use munifab_coordinator::catalog::ProvenanceLink;

use crate::util::{GitRepo, Setup, assert_clean, at, design, key, manifest, write};

fn derived(source: &str, id: &str, revision: &str) -> String {
    format!(
        "[derived_from]\nsource = \"{source}\"\nid = \"{id}\"\nrevision = \"{revision}\"\nchanges = \"made longer\"\n"
    )
}

#[test]
fn provenance_follows_derived_from_across_sources_at_the_pinned_revisions() {
    // upstream/plate <- commons/bracket (by name) <- fablab/bracket-long (by URL)
    let upstream = GitRepo::new();
    design(upstream.path(), "plate", "plate", "G28\n");
    let plate_rev = upstream.commit("plate");

    let commons = GitRepo::new();
    design(commons.path(), "bracket", "bracket", "G28\n");
    commons.write(
        "bracket/design.toml",
        manifest(
            "bracket",
            &derived("upstream", "plate", &plate_rev.to_string()),
        ),
    );
    let bracket_rev = commons.commit("bracket v1");
    // The original moves on after the adaptation was made; provenance keeps to v1.
    commons.write(
        "bracket/design.toml",
        manifest(
            "bracket",
            &derived("upstream", "plate", &plate_rev.to_string()),
        )
        .replace("1.0.0", "2.0.0"),
    );
    commons.commit("bracket v2");

    let lab = tempfile::tempdir().unwrap();
    design(lab.path(), "bracket-long", "bracket-long", "G28\n");
    write(
        &lab.path().join("bracket-long/design.toml"),
        manifest(
            "bracket-long",
            &derived(&commons.url(), "bracket", &bracket_rev.to_string()),
        ),
    );

    let catalog = Setup::new()
        .git("upstream", &upstream.url(), None)
        .git("commons", &commons.url(), None)
        .overlay("fablab", lab.path())
        .open();
    assert_clean(&catalog.sync(at(0)));

    let detail = catalog.design(&key("fablab", "bracket-long")).unwrap();
    let chain = &detail.provenance;
    assert_eq!(chain.len(), 2, "{chain:#?}");
    match &chain[0] {
        ProvenanceLink::Resolved {
            key: k,
            commit,
            version,
            changes,
            ..
        } => {
            assert_eq!(k, &key("commons", "bracket"));
            assert_eq!(*commit, bracket_rev);
            assert_eq!(version, "1.0.0");
            assert_eq!(changes.as_deref(), Some("made longer"));
        }
        other => panic!("expected resolved, got {other:?}"),
    }
    match &chain[1] {
        ProvenanceLink::Resolved { key: k, commit, .. } => {
            assert_eq!(k, &key("upstream", "plate"));
            assert_eq!(*commit, plate_rev);
        }
        other => panic!("expected resolved, got {other:?}"),
    }
    assert!(
        detail.attribution.contains("Adapted from"),
        "{}",
        detail.attribution
    );
}

#[test]
fn provenance_from_an_unknown_source_is_listed_as_unresolved() {
    let lab = tempfile::tempdir().unwrap();
    design(lab.path(), "copy", "copy", "G28\n");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    write(
        &lab.path().join("copy/design.toml"),
        manifest("copy", &derived("elsewhere", "orig", rev)),
    );
    let catalog = Setup::new().overlay("fablab", lab.path()).open();
    assert_clean(&catalog.sync(at(0)));
    let chain = catalog.design(&key("fablab", "copy")).unwrap().provenance;
    match chain.as_slice() {
        [ProvenanceLink::Unresolved { source, reason, .. }] => {
            assert_eq!(source, "elsewhere");
            assert!(reason.contains("no configured source"), "{reason}");
        }
        other => panic!("expected one unresolved link, got {other:?}"),
    }
}

#[test]
fn provenance_to_a_commit_the_source_never_had_is_unresolved() {
    let commons = GitRepo::new();
    design(commons.path(), "bracket", "bracket", "G28\n");
    commons.commit("bracket");
    let lab = tempfile::tempdir().unwrap();
    design(lab.path(), "copy", "copy", "G28\n");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    write(
        &lab.path().join("copy/design.toml"),
        manifest("copy", &derived("commons", "bracket", rev)),
    );
    let catalog = Setup::new()
        .git("commons", &commons.url(), None)
        .overlay("fablab", lab.path())
        .open();
    assert_clean(&catalog.sync(at(0)));
    let chain = catalog.design(&key("fablab", "copy")).unwrap().provenance;
    assert!(
        matches!(chain.as_slice(), [ProvenanceLink::Unresolved { reason, .. }] if reason.contains("has no commit")),
        "{chain:#?}"
    );
}
