//! Whole jobs: a coordinator (plain rumqttc) assigns, the agent downloads over real HTTP,
//! preflights, and streams to a virtual machine on a real pseudo-terminal.

mod support;

use munifab_protocol::{Event, JobId, MachineStatus, Presence, RejectReason};
use munifab_tests::broker::TestBroker;
use support::*;

#[tokio::test]
async fn a_full_job_runs_on_a_virtual_marlin_and_the_machine_then_needs_attention() {
    for broker in TestBroker::each().await {
        full_marlin_job(&broker).await;
    }
}

async fn full_marlin_job(broker: &TestBroker) {
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        &http.base,
        &data,
        &fast_marlin(),
    ));
    coord.status_where(|s, _| s.state == Presence::Online).await;
    machine_ready(&mut coord, "mk3").await;

    let file = marlin_gcode(300, 200.0);
    let artifact = http.add("print.gcode", &file);
    let job = JobId::random();
    coord
        .send(assign_cmd(job, 1, "mk3", artifact, fdm_requirements()))
        .await;
    let events = coord.events_until_terminal().await;
    let names = assert_sequence(&events);
    assert_eq!(
        names[..3],
        ["accepted", "transferring", "started"],
        "{names:?}"
    );
    assert_eq!(names.last().unwrap(), "completed", "{names:?}");
    let Event::Completed(done) = &events.last().unwrap().body else {
        unreachable!()
    };
    let lines = file.iter().filter(|b| **b == b'\n').count() as u64;
    assert_eq!(done.summary.lines, lines);
    assert_eq!(done.summary.bytes, file.len() as u64);
    let progress: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.body {
            Event::Progress(p) => Some(p.percent),
            _ => None,
        })
        .collect();
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert!(
        progress.len() <= 101,
        "at most one progress event per percent"
    );

    let state = coord.state_where(|s| s.state != MachineStatus::Busy).await;
    assert_eq!(state.state, MachineStatus::NeedsAttention);
    assert!(state.job.is_none());

    // Not cleared yet: the next job is refused.
    let again = http.add("again.gcode", &marlin_gcode(10, 100.0));
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            again,
            fdm_requirements(),
        ))
        .await;
    let Event::Rejected(r) = coord.next_event().await.body else {
        panic!("expected rejected")
    };
    assert_eq!(r.reason, RejectReason::NotReady);
    running.stop().await;
    coord.clean_retained(&["mk3"]).await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn a_full_job_runs_on_a_virtual_grbl_router() {
    for broker in TestBroker::each().await {
        full_grbl_job(&broker).await;
    }
}

async fn full_grbl_job(broker: &TestBroker) {
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        &http.base,
        &data,
        GRBL_MACHINE,
    ));
    machine_ready(&mut coord, "router").await;
    let file = grbl_gcode(200);
    let artifact = http.add("pocket.nc", &file);
    coord
        .send(assign_cmd(
            JobId::random(),
            2,
            "router",
            artifact,
            cnc_requirements(),
        ))
        .await;
    let events = coord.events_until_terminal().await;
    let names = assert_sequence(&events);
    assert_eq!(
        names[..3],
        ["accepted", "transferring", "started"],
        "{names:?}"
    );
    assert_eq!(names.last().unwrap(), "completed", "{names:?}");
    // Telemetry is a QoS 0 sample every 200 ms while the machine is connected, whether or not
    // the job outlasted one interval: the samples keep coming after it ends.
    assert!(coord.telemetry_reaches(2).await >= 2);
    running.stop().await;
    coord.clean_retained(&["router"]).await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn a_bad_checksum_a_file_leaving_the_volume_and_a_busy_machine_are_rejected() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        &http.base,
        &data,
        &paced_marlin(),
    ));
    machine_ready(&mut coord, "mk3").await;

    // Bad checksum: accepted, transferred, then refused; nothing reaches the machine.
    let mut artifact = http.add("bad.gcode", &marlin_gcode(10, 100.0));
    artifact.sha256 = sha256_hex(b"other content");
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            artifact,
            fdm_requirements(),
        ))
        .await;
    let events = coord.events_until_terminal().await;
    assert_eq!(
        assert_sequence(&events),
        ["accepted", "transferring", "rejected"]
    );
    let Event::Rejected(r) = &events[2].body else {
        unreachable!()
    };
    assert_eq!(r.reason, RejectReason::ChecksumMismatch);
    coord.state_where(|s| s.state == MachineStatus::Ready).await;

    // Out of the build volume: the preflight names the line.
    let artifact = http.add("wide.gcode", &marlin_gcode(50, 300.0));
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            artifact,
            fdm_requirements(),
        ))
        .await;
    let events = coord.events_until_terminal().await;
    let Event::Rejected(r) = &events.last().unwrap().body else {
        panic!("expected rejected, got {events:?}")
    };
    assert_eq!(r.reason, RejectReason::PreflightFailed);
    assert!(!r.findings.is_empty());
    assert!(r.findings.iter().all(|f| f.line > 0), "{:?}", r.findings);
    coord.state_where(|s| s.state == MachineStatus::Ready).await;

    // Busy: a second assignment while a job streams.
    let artifact = http.add("long.gcode", &marlin_gcode(3000, 200.0));
    let job = JobId::random();
    coord
        .send(assign_cmd(
            job,
            1,
            "mk3",
            artifact.clone(),
            fdm_requirements(),
        ))
        .await;
    let started = coord.events_until("started").await;
    assert_eq!(started.len(), 3);
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            artifact,
            fdm_requirements(),
        ))
        .await;
    let busy = loop {
        let e = coord.next_event().await;
        if let Event::Rejected(r) = e.body {
            break r;
        }
    };
    assert_eq!(busy.reason, RejectReason::Busy);
    assert_eq!(busy.job.seq, 0);
    coord.send(job_cmd("cancel", job, 1, "mk3")).await;
    coord.events_until("cancelled").await;
    running.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn a_job_can_be_paused_resumed_and_another_cancelled() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        &http.base,
        &data,
        &paced_marlin(),
    ));
    machine_ready(&mut coord, "mk3").await;

    let artifact = http.add("long.gcode", &marlin_gcode(1500, 200.0));
    let job = JobId::random();
    coord
        .send(assign_cmd(
            job,
            7,
            "mk3",
            artifact.clone(),
            fdm_requirements(),
        ))
        .await;
    let mut events = coord.events_until("started").await;
    // A command for the wrong epoch is refused, the job keeps running.
    coord.send(job_cmd("pause", job, 6, "mk3")).await;
    coord.send(job_cmd("pause", job, 7, "mk3")).await;
    events.extend(coord.events_until("paused").await);
    coord
        .state_where(|s| s.state == MachineStatus::Paused)
        .await;
    coord.send(job_cmd("resume", job, 7, "mk3")).await;
    events.extend(coord.events_until("completed").await);
    let errors: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.body, Event::CommandError(_)))
        .cloned()
        .collect();
    assert_eq!(errors.len(), 1, "the stale pause is answered with an error");
    events.retain(|e| !matches!(e.body, Event::CommandError(_)));
    let names = assert_sequence(&events);
    let paused = names.iter().position(|n| n == "paused").unwrap();
    let resumed = names.iter().position(|n| n == "resumed").unwrap();
    assert!(paused < resumed, "{names:?}");

    coord.send(clear_cmd("mk3")).await;
    coord.state_where(|s| s.state == MachineStatus::Ready).await;
    let job = JobId::random();
    coord
        .send(assign_cmd(job, 1, "mk3", artifact, fdm_requirements()))
        .await;
    // The second job on the same link reports its own progress from zero.
    coord.events_until("progress").await;
    coord.send(job_cmd("cancel", job, 1, "mk3")).await;
    let end = coord.events_until_terminal().await;
    assert!(
        matches!(end.last().unwrap().body, Event::Cancelled(_)),
        "{end:?}"
    );
    let state = coord.state_where(|s| s.state != MachineStatus::Busy).await;
    assert_eq!(state.state, MachineStatus::NeedsAttention);
    running.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn a_serial_unplug_mid_job_fails_the_job_at_the_last_acknowledged_line() {
    use munifab_firmware_bridge::virtual_machine as vm;
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let link = data.join("ttyMARLIN");
    let machine = vm::spawn_on_pty(
        vm::VmConfig {
            firmware: vm::FirmwareConfig::Marlin(vm::MarlinConfig {
                speed: 0.0,
                ..vm::MarlinConfig::default()
            }),
            baud: 115_200,
            faults: vm::FaultConfig::default(),
        },
        Some(&link),
    )
    .unwrap();
    let machines = paced_marlin().replace(
        "port = \"virtual:marlin\"",
        &format!("port = \"{}\"", link.display()),
    );
    let machines = machines.replace("[machines.virtual]\nspeed = 0.0\npaced = true\n", "");
    let running = RunningAgent::start(&config(&agent, &broker.url(), &http.base, &data, &machines));
    machine_ready(&mut coord, "mk3").await;

    let file = marlin_gcode(3000, 200.0);
    let total_lines = file.iter().filter(|b| **b == b'\n').count() as u64;
    let artifact = http.add("long.gcode", &file);
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            artifact,
            fdm_requirements(),
        ))
        .await;
    coord.events_until("progress").await;
    let record = machine.unplug().await.unwrap();
    let end = coord.events_until_terminal().await;
    let Event::Failed(f) = &end.last().unwrap().body else {
        panic!("expected failed, got {end:?}")
    };
    let line = f.line.expect("the line where it stopped");
    assert!(
        line > 0 && line < total_lines,
        "line {line} of {total_lines}"
    );
    assert!(f.reason.contains("serial"), "{}", f.reason);
    // Every line the agent counts as acknowledged was executed by the machine.
    assert!(
        record.len() as u64 >= line,
        "{} executed, {line} acknowledged",
        record.len()
    );
    coord
        .state_where(|s| s.state == MachineStatus::Offline)
        .await;
    running.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn a_graceful_shutdown_pauses_the_running_job_and_publishes_offline() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        &http.base,
        &data,
        &paced_marlin(),
    ));
    machine_ready(&mut coord, "mk3").await;
    let artifact = http.add("long.gcode", &marlin_gcode(3000, 200.0));
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            artifact,
            fdm_requirements(),
        ))
        .await;
    coord.events_until("progress").await;
    running.stop().await;
    // The configured shutdown behaviour is `pause`: the job is paused, not abandoned
    // mid-line, and the agent says it left.
    coord.events_until("paused").await;
    let offline = coord
        .status_where(|s, _| s.state == Presence::Offline)
        .await;
    assert!(!offline.last_will);
    assert_eq!(
        std::fs::read_dir(data.join("spool")).unwrap().count(),
        0,
        "every event was flushed before exit"
    );
    std::fs::remove_dir_all(data).unwrap();
}

#[tokio::test]
async fn an_emergency_stop_fails_the_job_and_holds_the_machine_until_cleared() {
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();
    let running = RunningAgent::start(&config(
        &agent,
        &broker.url(),
        &http.base,
        &data,
        &paced_marlin(),
    ));
    machine_ready(&mut coord, "mk3").await;
    let artifact = http.add("long.gcode", &marlin_gcode(3000, 200.0));
    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "mk3",
            artifact,
            fdm_requirements(),
        ))
        .await;
    coord.events_until("progress").await;
    coord
        .send(munifab_protocol::Command::EmergencyStop(
            munifab_protocol::EmergencyStop {
                machine: munifab_protocol::MachineId::new("mk3").unwrap(),
                requested_by: "operator:test".into(),
            },
        ))
        .await;
    let end = coord.events_until_terminal().await;
    let Event::Failed(f) = &end.last().unwrap().body else {
        panic!("expected failed, got {end:?}")
    };
    assert!(
        f.reason.contains("emergency") || f.reason.contains("halted"),
        "{}",
        f.reason
    );
    // Halted firmware: the machine is held until an operator clears it; clearing resets
    // the controller (a reconnect) and the machine is ready again.
    coord.state_where(|s| s.state == MachineStatus::Error).await;
    coord.send(clear_cmd("mk3")).await;
    let state = coord.state_where(|s| s.state == MachineStatus::Ready).await;
    assert!(state.job.is_none());
    running.stop().await;
    std::fs::remove_dir_all(data).unwrap();
}
