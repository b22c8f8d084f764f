//! The agent on a real broker (embedded rumqttd, and Mosquitto when
//! `MUNIFAB_TEST_MQTT_URL` is set), with the coordinator played by a plain rumqttc client.

mod support;

use munifab_protocol::{
    AnalysisSummary, Artifact, Assign, Command, Event, Flavour, JobId, MachineId, Presence,
    Process, RejectReason, Requirements,
};
use munifab_tests::broker::TestBroker;
use support::*;

fn assign(job: JobId, epoch: u64, machine: &str) -> Command {
    Command::Assign(Assign {
        job,
        epoch,
        machine: MachineId::new(machine).unwrap(),
        artifact: Artifact {
            url: "http://127.0.0.1:9/artifacts/x".into(),
            sha256: "0".repeat(64),
            size: 10,
        },
        requirements: Requirements {
            process: Process::Fdm,
            flavour: Flavour::Reprap,
            bounds: None,
            hotend_temp_c: None,
            bed_temp_c: None,
            spindle_rpm: None,
            nozzle_diameter_mm: None,
            material: None,
            tools: 1,
        },
        analysis: AnalysisSummary::default(),
    })
}

#[tokio::test]
async fn the_agent_announces_itself_and_goes_offline_cleanly_through_each_broker() {
    for broker in TestBroker::each().await {
        let agent = agent_id();
        let mut coord = Coordinator::connect(&broker, &agent).await;
        let data = temp_dir();
        let running = RunningAgent::start(&config(
            &agent,
            &broker.url(),
            "http://127.0.0.1:9",
            &data,
            MARLIN_MACHINE,
        ));
        let status = coord.status_where(|s, _| s.state == Presence::Online).await;
        assert_eq!(status.site.as_deref(), Some("test-lab"), "{broker}");
        assert_eq!(
            status.machines,
            [MachineId::new("mk3").unwrap()],
            "{broker}"
        );
        let state = coord.state_where(|_| true).await;
        assert_eq!(state.machine.as_str(), "mk3");
        assert!(state.needs_confirmation);

        running.stop().await;
        let offline = coord
            .status_where(|s, _| s.state == Presence::Offline)
            .await;
        assert!(
            !offline.last_will,
            "{broker}: a clean shutdown is not the last will"
        );
        coord.clean_retained(&["mk3"]).await;
        std::fs::remove_dir_all(data).unwrap();
    }
}

#[tokio::test]
async fn an_unknown_command_gets_a_command_error_and_a_forged_one_is_ignored() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        "http://127.0.0.1:9",
        &data,
        MARLIN_MACHINE,
    ));
    coord.status_where(|s, _| s.state == Presence::Online).await;

    // Signed with the wrong key: dropped without an answer.
    let forged = munifab_protocol::Message::stamped(Command::Unknown {
        type_name: "forged".into(),
    });
    let topic = munifab_protocol::Topic::Commands(agent.clone()).to_string();
    let bad = munifab_protocol::SigningKey::derive("not-the-token").sign(&topic, &forged.to_json());
    coord.send_raw(bad, false).await;
    // Unsigned: dropped too.
    coord.send_raw(forged.to_json(), false).await;

    let id = coord
        .send(Command::Unknown {
            type_name: "self_destruct".into(),
        })
        .await;
    let ev = coord.next_event().await;
    match ev.body {
        Event::CommandError(e) => {
            assert_eq!(
                e.command, id,
                "the answer is to the signed command, not the forged ones"
            );
            assert_eq!(e.command_type, "self_destruct");
            assert!(e.reason.contains("unknown"), "{}", e.reason);
        }
        other => panic!("expected command_error, got {other:?}"),
    }

    // A signed command with a known type but broken fields is answered, not a crash.
    let json = format!(
        r#"{{"v":1,"id":"{}","ts":"2026-11-21T08:00:00Z","type":"pause","job":"not-a-uuid"}}"#,
        uuid::Uuid::new_v4()
    );
    coord.send_raw(json.into_bytes(), true).await;
    match coord.next_event().await.body {
        Event::CommandError(e) => assert_eq!(e.command_type, "pause"),
        other => panic!("expected command_error, got {other:?}"),
    }
    running.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn assignments_with_an_older_epoch_or_for_an_unknown_or_unconfirmed_machine_are_rejected() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        "http://127.0.0.1:9",
        &data,
        MARLIN_MACHINE,
    ));
    coord.status_where(|s, _| s.state == Presence::Online).await;

    let job = JobId::random();
    coord.send(assign(job, 5, "mk3")).await;
    let first = coord.next_event().await;
    let Event::Rejected(r) = first.body else {
        panic!("expected rejected, got {first:?}")
    };
    // Not confirmed ready (needs_confirmation defaults to true).
    assert_eq!(r.reason, RejectReason::NotReady);
    assert_eq!((r.job.job, r.job.epoch, r.job.seq), (job, 5, 0));

    coord.send(assign(job, 4, "mk3")).await;
    let Event::Rejected(r) = coord.next_event().await.body else {
        panic!("expected rejected")
    };
    assert_eq!(r.reason, RejectReason::StaleEpoch);
    assert_eq!(r.job.epoch, 4);
    assert!(r.message.contains('5'), "{}", r.message);

    coord.send(assign(JobId::random(), 1, "laser9")).await;
    let Event::Rejected(r) = coord.next_event().await.body else {
        panic!("expected rejected")
    };
    assert_eq!(r.reason, RejectReason::UnknownMachine);
    running.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn events_the_broker_never_acknowledged_are_replayed_in_order_after_an_agent_restart() {
    for broker in TestBroker::each().await {
        let agent = agent_id();
        let proxy = Proxy::start(broker_addr(&broker).await).await;
        let mut coord = Coordinator::connect(&broker, &agent).await;
        let data = temp_dir();
        let cfg = config(
            &agent,
            &proxy.url,
            "http://127.0.0.1:9",
            &data,
            MARLIN_MACHINE,
        );
        let first = RunningAgent::start(&cfg);
        coord.status_where(|s, _| s.state == Presence::Online).await;

        // Commands still reach the agent, but nothing it publishes reaches the broker.
        proxy.freeze_upstream();
        let mut sent = Vec::new();
        for i in 0..3 {
            sent.push(
                coord
                    .send(Command::Unknown {
                        type_name: format!("unknown_{i}"),
                    })
                    .await,
            );
        }
        // Wait until the agent has spooled all three answers.
        let spool = data.join("spool");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::read_dir(&spool).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "evt"))
                .count()
        }) < 3
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{broker}: events were not spooled"
            );
            tokio::task::yield_now().await;
        }
        proxy.down();
        first.stop().await;
        assert_eq!(
            std::fs::read_dir(&spool).unwrap().count(),
            3,
            "{broker}: unacknowledged events stay spooled"
        );

        proxy.up();
        let second = RunningAgent::start(&cfg);
        let mut answered = Vec::new();
        while answered.len() < 3 {
            if let Event::CommandError(e) = coord.next_event().await.body {
                answered.push(e.command);
            }
        }
        assert_eq!(answered, sent, "{broker}: replayed once each, in order");
        second.stop().await;
        assert_eq!(
            std::fs::read_dir(&spool).unwrap().count(),
            0,
            "{broker}: acknowledged events leave the spool"
        );
        coord.clean_retained(&["mk3"]).await;
        std::fs::remove_dir_all(data).unwrap();
    }
}

#[tokio::test]
async fn a_restarted_agent_still_refuses_an_older_epoch() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let cfg = config(
        &agent,
        &broker.url(),
        "http://127.0.0.1:9",
        &data,
        MARLIN_MACHINE,
    );
    let first = RunningAgent::start(&cfg);
    coord.status_where(|s, _| s.state == Presence::Online).await;
    let job = JobId::random();
    coord.send(assign(job, 9, "mk3")).await;
    coord.next_event().await;
    first.stop().await;

    let second = RunningAgent::start(&cfg);
    coord.status_where(|s, _| s.state == Presence::Online).await;
    coord.send(assign(job, 8, "mk3")).await;
    let Event::Rejected(r) = coord.next_event().await.body else {
        panic!("expected rejected")
    };
    assert_eq!(r.reason, RejectReason::StaleEpoch);
    second.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}
