//! The store suite: every test runs on SQLite, and on PostgreSQL when
//! `MUNIFAB_TEST_DATABASE_URL` is set.

mod common;

use common::each_db;
use common::fixtures::*;
use munifab_coordinator::auth::{Grant, Role};
use munifab_coordinator::ledger::{EntryHash, Filter, Outcome};
use munifab_coordinator::lifecycle::JobState;
use munifab_coordinator::store::{
    CommandOutcome, EventOutcome, JobFilter, LedgerCheck, LostPolicy, NewToken, StoreError,
};
use munifab_protocol::{
    Completed, Event, Failed, JobSummary, MachineStatus, Progress, RejectReason, Rejected,
    SigningKey,
};

const MAX_REJECTIONS: u32 = 3;

#[tokio::test]
async fn a_submitted_job_is_queued_with_both_event_rows() {
    for db in each_db().await {
        let s = &db.store;
        let job = s.submit_job(new_job("coop-a"), 1_000).await.unwrap();
        assert_eq!(job.state, JobState::Queued, "{}", db.name);
        assert_eq!(job.queued_ms, Some(1_000));
        let events = s.job_events(job.id).await.unwrap();
        let moves: Vec<_> = events.iter().map(|e| (e.from, e.to)).collect();
        assert_eq!(
            moves,
            vec![
                (None, JobState::Submitted),
                (Some(JobState::Submitted), JobState::Queued)
            ],
            "{}",
            db.name
        );
        assert_eq!(s.job(job.id).await.unwrap(), job, "{}", db.name);
    }
}

#[tokio::test]
async fn migrating_twice_changes_nothing() {
    for db in each_db().await {
        db.store.migrate().await.unwrap();
        db.store.submit_job(new_job("c"), 1).await.unwrap();
        db.store.migrate().await.unwrap();
        let page = db
            .store
            .list_jobs(&JobFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.total, 1, "{}", db.name);
    }
}

#[tokio::test]
async fn listing_filters_by_coop_and_state_and_pages() {
    for db in each_db().await {
        let s = &db.store;
        for i in 0..5 {
            s.submit_job(new_job("coop-a"), 100 + i).await.unwrap();
        }
        let b = s.submit_job(new_job("coop-b"), 200).await.unwrap();
        s.cancel_job(b.id, 201).await.unwrap();

        let a_page = s
            .list_jobs(&JobFilter {
                coop: Some("coop-a".into()),
                limit: 2,
                offset: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(a_page.total, 5, "{}", db.name);
        assert_eq!(a_page.items.len(), 2);
        assert_eq!(
            a_page.items[0].created_ms, 103,
            "newest first, after skipping one"
        );
        let cancelled = s
            .list_jobs(&JobFilter {
                state: Some(JobState::Cancelled),
                limit: 50,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(cancelled.total, 1);
        assert_eq!(cancelled.items[0].id, b.id);
    }
}

#[tokio::test]
async fn an_illegal_move_is_refused_and_leaves_no_trace() {
    for db in each_db().await {
        let s = &db.store;
        let job = s.submit_job(new_job("c"), 1).await.unwrap();
        let err = s
            .transition_job(job.id, JobState::Completed, "test", None, 2)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IllegalMove(_)),
            "{}: {err}",
            db.name
        );
        assert_eq!(s.job(job.id).await.unwrap().state, JobState::Queued);
        assert_eq!(s.job_events(job.id).await.unwrap().len(), 2);
    }
}

async fn online_ready_machine(s: &munifab_coordinator::store::Store, a: &str, m: &str) {
    assert!(
        s.set_agent_status(&agent(a), &online("lab"), 10)
            .await
            .unwrap()
    );
    s.set_machine_state(&agent(a), &machine_state(m, MachineStatus::Ready), 10)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_assignment_advances_the_epoch_and_agent_events_carry_the_job_to_completion() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        assert_eq!(s.free_machines().await.unwrap().len(), 1, "{}", db.name);
        let job = s.submit_job(new_job("c"), 20).await.unwrap();
        let (job, cmd) = s
            .assign_job_unchecked(job.id, &agent("lab-a"), &machine("mk3"), 30, assign_command)
            .await
            .unwrap();
        assert_eq!((job.state, job.epoch), (JobState::Assigned, 1));
        assert!(
            s.free_machines().await.unwrap().is_empty(),
            "machine is taken"
        );
        assert_eq!(
            s.pending_commands(&agent("lab-a")).await.unwrap(),
            vec![cmd]
        );

        let a = agent("lab-a");
        let r = |seq| job_ref(job.id, "mk3", 1, seq);
        let steps = [
            (Event::Accepted(r(0)), JobState::Accepted),
            (Event::Started(r(1)), JobState::Running),
            (
                Event::Progress(Progress {
                    job: r(2),
                    line: 10,
                    bytes: 100,
                    percent: 42.0,
                }),
                JobState::Running,
            ),
        ];
        for (ev, want) in steps {
            let out = s
                .apply_event(&a, &event(ev), MAX_REJECTIONS, 40)
                .await
                .unwrap();
            let EventOutcome::Applied(j) = out else {
                panic!("{}: {out:?}", db.name)
            };
            assert_eq!(j.state, want);
        }
        assert!(
            s.pending_commands(&a).await.unwrap().is_empty(),
            "the agent's answer settles the assign command"
        );
        assert_eq!(s.job(job.id).await.unwrap().progress, Some(42.0));
        let done = event(Event::Completed(Completed {
            job: r(3),
            summary: JobSummary::default(),
        }));
        s.apply_event(&a, &done, MAX_REJECTIONS, 50).await.unwrap();
        let job = s.job(job.id).await.unwrap();
        assert_eq!(job.state, JobState::Completed);
        let tos: Vec<_> = s
            .job_events(job.id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.to)
            .collect();
        assert_eq!(
            tos,
            vec![
                JobState::Submitted,
                JobState::Queued,
                JobState::Assigned,
                JobState::Accepted,
                JobState::Running,
                JobState::Completed
            ]
        );
        // an event arriving twice (same id) is applied once
        assert_eq!(
            s.apply_event(&a, &done, MAX_REJECTIONS, 60).await.unwrap(),
            EventOutcome::Duplicate
        );
    }
}

#[tokio::test]
async fn replays_and_reports_from_an_older_epoch_do_not_move_the_job() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        let a = agent("lab-a");
        let job = s.submit_job(new_job("c"), 1).await.unwrap();
        s.assign_job_unchecked(job.id, &a, &machine("mk3"), 2, assign_command)
            .await
            .unwrap();
        s.apply_event(
            &a,
            &event(Event::Accepted(job_ref(job.id, "mk3", 1, 0))),
            3,
            3,
        )
        .await
        .unwrap();
        // a replay with a fresh message id but an old sequence number
        let replay = event(Event::Accepted(job_ref(job.id, "mk3", 1, 0)));
        assert_eq!(
            s.apply_event(&a, &replay, 3, 4).await.unwrap(),
            EventOutcome::Replayed,
            "{}",
            db.name
        );
        // a report for epoch 0 (never assigned) is stale and the old run gets a cancel
        let stale = event(Event::Started(job_ref(job.id, "mk3", 0, 5)));
        let EventOutcome::Stale { cancel, .. } = s.apply_event(&a, &stale, 3, 5).await.unwrap()
        else {
            panic!("{}: expected stale", db.name)
        };
        let cancel = cancel.expect("a cancel for the stale run");
        let json: serde_json::Value = serde_json::from_slice(&cancel.json).unwrap();
        assert_eq!(json["type"], "cancel");
        assert_eq!(json["epoch"], 0);
        assert_eq!(s.job(job.id).await.unwrap().state, JobState::Accepted);
    }
}

#[tokio::test]
async fn a_rejected_job_is_requeued_excluding_the_machine_then_fails_after_too_many() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        let a = agent("lab-a");
        let mut job = s.submit_job(new_job("c"), 1).await.unwrap();
        for round in 1..=MAX_REJECTIONS {
            let (assigned, _) = s
                .assign_job_unchecked(job.id, &a, &machine("mk3"), 10, assign_command)
                .await
                .unwrap();
            assert_eq!(assigned.epoch, round as u64);
            let rej = event(Event::Rejected(Rejected {
                job: job_ref(job.id, "mk3", assigned.epoch, 0),
                reason: RejectReason::PreflightFailed,
                message: "bed not clear".into(),
                findings: vec![],
            }));
            let EventOutcome::Applied(j) =
                s.apply_event(&a, &rej, MAX_REJECTIONS, 11).await.unwrap()
            else {
                panic!("{}", db.name)
            };
            job = *j;
            assert_eq!(job.excluded.last().map(String::as_str), Some("lab-a/mk3"));
            let want = if round < MAX_REJECTIONS {
                JobState::Queued
            } else {
                JobState::Failed
            };
            assert_eq!(job.state, want, "{} round {round}", db.name);
        }
        assert!(
            s.job_events(job.id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.to == JobState::Rejected)
        );
    }
}

#[tokio::test]
async fn a_job_whose_agent_stays_away_is_lost_and_requeued_but_its_agents_report_wins() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        let a = agent("lab-a");
        let job = s.submit_job(new_job("c"), 1).await.unwrap();
        s.assign_job_unchecked(job.id, &a, &machine("mk3"), 2, assign_command)
            .await
            .unwrap();
        s.apply_event(
            &a,
            &event(Event::Started(job_ref(job.id, "mk3", 1, 0))),
            3,
            3,
        )
        .await
        .unwrap();
        assert!(!s.set_agent_status(&a, &offline(), 100).await.unwrap());
        // within the grace period nothing happens
        assert!(
            s.expire_lost_jobs(99, LostPolicy::Requeue, 150)
                .await
                .unwrap()
                .is_empty()
        );
        let lost = s
            .expire_lost_jobs(100, LostPolicy::Requeue, 400)
            .await
            .unwrap();
        assert_eq!(lost.len(), 1, "{}", db.name);
        assert_eq!(lost[0].state, JobState::Queued);
        let tos: Vec<_> = s
            .job_events(job.id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.to)
            .collect();
        assert_eq!(&tos[tos.len() - 2..], &[JobState::Lost, JobState::Queued]);

        // the agent comes back and reports completion for the same epoch
        assert!(s.set_agent_status(&a, &online("lab"), 500).await.unwrap());
        let done = event(Event::Completed(Completed {
            job: job_ref(job.id, "mk3", 1, 1),
            summary: JobSummary::default(),
        }));
        let out = s.apply_event(&a, &done, 3, 501).await.unwrap();
        assert!(
            matches!(out, EventOutcome::Applied(ref j) if j.state == JobState::Completed),
            "{}: {out:?}",
            db.name
        );
    }
}

#[tokio::test]
async fn the_fail_policy_fails_a_lost_job() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        let a = agent("lab-a");
        let job = s.submit_job(new_job("c"), 1).await.unwrap();
        s.assign_job_unchecked(job.id, &a, &machine("mk3"), 2, assign_command)
            .await
            .unwrap();
        s.set_agent_status(&a, &offline(), 10).await.unwrap();
        let lost = s.expire_lost_jobs(10, LostPolicy::Fail, 20).await.unwrap();
        assert_eq!(lost[0].state, JobState::Failed, "{}", db.name);
        assert!(
            s.pending_commands(&a).await.unwrap().is_empty(),
            "no assign is re-sent for a lost run"
        );
        // the lost run ended too: it is in the ledger, as failed, with no machine time
        let entry = s.ledger_entry_of_job(job.id).await.unwrap().unwrap();
        assert_eq!(entry.record.outcome, Outcome::Failed, "{}", db.name);
        assert_eq!(entry.record.machine_seconds, 0);
    }
}

#[tokio::test]
async fn cancel_is_immediate_in_the_queue_and_a_command_on_a_machine() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        let queued = s.submit_job(new_job("c"), 1).await.unwrap();
        let CommandOutcome::Done(j) = s.cancel_job(queued.id, 2).await.unwrap() else {
            panic!("{}", db.name)
        };
        assert_eq!(j.state, JobState::Cancelled);

        let job = s.submit_job(new_job("c"), 3).await.unwrap();
        s.assign_job_unchecked(job.id, &agent("lab-a"), &machine("mk3"), 4, assign_command)
            .await
            .unwrap();
        let CommandOutcome::Sent(j, cmd) = s.cancel_job(job.id, 5).await.unwrap() else {
            panic!("{}", db.name)
        };
        assert_eq!(
            j.state,
            JobState::Assigned,
            "the agent's event will move it"
        );
        assert!(
            String::from_utf8(cmd.json)
                .unwrap()
                .contains("\"type\":\"cancel\"")
        );
        // pausing a job that is not running is refused
        assert!(matches!(
            s.pause_job(job.id, true, 6).await,
            Err(StoreError::IllegalMove(_))
        ));
    }
}

#[tokio::test]
async fn machines_of_offline_agents_or_not_ready_are_not_free() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        s.set_machine_state(
            &agent("lab-a"),
            &machine_state("mini", MachineStatus::NeedsAttention),
            11,
        )
        .await
        .unwrap();
        let free = s.free_machines().await.unwrap();
        assert_eq!(free.len(), 1, "{}", db.name);
        assert_eq!(free[0].machine.as_str(), "mk3");
        s.set_agent_status(&agent("lab-a"), &offline(), 12)
            .await
            .unwrap();
        assert!(s.free_machines().await.unwrap().is_empty());
        let counts = s.count_machines_by_state().await.unwrap();
        assert_eq!(counts, vec![(MachineStatus::Offline, 2)]);
        let listed = s.list_machines(Some("lab")).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(!listed[0].agent_online);
        assert!(s.list_machines(Some("elsewhere")).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn tokens_are_found_by_secret_until_revoked_and_agent_tokens_carry_a_signing_key() {
    for db in each_db().await {
        let s = &db.store;
        let grant = Grant::new(Role::Agent, Some("lab-a")).unwrap();
        let (rec, secret) = s
            .create_token(
                &NewToken {
                    grant: grant.clone(),
                    label: "pc".into(),
                },
                1,
            )
            .await
            .unwrap();
        assert_eq!(
            s.token_by_secret(&secret).await.unwrap(),
            Some(rec.clone()),
            "{}",
            db.name
        );
        assert!(s.agent_password_ok("lab-a", &secret).await.unwrap());
        assert!(!s.agent_password_ok("lab-b", &secret).await.unwrap());
        assert!(!s.agent_password_ok("lab-a", "guess").await.unwrap());
        let keys = s.agent_signing_keys(&agent("lab-a")).await.unwrap();
        assert_eq!(keys, vec![SigningKey::derive(&secret)]);
        let revoked = s.revoke_token(&rec.id, 2).await.unwrap();
        assert_eq!(revoked.revoked_ms, Some(2));
        assert_eq!(s.token_by_secret(&secret).await.unwrap(), None);
        assert!(!s.agent_password_ok("lab-a", &secret).await.unwrap());
        assert!(matches!(
            s.revoke_token("nope", 3).await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

#[tokio::test]
async fn a_job_cancelled_while_its_agent_was_away_is_cancelled_not_requeued_when_lost() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        let a = agent("lab-a");
        let job = s.submit_job(new_job("c"), 1).await.unwrap();
        s.assign_job_unchecked(job.id, &a, &machine("mk3"), 2, assign_command)
            .await
            .unwrap();
        s.set_agent_status(&a, &offline(), 10).await.unwrap();
        assert!(matches!(
            s.cancel_job(job.id, 11).await.unwrap(),
            CommandOutcome::Sent(..)
        ));
        let lost = s
            .expire_lost_jobs(10, LostPolicy::Requeue, 20)
            .await
            .unwrap();
        assert_eq!(lost[0].state, JobState::Cancelled, "{}", db.name);
        assert!(s.pending_commands(&a).await.unwrap().is_empty());
    }
}

/// How a test run ends.
#[derive(Clone, Copy)]
enum End {
    Completed,
    /// Failed at this progress (percent).
    Failed(f64),
    /// Cancelled on the machine at this progress (percent).
    Cancelled(f64),
}

/// Runs a fresh job of `coop` on `a`/`m` (online, ready): assigned at `t0` ms, started at
/// `t0 + 1000`, ended per `end` at `t0 + 1000 + run_ms`. The job carries 10 g of PLA.
async fn run_job(
    s: &munifab_coordinator::store::Store,
    coop: &str,
    a: &str,
    m: &str,
    t0: i64,
    run_ms: i64,
    end: End,
) -> munifab_coordinator::store::Job {
    let mut new = new_job(coop);
    new.analysis.material_grams = Some(10.0);
    new.requirements.material = Some("PLA".into());
    let job = s.submit_job(new, t0).await.unwrap();
    let (job, _) = s
        .assign_job_unchecked(job.id, &agent(a), &machine(m), t0, assign_command)
        .await
        .unwrap();
    let ag = agent(a);
    let r = |seq| job_ref(job.id, m, job.epoch, seq);
    let mut events = vec![Event::Accepted(r(0)), Event::Started(r(1))];
    let percent = match end {
        End::Completed => 100.0,
        End::Failed(p) | End::Cancelled(p) => p,
    };
    events.push(Event::Progress(Progress {
        job: r(2),
        line: 1,
        bytes: 1,
        percent,
    }));
    for (i, ev) in events.into_iter().enumerate() {
        s.apply_event(&ag, &event(ev), MAX_REJECTIONS, t0 + 1000 * i as i64)
            .await
            .unwrap();
    }
    let last = match end {
        End::Completed => Event::Completed(Completed {
            job: r(3),
            summary: JobSummary::default(),
        }),
        End::Failed(_) => Event::Failed(Failed {
            job: r(3),
            reason: "thermal runaway".into(),
            line: None,
            summary: None,
        }),
        End::Cancelled(_) => Event::Cancelled(r(3)),
    };
    let out = s
        .apply_event(&ag, &event(last), MAX_REJECTIONS, t0 + 1000 + run_ms)
        .await
        .unwrap();
    assert!(matches!(out, EventOutcome::Applied(_)), "{out:?}");
    s.job(job.id).await.unwrap()
}

#[tokio::test]
async fn every_end_of_a_run_appends_one_chained_ledger_entry_with_its_facts() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        // 60 s of printing on an FDM machine without a profile: 120 W by default -> 2 Wh.
        let done = run_job(
            s,
            "coop-a",
            "lab-a",
            "mk3",
            1_000_000,
            60_000,
            End::Completed,
        )
        .await;
        assert_eq!(done.state, JobState::Completed, "{}", db.name);
        s.set_machine_profile(&agent("lab-a"), &machine("mk3"), "big-printer", 3600)
            .await
            .unwrap();
        let failed = run_job(
            s,
            "coop-b",
            "lab-a",
            "mk3",
            2_000_000,
            30_000,
            End::Failed(25.0),
        )
        .await;
        let cancelled = run_job(
            s,
            "coop-a",
            "lab-a",
            "mk3",
            3_000_000,
            10_000,
            End::Cancelled(50.0),
        )
        .await;
        // A job cancelled in the queue never reached a machine: no production, no entry.
        let queued = s.submit_job(new_job("coop-a"), 4_000_000).await.unwrap();
        s.cancel_job(queued.id, 4_000_001).await.unwrap();

        let page = s.ledger_entries(&Default::default(), 100, 0).await.unwrap();
        assert_eq!(page.total, 3, "{}", db.name);
        let [e1, e2, e3] = &page.items[..] else {
            panic!("{}: {:?}", db.name, page.items)
        };
        assert_eq!((e1.seq, e2.seq, e3.seq), (1, 2, 3));
        assert_eq!(e1.record.job, done.id);
        assert_eq!(e1.record.outcome, Outcome::Completed);
        assert_eq!(e1.record.cooperative.as_str(), "coop-a");
        assert_eq!(e1.record.maker, "test");
        assert_eq!(e1.record.pool.as_str(), "default");
        assert_eq!(e1.record.site.as_str(), "lab");
        assert_eq!(e1.record.machine.to_string(), "lab-a/mk3");
        assert_eq!(e1.record.started_at.unix_timestamp(), 1_001);
        assert_eq!(e1.record.ended_at.unix_timestamp(), 1_061);
        assert_eq!(e1.record.machine_seconds, 60);
        assert_eq!(e1.record.material.as_deref(), Some("PLA"));
        assert_eq!(e1.record.material_mg, 10_000);
        assert_eq!(e1.record.energy_wh, 2);
        assert_eq!(e1.record.design, None);
        assert_eq!(e1.prev_hash, EntryHash::GENESIS);
        // failed at 25 %: a quarter of the material; 30 s at the profile's 3600 W = 30 Wh
        assert_eq!(e2.record.job, failed.id);
        assert_eq!(e2.record.outcome, Outcome::Failed);
        assert_eq!(e2.record.material_mg, 2_500);
        assert_eq!(e2.record.energy_wh, 30);
        assert_eq!(e2.prev_hash, e1.hash);
        assert_eq!(e3.record.job, cancelled.id);
        assert_eq!(e3.record.outcome, Outcome::Cancelled);
        assert_eq!(e3.record.material_mg, 5_000);
        assert_eq!(e3.prev_hash, e2.hash);
        assert_eq!(
            s.ledger_entry_of_job(queued.id).await.unwrap(),
            None,
            "{}",
            db.name
        );
        // filters: cooperative, and period by end time
        let coop_b = Filter {
            cooperative: Some("coop-b".parse().unwrap()),
            ..Default::default()
        };
        let only_b = s.ledger_entries(&coop_b, 100, 0).await.unwrap();
        assert_eq!(only_b.total, 1);
        assert_eq!(only_b.items[0].record.job, failed.id);
        let window = Filter {
            from: Some(time::OffsetDateTime::from_unix_timestamp(2_000).unwrap()),
            until: Some(time::OffsetDateTime::from_unix_timestamp(3_011).unwrap()),
            ..Default::default()
        };
        let seqs: Vec<u64> = s
            .ledger_all(&window)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![2], "{}: ended 2031 is in, 3011 is out", db.name);
        assert_eq!(
            s.verify_ledger().await.unwrap(),
            LedgerCheck::Ok {
                entries: 3,
                head: e3.hash
            },
            "{}",
            db.name
        );
    }
}

#[tokio::test]
async fn an_edited_or_deleted_ledger_row_fails_verification_at_that_entry() {
    for db in each_db().await {
        let s = &db.store;
        online_ready_machine(s, "lab-a", "mk3").await;
        for (i, coop) in ["coop-a", "coop-b", "coop-a", "coop-c"].iter().enumerate() {
            let t0 = 1_000_000 * (i as i64 + 1);
            run_job(s, coop, "lab-a", "mk3", t0, 5_000, End::Completed).await;
        }
        assert!(matches!(
            s.verify_ledger().await.unwrap(),
            LedgerCheck::Ok { entries: 4, .. }
        ));
        // one gram more on entry 2, written straight into the table
        s.execute_raw("UPDATE ledger SET material_mg = material_mg + 1000 WHERE seq = 2")
            .await
            .unwrap();
        let LedgerCheck::Broken { seq, why } = s.verify_ledger().await.unwrap() else {
            panic!("{}: an edited row must break the chain", db.name)
        };
        assert_eq!(seq, 2, "{}: {why}", db.name);
        assert!(why.contains("hashes to"), "{why}");
        s.execute_raw("UPDATE ledger SET material_mg = material_mg - 1000 WHERE seq = 2")
            .await
            .unwrap();
        assert!(matches!(
            s.verify_ledger().await.unwrap(),
            LedgerCheck::Ok { entries: 4, .. }
        ));
        // a deleted entry: the next one is out of sequence
        s.execute_raw("DELETE FROM ledger WHERE seq = 3")
            .await
            .unwrap();
        let LedgerCheck::Broken { seq, why } = s.verify_ledger().await.unwrap() else {
            panic!("{}: a deleted row must break the chain", db.name)
        };
        assert_eq!(seq, 4, "{}: {why}", db.name);
    }
}

#[tokio::test]
async fn runs_ending_at_once_append_one_unbroken_chain() {
    const N: usize = 12;
    for db in each_db().await {
        let s = &db.store;
        let mut running = Vec::new();
        for i in 0..N {
            let a = format!("lab-{i}");
            online_ready_machine(s, &a, "mk3").await;
            let job = s.submit_job(new_job("coop-a"), 100).await.unwrap();
            let (job, _) = s
                .assign_job_unchecked(job.id, &agent(&a), &machine("mk3"), 200, assign_command)
                .await
                .unwrap();
            s.apply_event(
                &agent(&a),
                &event(Event::Started(job_ref(job.id, "mk3", 1, 0))),
                MAX_REJECTIONS,
                300,
            )
            .await
            .unwrap();
            running.push((a, job.id));
        }
        let mut ends = tokio::task::JoinSet::new();
        for (a, id) in running {
            let s = s.clone();
            ends.spawn(async move {
                let done = event(Event::Completed(Completed {
                    job: job_ref(id, "mk3", 1, 1),
                    summary: JobSummary::default(),
                }));
                s.apply_event(&agent(&a), &done, MAX_REJECTIONS, 60_000)
                    .await
            });
        }
        while let Some(r) = ends.join_next().await {
            let out = r.unwrap().unwrap();
            assert!(matches!(out, EventOutcome::Applied(_)), "{out:?}");
        }
        assert!(
            matches!(
                s.verify_ledger().await.unwrap(),
                LedgerCheck::Ok { entries, .. } if entries == N as u64
            ),
            "{}",
            db.name
        );
    }
}

/// The real dispatcher over `s` (its MQTT client is never polled: the test agents have no
/// token, so commands stay in the outbox) with a fixed clock.
fn dispatcher(
    s: &munifab_coordinator::store::Store,
    now: i64,
) -> (
    munifab_coordinator::dispatch::Dispatcher,
    rumqttc::EventLoop,
) {
    let (client, events) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("test", "127.0.0.1", 1), 64);
    let d = munifab_coordinator::dispatch::Dispatcher::new(
        s.clone(),
        client,
        std::sync::Arc::new(munifab_coordinator::metrics::Metrics::default()),
        std::sync::Arc::new(move || now),
        munifab_coordinator::dispatch::DispatchSettings {
            offline_grace: std::time::Duration::from_secs(300),
            lost_policy: LostPolicy::Requeue,
            max_rejections: MAX_REJECTIONS,
            tick: std::time::Duration::from_secs(1),
            public_url: "http://x".into(),
        },
    );
    (d, events)
}

fn router_caps() -> munifab_protocol::Capabilities {
    let mut caps = printer_caps();
    caps.process = munifab_protocol::Process::Cnc;
    caps.firmware = munifab_protocol::Firmware::Grbl;
    caps.materials = vec!["PLYWOOD".into()];
    caps.spindle_max_rpm = Some(12_000.0);
    caps.nozzle_diameter_mm = None;
    caps
}

fn cnc_job(coop: &str) -> munifab_coordinator::store::NewJob {
    let mut new = new_job(coop);
    new.requirements.process = munifab_protocol::Process::Cnc;
    new.requirements.flavour = munifab_protocol::Flavour::Grbl;
    new.requirements.hotend_temp_c = None;
    new.requirements.bed_temp_c = None;
    new
}

#[tokio::test]
async fn auto_dispatch_never_assigns_to_a_machine_nobody_confirmed_after_a_job() {
    for db in each_db().await {
        let s = &db.store;
        let t = 1_000_000;
        online_ready_machine(s, "lab-a", "mk3").await;
        let mut router = machine_state("cnc1", MachineStatus::Ready);
        router.capabilities = router_caps();
        s.set_machine_state(&agent("lab-a"), &router, 10)
            .await
            .unwrap();

        // the printer runs a job; afterwards it needs a person's look
        let first = run_job(s, "coop-a", "lab-a", "mk3", t, 5_000, End::Completed).await;
        assert_eq!(first.state, JobState::Completed);
        // the agent says ready again, but nobody confirmed the bed is cleared
        s.set_machine_state(
            &agent("lab-a"),
            &machine_state("mk3", MachineStatus::Ready),
            t + 10_000,
        )
        .await
        .unwrap();
        let second = s.submit_job(new_job("coop-a"), t + 11_000).await.unwrap();
        let cnc = s.submit_job(cnc_job("coop-a"), t + 11_000).await.unwrap();
        let (d, _loop) = dispatcher(s, t + 12_000);
        for _ in 0..3 {
            d.dispatch().await.unwrap();
        }
        assert_eq!(
            s.job(second.id).await.unwrap().state,
            JobState::Queued,
            "{}",
            db.name
        );
        // a router only "ready" (bed/stock not confirmed loaded and zeroed) takes no CNC job
        assert_eq!(
            s.job(cnc.id).await.unwrap().state,
            JobState::Queued,
            "{}",
            db.name
        );

        // the site's operator confirms the printer: the queued job goes there
        s.confirm_ready(
            &agent("lab-a"),
            &machine("mk3"),
            false,
            "tok-1 (Ana)",
            t + 13_000,
        )
        .await
        .unwrap();
        d.dispatch().await.unwrap();
        let second = s.job(second.id).await.unwrap();
        assert_eq!(second.state, JobState::Assigned, "{}", db.name);
        assert_eq!(second.machine, Some(machine("mk3")));
        assert_eq!(second.pool.as_deref(), Some("default"));
        assert_eq!(s.job(cnc.id).await.unwrap().state, JobState::Queued);
        let mk3 = s.machine(&agent("lab-a"), &machine("mk3")).await.unwrap();
        assert_eq!(
            (mk3.readiness.as_deref(), mk3.ready_by.as_deref()),
            (Some("ready"), Some("tok-1 (Ana)"))
        );
        // While that job is on the printer a confirmation is refused (and not audited),
        // rather than accepted now and silently undone when the job's end is applied.
        let busy = s
            .confirm_ready(
                &agent("lab-a"),
                &machine("mk3"),
                false,
                "tok-1 (Ana)",
                t + 13_500,
            )
            .await;
        assert!(
            matches!(&busy, Err(StoreError::MachineBusy { job, .. }) if *job == second.id.to_string()),
            "{busy:?}"
        );

        // stock loaded and zeroed on the router: the CNC job goes there
        s.confirm_ready(
            &agent("lab-a"),
            &machine("cnc1"),
            true,
            "tok-1 (Ana)",
            t + 14_000,
        )
        .await
        .unwrap();
        d.dispatch().await.unwrap();
        let cnc = s.job(cnc.id).await.unwrap();
        assert_eq!(cnc.state, JobState::Assigned, "{}", db.name);
        assert_eq!(cnc.machine, Some(machine("cnc1")));

        // who confirmed, and when, is in the audit trail
        let audit = s.list_audit(Some("machine:lab-a/mk3"), 10).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (audit[0].actor.as_str(), audit[0].at_ms),
            ("tok-1 (Ana)", t + 13_000)
        );
    }
}

#[tokio::test]
async fn an_agent_that_needs_no_confirmation_gets_the_next_job_at_once() {
    for db in each_db().await {
        let s = &db.store;
        let t = 1_000_000;
        online_ready_machine(s, "lab-a", "mk3").await;
        run_job(s, "coop-a", "lab-a", "mk3", t, 5_000, End::Completed).await;
        let mut state = machine_state("mk3", MachineStatus::Ready);
        state.needs_confirmation = false;
        s.set_machine_state(&agent("lab-a"), &state, t + 10_000)
            .await
            .unwrap();
        let next = s.submit_job(new_job("coop-a"), t + 11_000).await.unwrap();
        let (d, _loop) = dispatcher(s, t + 12_000);
        d.dispatch().await.unwrap();
        assert_eq!(
            s.job(next.id).await.unwrap().state,
            JobState::Assigned,
            "{}",
            db.name
        );
    }
}

#[tokio::test]
async fn pools_decide_who_may_use_a_machine_and_name_the_pool_in_the_ledger() {
    use munifab_coordinator::store::{PoolRecord, QuotaRecord, SiteRecord};
    for db in each_db().await {
        let s = &db.store;
        let t = 1_000_000;
        online_ready_machine(s, "lab-a", "mk3").await;
        s.put_site(
            &SiteRecord {
                id: "lab".into(),
                name: "Lab".into(),
                region: "valley".into(),
                lat: 47.5,
                lon: 8.7,
            },
            "admin",
            t,
        )
        .await
        .unwrap();
        s.put_pool(
            &PoolRecord {
                id: "valley".into(),
                name: "Valley".into(),
                machines: vec!["lab-a/mk3".into()],
                members: [("coop-a".to_string(), 2)].into(),
            },
            "admin",
            t,
        )
        .await
        .unwrap();
        // coop-b is in no pool; coop-c is, but its quota is used up
        let mut pools = s.list_pools().await.unwrap();
        pools[0].members.insert("coop-c".into(), 1);
        s.put_pool(&pools[0], "admin", t).await.unwrap();
        s.put_quota(
            &QuotaRecord {
                cooperative: "coop-c".into(),
                machine_hours: 0,
                period_days: 30,
                period_start_ms: 0,
            },
            "admin",
            t,
        )
        .await
        .unwrap();
        let mut outsider = new_job("coop-b");
        outsider.analysis.estimated_seconds = 60.0;
        let outsider = s.submit_job(outsider, t).await.unwrap();
        let mut capped = new_job("coop-c");
        capped.analysis.estimated_seconds = 60.0;
        let capped = s.submit_job(capped, t).await.unwrap();
        let (d, _loop) = dispatcher(s, t + 1_000);
        d.dispatch().await.unwrap();
        assert_eq!(
            s.job(outsider.id).await.unwrap().state,
            JobState::Queued,
            "{}",
            db.name
        );
        assert_eq!(
            s.job(capped.id).await.unwrap().state,
            JobState::Queued,
            "{}",
            db.name
        );

        let member = s.submit_job(new_job("coop-a"), t + 2_000).await.unwrap();
        let (d, _loop) = dispatcher(s, t + 3_000);
        d.dispatch().await.unwrap();
        let member = s.job(member.id).await.unwrap();
        assert_eq!(member.state, JobState::Assigned, "{}", db.name);
        assert_eq!(member.pool.as_deref(), Some("valley"));
        let done = event(Event::Completed(Completed {
            job: job_ref(member.id, "mk3", member.epoch, 0),
            summary: JobSummary::default(),
        }));
        s.apply_event(&agent("lab-a"), &done, MAX_REJECTIONS, t + 60_000)
            .await
            .unwrap();
        let entry = s.ledger_entry_of_job(member.id).await.unwrap().unwrap();
        assert_eq!(entry.record.pool.as_str(), "valley");
        let subjects: Vec<String> = s
            .list_audit(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.subject)
            .collect();
        assert_eq!(
            subjects,
            ["quota:coop-c", "pool:valley", "pool:valley", "site:lab"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_racing_over_one_queue_assign_each_job_once_and_each_machine_once() {
    const MACHINES: usize = 8;
    const JOBS: usize = 20;
    for (url, _dir) in common::each_db_url().await {
        // Two handles with their own connections, as two coordinator replicas would have.
        let first = munifab_coordinator::store::Store::connect(&url)
            .await
            .unwrap();
        first.migrate().await.unwrap();
        let second = munifab_coordinator::store::Store::connect(&url)
            .await
            .unwrap();
        for i in 0..MACHINES {
            online_ready_machine(&first, &format!("lab-{i}"), "mk3").await;
        }
        let mut jobs = Vec::new();
        for i in 0..JOBS {
            jobs.push(
                first
                    .submit_job(new_job("coop-a"), 1_000 + i as i64)
                    .await
                    .unwrap(),
            );
        }
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let race = |s: munifab_coordinator::store::Store| {
            let start = start.clone();
            tokio::spawn(async move {
                let (d, _loop) = dispatcher(&s, 1_000_000);
                start.wait().await;
                for _ in 0..4 {
                    d.dispatch().await.unwrap();
                }
            })
        };
        let (a, b) = tokio::join!(race(first.clone()), race(second.clone()));
        a.unwrap();
        b.unwrap();

        let mut holders = std::collections::HashMap::new();
        for job in &jobs {
            let job = first.job(job.id).await.unwrap();
            let assignments = first
                .job_events(job.id)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.to == JobState::Assigned)
                .count();
            match job.state {
                JobState::Assigned => {
                    assert_eq!(assignments, 1, "{url}: job {} assigned twice", job.id);
                    assert_eq!(job.epoch, 1, "{url}");
                    let key = (job.agent.clone().unwrap(), job.machine.clone().unwrap());
                    assert!(
                        holders.insert(key.clone(), job.id).is_none(),
                        "{url}: {key:?} got two jobs"
                    );
                }
                JobState::Queued => assert_eq!(assignments, 0, "{url}"),
                other => panic!("{url}: job {} ended {other}", job.id),
            }
        }
        // Every machine got exactly one job, and each agent exactly one `assign` command.
        assert_eq!(holders.len(), MACHINES, "{url}");
        for i in 0..MACHINES {
            let pending = first
                .pending_commands(&agent(&format!("lab-{i}")))
                .await
                .unwrap();
            assert_eq!(pending.len(), 1, "{url}: lab-{i}");
        }
        first.close().await;
        second.close().await;
    }
}

/// The jobs of `ids` still queued, and the machines the others went to.
async fn where_they_went(
    s: &munifab_coordinator::store::Store,
    ids: &[munifab_protocol::JobId],
) -> (usize, Vec<String>) {
    let mut queued = 0;
    let mut machines = Vec::new();
    for id in ids {
        let job = s.job(*id).await.unwrap();
        match job.state {
            JobState::Queued => queued += 1,
            JobState::Assigned => {
                machines.push(format!("{}/{}", job.agent.unwrap(), job.machine.unwrap()))
            }
            other => panic!("job {id} is {other}"),
        }
    }
    machines.sort();
    (queued, machines)
}

#[tokio::test]
async fn the_dispatchers_kept_picture_follows_changes_made_through_its_store() {
    for db in each_db().await {
        let s = &db.store;
        for a in ["lab-a", "lab-b", "lab-c", "lab-d"] {
            online_ready_machine(s, a, "mk3").await;
        }
        // A CNC job no machine here can take makes the dispatcher build its picture of the
        // four free printers, and stays queued.
        s.submit_job(cnc_job("coop-a"), 100).await.unwrap();
        let (d, _loop) = dispatcher(s, 1_000_000);
        d.dispatch().await.unwrap();

        // Between passes: lab-a's agent goes offline, lab-b's printer reports busy, lab-c's
        // ends a job (assigned and completed beside the dispatcher) and waits for a person.
        s.set_agent_status(&agent("lab-a"), &offline(), 200)
            .await
            .unwrap();
        s.set_machine_state(
            &agent("lab-b"),
            &machine_state("mk3", MachineStatus::Busy),
            200,
        )
        .await
        .unwrap();
        run_job(s, "coop-a", "lab-c", "mk3", 300, 1_000, End::Completed).await;
        let jobs: Vec<_> = [
            s.submit_job(new_job("coop-a"), 5_000).await.unwrap().id,
            s.submit_job(new_job("coop-a"), 5_001).await.unwrap().id,
        ]
        .to_vec();
        d.dispatch().await.unwrap();
        assert_eq!(
            where_they_went(s, &jobs).await,
            (1, vec!["lab-d/mk3".to_string()]),
            "{}",
            db.name
        );

        // A machine confirmed by its operator, and one never seen before, are placed on
        // without a new dispatcher.
        s.confirm_ready(&agent("lab-c"), &machine("mk3"), false, "op", 6_000)
            .await
            .unwrap();
        d.dispatch().await.unwrap();
        assert_eq!(
            where_they_went(s, &jobs).await,
            (0, vec!["lab-c/mk3".to_string(), "lab-d/mk3".to_string()]),
            "{}",
            db.name
        );
        online_ready_machine(s, "lab-e", "mk3").await;
        let third = s.submit_job(new_job("coop-a"), 7_000).await.unwrap().id;
        d.dispatch().await.unwrap();
        assert_eq!(
            where_they_went(s, &[third]).await,
            (0, vec!["lab-e/mk3".to_string()]),
            "{}",
            db.name
        );
    }
}

#[tokio::test]
async fn a_picture_outdated_by_another_writer_never_places_on_a_machine_that_cannot_take_the_job() {
    for (url, _dir) in common::each_db_url().await {
        let s = munifab_coordinator::store::Store::connect(&url)
            .await
            .unwrap();
        s.migrate().await.unwrap();
        // Another replica on the same database: its writes leave no note for `s`'s watchers.
        let other = munifab_coordinator::store::Store::connect(&url)
            .await
            .unwrap();
        for a in ["lab-a", "lab-b", "lab-c", "lab-d"] {
            online_ready_machine(&s, a, "mk3").await;
        }
        s.submit_job(cnc_job("coop-a"), 100).await.unwrap();
        let (d, _loop) = dispatcher(&s, 1_000_000);
        d.dispatch().await.unwrap();

        // Unseen by the dispatcher: lab-a offline, lab-b busy, lab-c ran a job and waits for
        // a person, lab-d took a job of the other replica's.
        other
            .set_agent_status(&agent("lab-a"), &offline(), 200)
            .await
            .unwrap();
        other
            .set_machine_state(
                &agent("lab-b"),
                &machine_state("mk3", MachineStatus::Busy),
                200,
            )
            .await
            .unwrap();
        run_job(&other, "coop-a", "lab-c", "mk3", 300, 1_000, End::Completed).await;
        let theirs = other.submit_job(new_job("coop-b"), 400).await.unwrap();
        other
            .assign_job_unchecked(
                theirs.id,
                &agent("lab-d"),
                &machine("mk3"),
                500,
                assign_command,
            )
            .await
            .unwrap();

        let ours: Vec<_> = [
            s.submit_job(new_job("coop-a"), 5_000).await.unwrap().id,
            s.submit_job(new_job("coop-a"), 5_001).await.unwrap().id,
        ]
        .to_vec();
        d.dispatch().await.unwrap();
        assert_eq!(where_they_went(&s, &ours).await, (2, vec![]), "{url}");
        for a in ["lab-a", "lab-b", "lab-c"] {
            assert!(
                s.pending_commands(&agent(a)).await.unwrap().is_empty(),
                "{url}: {a} got a command"
            );
        }
        assert_eq!(s.pending_commands(&agent("lab-d")).await.unwrap().len(), 1);

        // The refused machines were read again, and a change made through this store is
        // still followed: the operator's confirmation of lab-c gets it a job.
        s.confirm_ready(&agent("lab-c"), &machine("mk3"), false, "op", 700)
            .await
            .unwrap();
        d.dispatch().await.unwrap();
        assert_eq!(
            where_they_went(&s, &ours).await,
            (1, vec!["lab-c/mk3".to_string()]),
            "{url}"
        );
        s.close().await;
        other.close().await;
    }
}

/// Jobs in the SQLite database *file*, ignoring its write-ahead log (`immutable`), or `None`
/// while the file does not even hold the schema yet.
async fn jobs_in_the_database_file(path: &std::path::Path) -> Option<i64> {
    use sqlx::Connection;
    let url = format!("sqlite://{}?immutable=true", path.display());
    let mut conn = sqlx::AnyConnection::connect(&url).await.ok()?;
    let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM jobs")
        .fetch_one(&mut conn)
        .await
        .ok();
    let _ = conn.close().await;
    n
}

#[tokio::test]
async fn the_checkpointer_copies_committed_rows_from_the_log_into_the_database_file() {
    let db = common::sqlite().await;
    let file = db.dir.join("munifab.db");
    db.store.submit_job(new_job("coop-a"), 1_000).await.unwrap();
    // SQLite's own threshold is far away: the row lives only in the log so far.
    assert_ne!(jobs_in_the_database_file(&file).await, Some(1));

    let stop = tokio_util::sync::CancellationToken::new();
    let checkpointer = {
        let (store, stop) = (db.store.clone(), stop.clone());
        tokio::spawn(async move {
            store
                .checkpoint_periodically(std::time::Duration::from_millis(5), stop)
                .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(5));
    while jobs_in_the_database_file(&file).await != Some(1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never reached the database file"
        );
        poll.tick().await;
    }
    stop.cancel();
    checkpointer.await.unwrap();
}

#[tokio::test]
async fn pruning_forgets_old_message_ids_and_answered_commands_but_keeps_pending_ones() {
    for db in each_db().await {
        let s = &db.store;
        s.execute_raw(
            "INSERT INTO seen_messages (id, agent, at_ms) VALUES \
             ('m-old', 'pc-1', 1000), ('m-new', 'pc-1', 9000)",
        )
        .await
        .unwrap();
        s.execute_raw(
            "INSERT INTO outbox (agent, kind, message, created_ms, sent_ms, done_ms) VALUES \
             ('pc-1', 'clear', '{}', 500, 600, 1000), \
             ('pc-1', 'clear', '{}', 500, 600, 9000), \
             ('pc-1', 'clear', '{\"pending\":true}', 500, 600, NULL)",
        )
        .await
        .unwrap();
        assert_eq!(s.prune_answered(5000).await.unwrap(), (1, 1), "{}", db.name);
        assert_eq!(s.prune_answered(5000).await.unwrap(), (0, 0), "{}", db.name);
        let agent = munifab_protocol::AgentId::new("pc-1").unwrap();
        let pending = s.pending_commands(&agent).await.unwrap();
        assert_eq!(pending.len(), 1, "{}", db.name);
        assert_eq!(pending[0].json, br#"{"pending":true}"#, "{}", db.name);
        // The newer ones go once they are old enough; the unanswered command never does.
        assert_eq!(
            s.prune_answered(i64::MAX).await.unwrap(),
            (1, 1),
            "{}",
            db.name
        );
        assert_eq!(
            s.pending_commands(&agent).await.unwrap().len(),
            1,
            "{}",
            db.name
        );
    }
}

/// Runs `write` and checks that it moved the store's revision.
async fn moves<T>(
    s: &munifab_coordinator::store::Store,
    db: &str,
    what: &str,
    write: impl std::future::Future<Output = T>,
) -> T {
    let before = s.revision();
    let out = write.await;
    assert_ne!(s.revision(), before, "{db}: {what} must move the revision");
    out
}

#[tokio::test]
async fn every_kind_of_write_the_api_shows_moves_the_revision_that_all_clones_share() {
    use munifab_coordinator::store::{CooperativeRecord, PoolRecord, QuotaRecord, SiteRecord};
    for db in each_db().await {
        let (s, n) = (&db.store, db.name.as_str());
        let clone = s.clone();
        let (a, m) = (agent("lab-a"), machine("mk3"));
        let new_admin = NewToken {
            grant: Grant::Admin,
            label: "rev".into(),
        };
        let (token, _) = moves(s, n, "a new token", s.create_token(&new_admin, 1))
            .await
            .unwrap();
        assert_eq!(clone.revision(), s.revision(), "{n}: clones share it");
        moves(
            s,
            n,
            "registering an agent",
            s.register_agent(&a, Some("lab"), 2),
        )
        .await
        .unwrap();
        moves(
            s,
            n,
            "an agent's status",
            s.set_agent_status(&a, &online("lab"), 3),
        )
        .await
        .unwrap();
        let attention = machine_state("mk3", MachineStatus::NeedsAttention);
        moves(
            s,
            n,
            "a machine's state",
            s.set_machine_state(&a, &attention, 4),
        )
        .await
        .unwrap();
        moves(
            s,
            n,
            "a readiness confirmation",
            s.confirm_ready(&a, &m, false, "op", 5),
        )
        .await
        .unwrap();
        moves(
            s,
            n,
            "a machine's profile",
            s.set_machine_profile(&a, &m, "generic", 120),
        )
        .await
        .unwrap();
        let job = moves(s, n, "a submission", s.submit_job(new_job("coop-a"), 6))
            .await
            .unwrap();
        let (job, _) = moves(
            s,
            n,
            "an assignment",
            s.assign_job_unchecked(job.id, &a, &m, 7, assign_command),
        )
        .await
        .unwrap();
        let accepted = event(Event::Accepted(job_ref(job.id, "mk3", 1, 0)));
        moves(
            s,
            n,
            "an agent's event",
            s.apply_event(&a, &accepted, MAX_REJECTIONS, 8),
        )
        .await
        .unwrap();
        // The same message again is dropped by its id: nothing the API shows changed.
        let before = s.revision();
        assert_eq!(
            s.apply_event(&a, &accepted, MAX_REJECTIONS, 9)
                .await
                .unwrap(),
            EventOutcome::Duplicate
        );
        assert_eq!(s.revision(), before, "{n}: a duplicate moves nothing");
        let queued = s.submit_job(new_job("coop-a"), 10).await.unwrap();
        moves(s, n, "a cancellation", s.cancel_job(queued.id, 11))
            .await
            .unwrap();
        let other = s.submit_job(new_job("coop-a"), 12).await.unwrap();
        moves(
            s,
            n,
            "a transition by hand",
            s.transition_job(other.id, JobState::Failed, "test", None, 13),
        )
        .await
        .unwrap();
        let coop = CooperativeRecord {
            id: "coop-a".into(),
            name: "A".into(),
        };
        moves(s, n, "a cooperative", s.put_cooperative(&coop, "t", 14))
            .await
            .unwrap();
        let site = SiteRecord {
            id: "lab".into(),
            name: "Lab".into(),
            region: "valley".into(),
            lat: 47.5,
            lon: 8.7,
        };
        moves(s, n, "a site", s.put_site(&site, "t", 15))
            .await
            .unwrap();
        let pool = PoolRecord {
            id: "valley".into(),
            name: "Valley".into(),
            machines: vec!["lab-a/mk3".into()],
            members: [("coop-a".to_string(), 1)].into(),
        };
        moves(s, n, "a pool", s.put_pool(&pool, "t", 16))
            .await
            .unwrap();
        let quota = QuotaRecord {
            cooperative: "coop-a".into(),
            machine_hours: 10,
            period_days: 30,
            period_start_ms: 0,
        };
        moves(s, n, "a quota", s.put_quota(&quota, "t", 17))
            .await
            .unwrap();
        moves(
            s,
            n,
            "an agent going away",
            s.set_agent_status(&a, &offline(), 18),
        )
        .await
        .unwrap();
        let lost = moves(
            s,
            n,
            "a lost job requeued",
            s.expire_lost_jobs(100, LostPolicy::Requeue, 19),
        )
        .await
        .unwrap();
        assert_eq!(lost.len(), 1, "{n}");
        moves(s, n, "revoking a token", s.revoke_token(&token.id, 20))
            .await
            .unwrap();
        let before = s.revision();
        s.revoke_token(&token.id, 21).await.unwrap();
        assert_eq!(s.revision(), before, "{n}: revoking again changes nothing");
        assert_eq!(clone.revision(), s.revision(), "{n}");
    }
}

#[tokio::test]
async fn a_waiter_is_answered_at_once_by_another_revision_by_the_next_write_or_by_its_timeout() {
    use std::future::Future;
    use std::task::Poll;
    use std::time::Duration;
    for db in each_db().await {
        let (s, n) = (&db.store, db.name.as_str());
        let seen = s.revision();
        // Looked at once: another number (a restarted coordinator's) is answered at once.
        let mut stale = std::pin::pin!(s.changed_since(seen.wrapping_add(1), Duration::MAX));
        let first = std::future::poll_fn(|cx| Poll::Ready(stale.as_mut().poll(cx))).await;
        assert_eq!(first, Poll::Ready(seen), "{n}");

        // The current number waits, and the next write answers it (were the write to wake
        // nothing, the wait would end after its minute with `seen` and fail below).
        let mut wait = std::pin::pin!(s.changed_since(seen, Duration::from_secs(60)));
        let first = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
        assert_eq!(first, Poll::Pending, "{n}: nothing changed yet");
        assert_eq!(s.revision_waiters(), 1, "{n}");
        s.clone().submit_job(new_job("coop-a"), 1).await.unwrap();
        let woken = wait.await;
        assert_ne!(woken, seen, "{n}");
        assert_eq!(woken, s.revision(), "{n}");
        assert_eq!(s.revision_waiters(), 0, "{n}");

        // Nothing changes: the wait ends with the same number.
        assert_eq!(
            s.changed_since(woken, Duration::from_millis(5)).await,
            woken,
            "{n}"
        );
    }
}
