//! Encoding and decoding of every v1 message.

use munifab_protocol::*;
use time::macros::datetime;
use uuid::Uuid;

fn agent() -> AgentId {
    AgentId::new("lab-a").unwrap()
}
fn machine() -> MachineId {
    MachineId::new("mk3").unwrap()
}
fn job() -> JobId {
    JobId(Uuid::from_u128(0x1234))
}
fn job_ref(seq: u64) -> JobRef {
    JobRef {
        job: job(),
        machine: machine(),
        epoch: 3,
        seq,
    }
}
fn caps() -> Capabilities {
    Capabilities {
        process: Process::Fdm,
        firmware: Firmware::Marlin,
        build_volume: Box3 {
            min: Vec3::default(),
            max: Vec3 {
                x: 220.0,
                y: 220.0,
                z: 250.0,
            },
        },
        nozzle_diameter_mm: Some(0.4),
        materials: vec!["PLA".into()],
        max_hotend_temp_c: Some(260.0),
        max_bed_temp_c: Some(100.0),
        spindle_max_rpm: None,
        tool_count: 1,
    }
}
fn requirements() -> Requirements {
    Requirements {
        process: Process::Fdm,
        flavour: Flavour::Reprap,
        bounds: Some(Box3 {
            min: Vec3 {
                x: 100.0,
                y: 100.0,
                z: 0.2,
            },
            max: Vec3 {
                x: 120.0,
                y: 120.0,
                z: 20.0,
            },
        }),
        hotend_temp_c: Some(210.0),
        bed_temp_c: Some(60.0),
        spindle_rpm: None,
        nozzle_diameter_mm: Some(0.4),
        material: Some("PLA".into()),
        tools: 1,
    }
}
fn stamp<B: Family>(body: B) -> Message<B> {
    Message::new(
        Uuid::from_u128(0xabcd),
        datetime!(2026-11-21 08:00:00 UTC),
        body,
    )
}
fn round_trip<B: Family + PartialEq + std::fmt::Debug + Clone>(body: B) {
    let msg = stamp(body);
    let json = msg.to_json();
    let back = Message::<B>::from_json(&json)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
    assert_eq!(back, msg);
}

#[test]
fn every_status_state_and_telemetry_message_round_trips() {
    round_trip(StatusBody::AgentStatus(AgentStatus {
        state: Presence::Online,
        version: "0.1.0".into(),
        site: Some("fablab-a".into()),
        machines: vec![machine()],
        last_will: false,
    }));
    round_trip(StatusBody::AgentStatus(AgentStatus::last_will(
        "0.1.0", None,
    )));
    for state in [
        MachineStatus::Offline,
        MachineStatus::Idle,
        MachineStatus::NeedsAttention,
        MachineStatus::Ready,
        MachineStatus::Busy,
        MachineStatus::Paused,
        MachineStatus::Error,
    ] {
        round_trip(StateBody::MachineState(MachineState {
            machine: machine(),
            state,
            capabilities: caps(),
            job: Some(CurrentJob {
                job: job(),
                epoch: 3,
            }),
            needs_confirmation: true,
            detail: None,
        }));
    }
    round_trip(TelemetryBody::Telemetry(Telemetry {
        machine: machine(),
        job: Some(job()),
        temperatures: vec![Temperature {
            sensor: "T0".into(),
            actual: 209.5,
            target: Some(210.0),
        }],
        position: Some(Vec3 {
            x: 1.0,
            y: 2.0,
            z: 0.2,
        }),
        progress_percent: Some(12.5),
        feed_mm_min: Some(1800.0),
        spindle_rpm: None,
        line: Some(1200),
        firmware_state: None,
    }));
}

#[test]
fn every_event_round_trips() {
    let finding = Finding {
        severity: Severity::Error,
        code: "out_of_volume".into(),
        line: 12,
        column: 4,
        message: "X 230 is outside the build volume (0..220)".into(),
    };
    let events = vec![
        Event::Accepted(job_ref(0)),
        Event::Rejected(Rejected {
            job: job_ref(0),
            reason: RejectReason::PreflightFailed,
            message: "1 error".into(),
            findings: vec![finding],
        }),
        Event::Transferring(Transferring {
            job: job_ref(1),
            bytes: 10,
            total: 100,
        }),
        Event::Started(job_ref(2)),
        Event::Progress(Progress {
            job: job_ref(3),
            line: 10,
            bytes: 200,
            percent: 1.5,
        }),
        Event::Paused(job_ref(4)),
        Event::Resumed(job_ref(5)),
        Event::Completed(Completed {
            job: job_ref(6),
            summary: JobSummary {
                lines: 10,
                bytes: 300,
                seconds: 2.5,
                resends: 1,
            },
        }),
        Event::Failed(Failed {
            job: job_ref(6),
            reason: "unplugged".into(),
            line: Some(7),
            summary: None,
        }),
        Event::Cancelled(job_ref(6)),
        Event::CommandError(CommandError {
            command: Uuid::from_u128(9),
            command_type: "self_destruct".into(),
            reason: "unknown command type".into(),
        }),
    ];
    assert_eq!(
        events.len(),
        Event::TYPES.len(),
        "one example per event type"
    );
    for e in events {
        round_trip(e);
    }
}

#[test]
fn every_command_round_trips() {
    let commands = vec![
        Command::Assign(Assign {
            job: job(),
            epoch: 3,
            machine: machine(),
            artifact: Artifact {
                url: "http://127.0.0.1:8080/api/v1/artifacts/ab".into(),
                sha256: "ab".repeat(32),
                size: 1024,
            },
            requirements: requirements(),
            analysis: AnalysisSummary {
                lines: 100,
                bytes: 1024,
                estimated_seconds: 60.0,
                extrusion_mm: 1000.0,
                material_grams: Some(3.0),
                layers: 10,
            },
        }),
        Command::Cancel(JobCommand {
            job: job(),
            epoch: 3,
            machine: machine(),
        }),
        Command::Pause(JobCommand {
            job: job(),
            epoch: 3,
            machine: machine(),
        }),
        Command::Resume(JobCommand {
            job: job(),
            epoch: 3,
            machine: machine(),
        }),
        Command::Clear(Clear {
            machine: machine(),
            confirmed_by: "ana".into(),
            stock_loaded: false,
        }),
        Command::EmergencyStop(EmergencyStop {
            machine: machine(),
            requested_by: "ana".into(),
        }),
    ];
    assert_eq!(
        commands.len(),
        Command::TYPES.len(),
        "one example per command type"
    );
    for c in commands {
        round_trip(c);
    }
}

#[test]
fn golden_encoding_of_an_accepted_event() {
    let msg = stamp(Event::Accepted(job_ref(0)));
    assert_eq!(
        String::from_utf8(msg.to_json()).unwrap(),
        r#"{"v":1,"id":"00000000-0000-0000-0000-00000000abcd","ts":"2026-11-21T08:00:00Z","type":"accepted","job":"00000000-0000-0000-0000-000000001234","machine":"mk3","epoch":3,"seq":0}"#
    );
}

#[test]
fn golden_decoding_of_a_cancel_command_with_extra_fields() {
    let json = br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00.5+01:00","type":"cancel","job":"00000000-0000-0000-0000-000000001234","epoch":7,"machine":"mk3","reason":"added in v1.1"}"#;
    let msg = Message::<Command>::from_json(json).unwrap();
    assert_eq!(
        msg.body,
        Command::Cancel(JobCommand {
            job: job(),
            epoch: 7,
            machine: machine()
        })
    );
    assert_eq!(msg.ts, datetime!(2026-11-21 07:00:00.5 UTC));
}

#[test]
fn an_unknown_type_decodes_to_a_typed_unknown_value() {
    let json = br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"self_destruct","when":"now"}"#;
    let msg = Message::<Command>::from_json(json).unwrap();
    assert_eq!(
        msg.body,
        Command::Unknown {
            type_name: "self_destruct".into()
        }
    );
    assert_eq!(msg.body.type_name(), "self_destruct");
    // and it can be logged back out without a panic
    assert!(
        String::from_utf8(msg.to_json())
            .unwrap()
            .contains("\"type\":\"self_destruct\"")
    );
}

#[test]
fn malformed_payloads_are_errors() {
    let good = stamp(Command::Cancel(JobCommand {
        job: job(),
        epoch: 1,
        machine: machine(),
    }))
    .to_json();
    // truncated anywhere
    for cut in 0..good.len() {
        assert!(
            Message::<Command>::from_json(&good[..cut]).is_err(),
            "accepted a cut at {cut}"
        );
    }
    let cases: &[(&[u8], &str)] = &[
        (b"", "envelope"),
        (b"null", "envelope"),
        (b"[]", "envelope"),
        (br#"{"v":1,"type":"cancel"}"#, "envelope"),
        (br#"{"v":2,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"cancel"}"#, "version 2"),
        (br#"{"v":"1","id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"cancel"}"#, "envelope"),
        (br#"{"v":1,"id":"nope","ts":"2026-11-21T08:00:00Z","type":"cancel"}"#, "envelope"),
        (br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"yesterday","type":"cancel"}"#, "envelope"),
        (br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"cancel","job":"00000000-0000-0000-0000-000000001234","epoch":"seven","machine":"mk3"}"#, "invalid cancel"),
        (br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"cancel","job":"00000000-0000-0000-0000-000000001234","epoch":1,"machine":"MK3/../x"}"#, "invalid cancel"),
        (br#"{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"cancel","job":"00000000-0000-0000-0000-000000001234","epoch":-1,"machine":"mk3"}"#, "invalid cancel"),
    ];
    for (payload, expect) in cases {
        let err = Message::<Command>::from_json(payload)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expect),
            "{}: {err}",
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn huge_payloads_and_huge_ids_are_refused() {
    let huge = vec![b' '; MAX_PAYLOAD_PLUS_ONE];
    assert!(matches!(
        Message::<Event>::from_json(&huge),
        Err(DecodeError::TooLarge(_))
    ));
    let long_machine = "m".repeat(100_000);
    let json = format!(
        r#"{{"v":1,"id":"00000000-0000-0000-0000-000000000001","ts":"2026-11-21T08:00:00Z","type":"accepted","job":"00000000-0000-0000-0000-000000001234","machine":"{long_machine}","epoch":1,"seq":0}}"#
    );
    let err = Message::<Event>::from_json(json.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 64"), "{err}");
}
const MAX_PAYLOAD_PLUS_ONE: usize = munifab_protocol::message::MAX_PAYLOAD + 1;

#[test]
fn inbound_decodes_by_topic_kind() {
    let topic = Topic::Events(agent());
    let payload = stamp(Event::Started(job_ref(2))).to_json();
    let inbound = Inbound::decode(&topic, &payload).unwrap();
    assert_eq!(inbound.type_name(), "started");
    // the same bytes on a commands topic are an unknown command, not an event
    let as_command = Inbound::decode(&Topic::Commands(agent()), &payload).unwrap();
    assert_eq!(as_command.type_name(), "started");
    assert!(matches!(
        as_command,
        Inbound::Command(Message {
            body: Command::Unknown { .. },
            ..
        })
    ));
}

#[test]
fn signed_messages_still_decode() {
    let key = SigningKey::derive("token");
    let topic = Topic::Events(agent()).to_string();
    let signed = key.sign(&topic, &stamp(Event::Started(job_ref(2))).to_json());
    key.verify(&topic, &signed).unwrap();
    assert!(matches!(
        Message::<Event>::from_json(&signed).unwrap().body,
        Event::Started(_)
    ));
}
