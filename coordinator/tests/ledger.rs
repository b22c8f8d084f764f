//! The production ledger: sealing, tamper detection, reports.

use munifab_coordinator::ledger::{
    ChainVerifier, DesignRef, DraftError, Entry, EntryDraft, EntryHash, Filter, GroupBy, LinkFault,
    Outcome, Report, append, energy_wh, entries_to_csv, prorated_material_mg, usage_since, verify,
};
use munifab_coordinator::scheduler::{CoopId, MachineKey, PoolId, SiteId};
use munifab_protocol::{AgentId, JobId, MachineId};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime, UtcOffset};
use uuid::Uuid;

fn t0() -> OffsetDateTime {
    // 2027-01-15T08:00:00Z
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn draft(n: u64) -> EntryDraft {
    let coops = ["bikes", "chairs", "toys"];
    let outcome = match n % 5 {
        3 => Outcome::Failed,
        4 => Outcome::Cancelled,
        _ => Outcome::Completed,
    };
    EntryDraft {
        job: JobId(Uuid::from_u128(u128::from(n) + 1)),
        design: n.is_multiple_of(2).then(|| DesignRef {
            source: "commons".into(),
            id: "bike-hook".into(),
            commit: "3f2a9c1e5b7d".into(),
            licence: "CERN-OHL-S-2.0".into(),
            authors: vec!["Ada".into(), "Grace, \"G\"".into()],
        }),
        cooperative: CoopId::new(coops[n as usize % 3]).unwrap(),
        maker: format!("maker-{n}"),
        pool: PoolId::new(if n.is_multiple_of(4) {
            "valley"
        } else {
            "city"
        })
        .unwrap(),
        site: SiteId::new(if n.is_multiple_of(3) {
            "lab-a"
        } else {
            "lab-b"
        })
        .unwrap(),
        machine: MachineKey {
            agent: AgentId::new("pc-1").unwrap(),
            machine: MachineId::new(format!("m{}", n % 4)).unwrap(),
        },
        started_at: t0() + Duration::days(n as i64 * 9),
        ended_at: t0() + Duration::days(n as i64 * 9) + Duration::seconds(3600 + n as i64),
        machine_seconds: 3600 + n,
        material: Some("PLA".into()),
        material_mg: prorated_material_mg(42.5 + n as f64, outcome, 0.5),
        energy_wh: energy_wh(120.0, 3600 + n),
        outcome,
    }
}

fn chain(n: u64) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for i in 0..n {
        let e = append(out.last(), draft(i)).unwrap();
        out.push(e);
    }
    out
}

#[test]
fn a_sealed_chain_verifies_and_counts_its_entries() {
    let entries = chain(12);
    assert_eq!(verify(&entries), Ok(12));
    assert_eq!(verify(&[]), Ok(0));
    assert_eq!(entries[0].seq, 1);
    assert_eq!(entries[0].prev_hash, EntryHash::GENESIS);
    assert_eq!(entries[5].prev_hash, entries[4].hash);
    let mut v = ChainVerifier::new();
    for e in &entries {
        v.push(e).unwrap();
    }
    assert_eq!(v.head(), entries[11].hash);
}

#[test]
fn the_hash_is_sha256_of_the_canonical_json_without_the_hash() {
    let e = &chain(1)[0];
    let canonical = e.canonical_json().unwrap();
    assert_eq!(
        e.hash.to_string(),
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    assert!(!canonical.contains("\"hash\""));
    assert_eq!(
        canonical,
        concat!(
            r#"{"cooperative":"bikes","design":{"authors":["Ada","Grace, \"G\""],"commit":"3f2a9c1e5b7d","#,
            r#""id":"bike-hook","licence":"CERN-OHL-S-2.0","source":"commons"},"ended_at":"2027-01-15T09:00:00Z","#,
            r#""energy_wh":120,"job":"00000000-0000-0000-0000-000000000001","machine":{"agent":"pc-1","machine":"m0"},"#,
            r#""machine_seconds":3600,"maker":"maker-0","material":"PLA","material_mg":42500,"outcome":"completed","#,
            r#""pool":"valley","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""seq":1,"site":"lab-a","started_at":"2027-01-15T08:00:00Z","v":1}"#
        )
    );
}

#[test]
fn entries_survive_a_json_round_trip_and_still_verify() {
    let entries = chain(6);
    let json = serde_json::to_string(&entries).unwrap();
    let back: Vec<Entry> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, entries);
    assert_eq!(verify(&back), Ok(6));
}

/// Every way of changing one stored field.
type Edit = (&'static str, fn(&mut Entry));

fn edits() -> Vec<Edit> {
    vec![
        ("seq", |e| e.seq += 100),
        ("job", |e| e.record.job = JobId(Uuid::from_u128(999))),
        ("design toggled", |e| {
            e.record.design = match e.record.design {
                Some(_) => None,
                None => Some(DesignRef {
                    source: "x".into(),
                    id: "y".into(),
                    commit: "z".into(),
                    licence: "MIT".into(),
                    authors: vec![],
                }),
            }
        }),
        ("design field", |e| {
            if let Some(d) = &mut e.record.design {
                d.commit.push('0');
            } else {
                e.record.design = Some(DesignRef {
                    source: String::new(),
                    id: String::new(),
                    commit: String::new(),
                    licence: String::new(),
                    authors: vec![],
                });
            }
        }),
        ("design authors", |e| match &mut e.record.design {
            Some(d) => d.authors.reverse(),
            None => e.record.material = None,
        }),
        ("cooperative", |e| {
            e.record.cooperative = CoopId::new("mallory").unwrap()
        }),
        ("maker", |e| e.record.maker.push('x')),
        ("pool", |e| {
            e.record.pool = PoolId::new("elsewhere").unwrap()
        }),
        ("site", |e| e.record.site = SiteId::new("lab-z").unwrap()),
        ("agent", |e| {
            e.record.machine.agent = AgentId::new("pc-9").unwrap()
        }),
        ("machine", |e| {
            e.record.machine.machine = MachineId::new("m9").unwrap()
        }),
        ("started_at", |e| {
            e.record.started_at -= Duration::seconds(1)
        }),
        ("ended_at", |e| e.record.ended_at += Duration::seconds(1)),
        ("sub-second time", |e| {
            e.record.ended_at += Duration::milliseconds(1)
        }),
        ("machine_seconds", |e| e.record.machine_seconds -= 1),
        ("material", |e| e.record.material = Some("PETG".into())),
        ("material_mg", |e| e.record.material_mg += 1),
        ("energy_wh", |e| e.record.energy_wh += 1),
        ("outcome", |e| {
            e.record.outcome = match e.record.outcome {
                Outcome::Completed => Outcome::Failed,
                _ => Outcome::Completed,
            }
        }),
        ("prev_hash", |e| e.prev_hash.0[0] ^= 1),
        ("hash", |e| e.hash.0[31] ^= 1),
    ]
}

#[test]
fn editing_any_field_of_one_entry_breaks_verification_at_exactly_that_entry() {
    let entries = chain(6);
    for (name, edit) in edits() {
        for i in 0..entries.len() {
            let mut tampered = entries.clone();
            edit(&mut tampered[i]);
            assert_ne!(tampered[i], entries[i], "edit {name} changed nothing");
            let err = verify(&tampered).expect_err(name);
            assert_eq!(err.index, i, "edit {name} at {i}: {err}");
            assert_eq!(err.seq, tampered[i].seq);
        }
    }
}

#[test]
fn a_resealed_edit_is_caught_at_the_next_entry() {
    // Someone edits entry 2 and recomputes its hash, but cannot fix entry 3's prev_hash
    // without recomputing everything after it (which changes the published head).
    let mut entries = chain(5);
    entries[2].record.material_mg += 1_000;
    entries[2].hash = entries[2].compute_hash().unwrap();
    let err = verify(&entries).unwrap_err();
    assert_eq!(err.index, 3);
    assert!(matches!(err.why, LinkFault::WrongPrevious { .. }), "{err}");
}

#[test]
fn deleting_or_reordering_entries_is_detected() {
    let entries = chain(6);
    for k in 0..5 {
        let mut deleted = entries.clone();
        deleted.remove(k);
        let err = verify(&deleted).unwrap_err();
        assert_eq!(err.index, k, "deleted {k}: {err}");
        assert!(matches!(err.why, LinkFault::OutOfSequence { .. }));

        let mut swapped = entries.clone();
        swapped.swap(k, k + 1);
        assert_eq!(verify(&swapped).unwrap_err().index, k, "swapped {k}");
    }
    // Dropping the tail leaves a valid shorter chain: only the published head shows it.
    let truncated = &entries[..5];
    assert_eq!(verify(truncated), Ok(5));
    let mut v = ChainVerifier::new();
    truncated.iter().for_each(|e| v.push(e).unwrap());
    assert_ne!(v.head(), entries[5].hash);
}

#[test]
fn verification_can_resume_after_a_trusted_entry() {
    let entries = chain(8);
    let mut v = ChainVerifier::after(&entries[3]);
    for e in &entries[4..] {
        v.push(e).unwrap();
    }
    assert_eq!(v.count(), 4);
    let mut wrong = ChainVerifier::after(&entries[2]);
    assert!(wrong.push(&entries[4]).is_err());
}

#[test]
fn append_records_times_in_utc_to_the_second() {
    let mut d = draft(0);
    let plus2 = UtcOffset::from_hms(2, 0, 0).unwrap();
    d.started_at = (t0() + Duration::milliseconds(700)).to_offset(plus2);
    d.ended_at = (t0() + Duration::seconds(10)).to_offset(plus2);
    let e = append(None, d).unwrap();
    assert_eq!(e.record.started_at, t0());
    assert_eq!(e.record.started_at.offset(), UtcOffset::UTC);
    assert!(
        e.canonical_json()
            .unwrap()
            .contains("\"started_at\":\"2027-01-15T08:00:00Z\"")
    );
}

#[test]
fn a_bad_draft_is_refused_with_a_clear_error() {
    let mut d = draft(1);
    d.ended_at = d.started_at - Duration::minutes(1);
    let err = append(None, d).unwrap_err();
    assert!(matches!(err, DraftError::EndsBeforeStart { .. }));
    assert!(
        err.to_string()
            .contains("ends (2027-01-24T07:59:00Z) before it starts"),
        "{err}"
    );

    let mut d = draft(1);
    d.maker.clear();
    assert!(matches!(append(None, d), Err(DraftError::EmptyMaker(_))));

    let mut d = draft(1);
    d.machine_seconds = u64::MAX;
    assert!(matches!(
        append(None, d),
        Err(DraftError::TooLarge {
            field: "machine_seconds",
            ..
        })
    ));
}

#[test]
fn failed_and_cancelled_jobs_are_charged_material_by_progress() {
    assert_eq!(prorated_material_mg(20.0, Outcome::Completed, 0.1), 20_000);
    assert_eq!(prorated_material_mg(20.0, Outcome::Failed, 0.25), 5_000);
    assert_eq!(prorated_material_mg(20.0, Outcome::Cancelled, 1.7), 20_000);
    assert_eq!(prorated_material_mg(20.0, Outcome::Failed, f64::NAN), 0);
    assert_eq!(prorated_material_mg(-3.0, Outcome::Completed, 1.0), 0);
}

#[test]
fn energy_is_profile_watts_times_machine_time() {
    assert_eq!(energy_wh(150.0, 7200), 300);
    assert_eq!(energy_wh(150.0, 0), 0);
    assert_eq!(energy_wh(f64::INFINITY, 60), 0);
}

#[test]
fn filters_select_by_cooperative_pool_site_and_period() {
    let entries = chain(10);
    let f = Filter {
        cooperative: Some(CoopId::new("bikes").unwrap()),
        ..Filter::default()
    };
    assert_eq!(entries.iter().filter(|e| f.matches(e)).count(), 4);
    let f = Filter {
        from: Some(t0() + Duration::days(9)),
        until: Some(t0() + Duration::days(27)),
        ..Filter::default()
    };
    let seqs: Vec<u64> = entries
        .iter()
        .filter(|e| f.matches(e))
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    let report = Report::build(&entries, &f);
    assert_eq!(report.total.entries, 2);
}

#[test]
fn the_report_csv_has_one_line_per_group_and_a_total() {
    let entries = chain(4);
    let report = Report::build(&entries, &Filter::default());
    let csv = report.to_csv();
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1 + report.rows.len() + 1);
    assert_eq!(
        lines[0],
        "group,key,entries,completed,failed,cancelled,machine_hours,material_grams,energy_kwh"
    );
    // 4 jobs, 3600..3603 s = 4.002 h (14406 s / 3600 = 4.0017).
    assert!(
        lines.last().unwrap().starts_with("total,,4,3,1,0,4.002,"),
        "{csv}"
    );
    assert!(
        lines.contains(&"month,2027-01,2,2,0,0,2.000,86.000,0.240"),
        "{csv}"
    );
}

#[test]
fn the_entries_csv_quotes_what_needs_quoting() {
    let entries = chain(2);
    let csv = entries_to_csv(&entries);
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines[1].contains(
            ",commons/bike-hook@3f2a9c1e5b7d,CERN-OHL-S-2.0,\"Ada; Grace, \"\"G\"\"\",bikes,"
        ),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with(&entries[1].hash.to_string()));
}

prop_compose! {
    fn arb_draft()(
        n in 0u64..1000,
        coop in 0..3usize,
        pool in 0..2usize,
        site in 0..3usize,
        day in 0i64..400,
        secs in 0u64..100_000,
        mg in 0u64..5_000_000,
        wh in 0u64..10_000,
        outcome in prop_oneof![Just(Outcome::Completed), Just(Outcome::Failed), Just(Outcome::Cancelled)],
    ) -> EntryDraft {
        let mut d = draft(n);
        d.cooperative = CoopId::new(["a", "b", "c"][coop]).unwrap();
        d.pool = PoolId::new(["p", "q"][pool]).unwrap();
        d.site = SiteId::new(["s1", "s2", "s3"][site]).unwrap();
        d.started_at = t0() + Duration::days(day);
        d.ended_at = d.started_at + Duration::seconds(secs as i64);
        d.machine_seconds = secs;
        d.material_mg = mg;
        d.energy_wh = wh;
        d.outcome = outcome;
        d
    }
}

proptest! {
    #[test]
    fn report_totals_equal_the_sums_over_the_entries(drafts in proptest::collection::vec(arb_draft(), 0..40)) {
        let mut entries: Vec<Entry> = Vec::new();
        for d in drafts {
            let e = append(entries.last(), d).unwrap();
            entries.push(e);
        }
        prop_assert_eq!(verify(&entries), Ok(entries.len()));
        let report = Report::build(&entries, &Filter::default());
        let secs: u64 = entries.iter().map(|e| e.record.machine_seconds).sum();
        let mg: u64 = entries.iter().map(|e| e.record.material_mg).sum();
        let wh: u64 = entries.iter().map(|e| e.record.energy_wh).sum();
        prop_assert_eq!(report.total.entries, entries.len() as u64);
        prop_assert_eq!(report.total.machine_seconds, secs);
        prop_assert_eq!(report.total.material_mg, mg);
        prop_assert_eq!(report.total.energy_wh, wh);
        prop_assert_eq!(report.total.completed + report.total.failed + report.total.cancelled, report.total.entries);
        for g in GroupBy::ALL {
            // Every dimension partitions the entries: its rows add up to the total.
            let mut sum = munifab_coordinator::ledger::Totals::default();
            for row in report.rows_by(g) {
                let mine: Vec<&Entry> = entries.iter().filter(|e| g.key_of(e) == row.key).collect();
                prop_assert_eq!(row.totals.entries, mine.len() as u64);
                prop_assert_eq!(row.totals.machine_seconds, mine.iter().map(|e| e.record.machine_seconds).sum::<u64>());
                prop_assert_eq!(row.totals.material_mg, mine.iter().map(|e| e.record.material_mg).sum::<u64>());
                prop_assert_eq!(row.totals.energy_wh, mine.iter().map(|e| e.record.energy_wh).sum::<u64>());
                sum.entries += row.totals.entries;
                sum.machine_seconds += row.totals.machine_seconds;
                sum.material_mg += row.totals.material_mg;
                sum.energy_wh += row.totals.energy_wh;
            }
            prop_assert_eq!(sum.entries, report.total.entries);
            prop_assert_eq!(sum.machine_seconds, secs);
            prop_assert_eq!(sum.material_mg, mg);
            prop_assert_eq!(sum.energy_wh, wh);
        }
    }
}

/// `docs/cooperatives.md` shows an entry and its canonical form; both must be true.
#[test]
fn the_example_entry_in_the_guide_verifies() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/cooperatives.md"
    ))
    .unwrap();
    let block = |fence: &str, after: &str| {
        let from = guide.find(after).expect(after);
        let start = guide[from..].find(fence).expect(fence) + from + fence.len();
        let end = guide[start..].find("```").unwrap() + start;
        guide[start..end].trim().to_string()
    };
    let entry: Entry =
        serde_json::from_str(&block("```json\n", "Example entry, as the coordinator")).unwrap();
    let canonical = block("```text\n", "Its canonical form:");
    assert_eq!(entry.canonical_json().unwrap(), canonical);
    assert_eq!(entry.compute_hash().unwrap(), entry.hash);
    let mut chained = ChainVerifier::after(&Entry {
        seq: 56,
        hash: entry.prev_hash,
        ..entry.clone()
    });
    chained.push(&entry).unwrap();
    // The guide's arithmetic: 120 W for 8,100 s, and a failure at 25%.
    assert_eq!(energy_wh(120.0, 8100), entry.record.energy_wh);
    assert_eq!(prorated_material_mg(38.4, Outcome::Failed, 0.25), 9_600);
}

#[test]
fn usage_for_fair_share_sums_machine_seconds_since_the_window_start() {
    let entries = chain(7);
    // Entries end 9 days apart; from day 27 on: n = 3..=6 (chairs: 4, toys: 5, bikes: 3, 6).
    let usage = usage_since(&entries, t0() + Duration::days(27));
    let got: Vec<(&str, u64)> = usage
        .iter()
        .map(|u| (u.cooperative.as_str(), u.machine_seconds))
        .collect();
    assert_eq!(
        got,
        vec![("bikes", 3603 + 3606), ("chairs", 3604), ("toys", 3605)]
    );
    assert!(usage_since(&entries, t0() + Duration::days(100)).is_empty());
}
