use std::time::Duration;

use super::*;
use crate::session::testkit::Harness;
use crate::session::{GrblStatus, JobOptions};

fn quiet() -> GrblConfig {
    GrblConfig {
        status_interval: None,
        ..GrblConfig::default()
    }
}

fn connected(config: GrblConfig) -> Harness<GrblSession> {
    let mut h = Harness::new(|now| GrblSession::new(config, now));
    h.run(
        "> \\u{18}
         <
         < Grbl 1.1h ['$' for help]
         > $I
         < [VER:1.1h.20190830:]
         < [OPT:V,15,128]
         < ok
         .",
    );
    assert!(h.session.is_ready());
    h.take_events();
    h
}

#[test]
fn connect_soft_resets_waits_for_the_banner_and_identifies() {
    let h = connected(quiet());
    assert!(h.session.firmware().name.starts_with("Grbl 1.1h"));
    assert!(h.session.firmware().has("OPT:V"));
    assert_eq!(h.session.rx_capacity(), 127);
}

#[test]
fn a_missing_banner_is_probed_with_build_info_and_then_a_clear_error() {
    let mut h = Harness::new(|now| GrblSession::new(quiet(), now));
    h.run("> \\u{18}\n.");
    h.jump_to_deadline();
    h.run("> $I\n.");
    // The first `$I` is still unanswered: a second one would leave an `ok` too many.
    h.jump_to_deadline();
    h.run("> ?\n.");
    h.jump_to_deadline();
    h.run("> ?");
    h.jump_to_deadline();
    assert!(
        h.take_events()
            .contains(&Event::Failed(SessionError::NoHandshake { attempts: 3 }))
    );
}

#[test]
fn a_late_answer_to_the_first_identification_does_not_shift_later_answers() {
    let mut h = Harness::new(|now| GrblSession::new(quiet(), now));
    h.run("> \\u{18}\n< Grbl 1.1h ['$' for help]\n> $I");
    h.jump_to_deadline();
    h.run("> ?\n< [VER:1.1h.20190830:]\n< ok\n.");
    assert!(h.session.is_ready());
    h.start_job(&["G0 X1", "G1 X2 Q3"]);
    h.run("> G0 X1\n> G1 X2 Q3\n< ok\n< error:20");
    let events = h.take_events();
    assert!(events.contains(&Event::LineRejected {
        source_line: 2,
        code: 20,
        meaning: "unsupported or invalid G-code command"
    }));
}

#[test]
fn character_counting_fills_the_rx_buffer_but_never_more() {
    let mut h = connected(quiet());
    // 25, 40, 31, 58 and 20 bytes with their newlines: GRBL's own worked example.
    let l25 = format!("G1 X{}", "1".repeat(20));
    let l40 = format!("G1 Y{}", "2".repeat(35));
    let l31 = format!("G1 Z{}", "3".repeat(26));
    let l58 = format!("G1 X{}", "4".repeat(53));
    let l20 = format!("G1 Y{}", "5".repeat(15));
    h.start_job(&[&l25, &l40, &l31, &l58, &l20]);
    h.run(&format!("> {l25}\n> {l40}\n> {l31}\n."));
    assert_eq!(h.session.unacknowledged_bytes(), 96);
    // 96 - 25 + 58 = 129 > 127: the first `ok` is not enough.
    h.run("< ok\n.");
    h.run(&format!("< ok\n> {l58}\n> {l20}\n."));
    assert_eq!(h.session.unacknowledged_bytes(), 31 + 58 + 20);
    h.run("< ok\n< ok\n< ok\n.");
    assert_eq!(h.take_events(), [Event::JobFinished(JobOutcome::Completed)]);
    assert_eq!(h.session.unacknowledged_bytes(), 0);
}

#[test]
fn parenthesised_comments_are_not_sent_and_do_not_count_against_the_line_limit() {
    let mut h = connected(quiet());
    let header = format!("({})", "a long CAM header comment ".repeat(4));
    assert!(header.len() > 79);
    h.start_job(&[
        &header,
        "G0 X1 (rapid) Y2",
        "(unclosed comment G0 X9",
        "G0 X3",
    ]);
    h.run("> G0 X1  Y2\n> G0 X3\n.\n< ok\n< ok");
    assert_eq!(h.take_events(), [Event::JobFinished(JobOutcome::Completed)]);
}

#[test]
fn send_response_mode_waits_for_each_answer() {
    let mut h = connected(GrblConfig {
        flow: GrblFlow::SendResponse,
        ..quiet()
    });
    h.start_job(&["G0 X1", "G0 X2"]);
    h.run("> G0 X1\n.\n< ok\n> G0 X2\n.\n< ok");
    assert_eq!(h.take_events(), [Event::JobFinished(JobOutcome::Completed)]);
}

#[test]
fn eeprom_writing_commands_go_out_alone() {
    let mut h = connected(quiet());
    h.start_job(&["G0 X1", "G10 L20 P1 X0", "G0 X2", "$100=250", "G0 X3"]);
    h.run(
        "> G0 X1
         .
         < ok
         > G10 L20 P1 X0
         .
         < ok
         > G0 X2
         .
         < ok
         > $100=250
         .
         < ok
         > G0 X3
         < ok",
    );
    assert!(writes_eeprom("G28.1") && writes_eeprom("$N0=G20") && writes_eeprom("$RST=*"));
    assert!(!writes_eeprom("$J=G91 X1 F100") && !writes_eeprom("G28") && !writes_eeprom("$$"));
}

#[test]
fn an_error_mid_file_stops_the_stream_reports_the_line_and_runs_the_end_script() {
    let mut h = connected(quiet());
    h.start_job(&[
        "G0 X1",
        "; comment",
        "G1 X2 F100",
        "G4 P0",
        "G0 X4",
        "G0 X5",
    ]);
    h.run(
        "> G0 X1
         > G1 X2 F100
         > G4 P0
         > G0 X4
         > G0 X5
         < ok
         < error:22
         > M5
         > M9
         .
         < ok
         < ok
         < ok
         < ok
         < ok
         .",
    );
    let events = h.take_events();
    assert_eq!(
        events[0],
        Event::LineRejected {
            source_line: 3,
            code: 22,
            meaning: "feed rate not set"
        }
    );
    assert!(
        matches!(&events[1], Event::JobFinished(JobOutcome::Failed(r)) if r.contains("line 3"))
    );
    // Lines already in GRBL's buffer behind the bad one still ran; the report says so.
    assert_eq!(h.session.last_acked_job_line(), Some(6));
}

#[test]
fn status_reports_are_polled_at_the_configured_rate_and_parsed() {
    let mut h = connected(GrblConfig {
        status_interval: Some(Duration::from_millis(50)),
        ..GrblConfig::default()
    });
    // 50 ms is faster than GRBL advises: it is raised to 200 ms.
    h.advance(Duration::from_millis(100));
    h.run(".");
    h.advance(Duration::from_millis(100));
    h.run(
        "> ?
         < <Run|MPos:1.000,2.000,3.000|Bf:15,127|FS:500,0|Ln:7|Ov:100,100,100>",
    );
    let events = h.take_events();
    assert!(matches!(
        &events[0],
        Event::Telemetry(Telemetry::Status(GrblStatus { line: Some(7), .. }))
    ));
}

#[test]
fn the_rx_capacity_is_learned_from_an_idle_status_report() {
    let mut h = connected(quiet());
    h.run("< <Idle|MPos:0.000,0.000,0.000|Bf:100,1023|FS:0,0>");
    assert_eq!(h.session.rx_capacity(), 1023);
}

#[test]
fn realtime_bytes_bypass_the_count_and_pause_resume_hold_and_start() {
    let mut h = connected(GrblConfig {
        max_line: 255,
        ..quiet()
    });
    let long = format!("G1 X{}", "1".repeat(120));
    h.start_job(&[&long, "G1 X2"]);
    h.run(&format!("> {long}\n."));
    h.command(Command::Pause);
    h.run("> !\n.");
    h.command(Command::Resume);
    h.run("> ~\n.\n< ok\n> G1 X2\n< ok");
    assert_eq!(
        h.take_events(),
        [
            Event::Paused,
            Event::Resumed,
            Event::JobFinished(JobOutcome::Completed)
        ]
    );
}

#[test]
fn emergency_stop_is_a_soft_reset_sent_before_queued_lines() {
    let mut h = connected(quiet());
    h.start_job(&["G1 X1", "G1 X2"]);
    h.command(Command::EmergencyStop);
    h.run(
        "> \\u{18}
         .
         < ok
         < Grbl 1.1h ['$' for help]
         .",
    );
    assert_eq!(
        h.take_events(),
        [Event::JobFinished(JobOutcome::EmergencyStopped)]
    );
    assert!(h.session.is_ready());
}

#[test]
fn cancel_holds_waits_for_the_hold_then_resets_and_runs_the_end_script() {
    let mut h = connected(quiet());
    h.start_job(&["G1 X10 F100", "G1 X20", "G1 X30"]);
    h.run("> G1 X10 F100\n> G1 X20\n> G1 X30\n< ok");
    h.command(Command::Cancel);
    h.run(
        "> !?
         < <Hold:1|MPos:5.000,0.000,0.000|FS:50,0>
         .
         < <Hold:0|MPos:6.000,0.000,0.000|FS:0,0>
         > \\u{18}
         < Grbl 1.1h ['$' for help]
         > M5
         > M9
         < ok
         < ok",
    );
    let events = h.take_events();
    assert_eq!(
        events.last(),
        Some(&Event::JobFinished(JobOutcome::Cancelled))
    );
}

#[test]
fn check_mode_runs_the_job_as_a_dry_run_and_leaves_it_afterwards() {
    let mut h = connected(quiet());
    h.session
        .handle_command(h.now, Command::StartJob(JobOptions { dry_run: true }))
        .unwrap();
    h.job = ["G0 X1", "G1 X2 F10"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    h.job_open = true;
    h.run(
        "> $C
         .
         < [MSG:Enabled]
         < ok
         > G0 X1
         > G1 X2 F10
         < ok
         < ok
         > $C
         < [MSG:Disabled]
         < ok
         < Grbl 1.1h ['$' for help]",
    );
    let events = h.take_events();
    assert_eq!(
        events.last(),
        Some(&Event::JobFinished(JobOutcome::Completed))
    );
}

#[test]
fn an_alarm_fails_the_job_and_forgets_the_flushed_buffer() {
    let mut h = connected(quiet());
    h.start_job(&["G1 X1", "G1 X2"]);
    h.run("> G1 X1\n> G1 X2\n< ALARM:1\n< [MSG:Reset to continue]\n.");
    let events = h.take_events();
    assert_eq!(
        events[0],
        Event::Alarm {
            code: 1,
            meaning: "hard limit triggered; position lost, re-home"
        }
    );
    assert!(matches!(
        events[1],
        Event::JobFinished(JobOutcome::Failed(_))
    ));
    assert_eq!(h.session.unacknowledged_bytes(), 0);
}

#[test]
fn silence_gets_a_status_probe_and_then_a_clear_error() {
    let mut h = connected(quiet());
    h.start_job(&["G1 X1"]);
    h.run("> G1 X1");
    h.jump_to_deadline();
    h.run("> ?");
    h.jump_to_deadline();
    let events = h.take_events();
    assert!(events.contains(&Event::Failed(SessionError::Stalled { last_acked: None })));
}

#[test]
fn lines_with_realtime_characters_or_too_long_are_refused() {
    let mut h = connected(quiet());
    h.session
        .handle_command(h.now, Command::StartJob(JobOptions::default()))
        .unwrap();
    assert!(matches!(
        h.session.push_job_line("M117 Ready?"),
        Err(CommandError::BadLine { source_line: 1, .. })
    ));
    let long = format!("G1 X{}", "1".repeat(80));
    assert!(matches!(
        h.session.push_job_line(&long),
        Err(CommandError::BadLine { source_line: 2, .. })
    ));
}

#[test]
fn an_unexpected_banner_mid_job_reports_a_reset_and_fails_the_job() {
    let mut h = connected(quiet());
    h.start_job(&["G1 X1"]);
    h.run("> G1 X1\n< Grbl 1.1h ['$' for help]");
    let events = h.take_events();
    assert_eq!(events[0], Event::FirmwareReset);
    assert!(matches!(
        events[1],
        Event::JobFinished(JobOutcome::Failed(_))
    ));
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn unanswered_bytes_never_exceed_the_rx_buffer(
            lengths in proptest::collection::vec(1usize..78, 1..120),
            answers in proptest::collection::vec(0usize..4, 1..400),
            eeprom_every in 0usize..20,
        ) {
            let mut h = connected(quiet());
            let lines: Vec<String> = lengths
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    if eeprom_every > 0 && i % eeprom_every == 0 {
                        "$100=250".to_owned()
                    } else {
                        format!("G1 X{}", "1".repeat(len.saturating_sub(4).max(1)))
                    }
                })
                .collect();
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            h.start_job(&refs);
            let mut sent: Vec<String> = Vec::new();
            let mut answered = 0;
            for burst in answers.iter().copied().chain(std::iter::repeat_n(1, 400)) {
                h.drain();
                while let Some(bytes) = h.pending_pop() {
                    sent.push(String::from_utf8(bytes).unwrap());
                }
                prop_assert!(h.session.unacknowledged_bytes() <= h.session.rx_capacity());
                for _ in 0..burst {
                    if answered < sent.len() {
                        h.input("ok");
                        answered += 1;
                    }
                }
                if h.events.contains(&Event::JobFinished(JobOutcome::Completed)) {
                    break;
                }
            }
            prop_assert!(h.events.contains(&Event::JobFinished(JobOutcome::Completed)));
            let expected: Vec<String> = lines.iter().map(|l| format!("{l}\n")).collect();
            prop_assert_eq!(sent, expected, "lines go out once each, in order");
        }
    }
}
