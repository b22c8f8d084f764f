use std::time::Duration;

use super::*;
use crate::session::testkit::Harness;
use crate::session::{HostAction, JobOptions};

fn quiet_config() -> MarlinConfig {
    MarlinConfig {
        temperature_interval: None,
        ..MarlinConfig::default()
    }
}

fn connected(config: MarlinConfig) -> Harness<MarlinSession> {
    let mut h = Harness::new(|now| MarlinSession::new(config, now));
    h.run(
        "< start
         < echo:Marlin 2.1.2
         > N0 M110 N0*125
         < ok
         > N1 M115*39
         < FIRMWARE_NAME:Marlin 2.1.2 (Jan 1 2024) SOURCE_CODE_URL:x PROTOCOL_VERSION:1.0
         < Cap:EMERGENCY_PARSER:1
         < Cap:AUTOREPORT_TEMP:0
         < ok
         .",
    );
    assert!(h.session.is_ready());
    h.take_events();
    h
}

#[test]
fn handshake_waits_for_start_then_resets_line_numbers_and_reads_capabilities() {
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    h.run(
        ".
         < start
         > N0 M110 N0*125
         < ok
         > N1 M115*39
         < FIRMWARE_NAME:Marlin 2.1.2 PROTOCOL_VERSION:1.0
         < Cap:EMERGENCY_PARSER:1
         < Cap:AUTOREPORT_TEMP:1
         < Cap:EEPROM:0
         < ok
         .",
    );
    let events = h.take_events();
    let Some(Event::Connected(info)) = events.first() else {
        panic!("expected Connected, got {events:?}");
    };
    assert!(info.name.starts_with("FIRMWARE_NAME:Marlin 2.1.2"));
    assert!(info.has("EMERGENCY_PARSER") && info.has("AUTOREPORT_TEMP"));
    assert!(!info.has("EEPROM"));
    assert!(!info.advanced_ok);
}

#[test]
fn a_reset_after_a_stale_start_retries_the_lost_hello_without_a_second_one_in_flight() {
    // The port held a `start` from an earlier boot; opening it reset the board, whose own
    // `start` arrives after our hello went out and was lost in the reset. The session must
    // not answer that `start` with a second hello at once: a stale `start` can also arrive
    // while the firmware is about to answer the first hello, and two hellos answered by two
    // plain `ok`s would shift every later acknowledgement by one line.
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    h.run(
        "< start
         > N0 M110 N0*125
         < start
         .
         ~ 1999
         .
         ~ 1
         > N0 M110 N0*125
         < ok
         > N1 M115*39
         < FIRMWARE_NAME:Marlin 2.1.2 PROTOCOL_VERSION:1.0
         < ok
         .",
    );
    assert!(h.session.is_ready());
    assert!(matches!(h.take_events().first(), Some(Event::Connected(_))));
}

#[test]
fn a_second_stale_start_while_the_hello_is_answered_costs_no_extra_line() {
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    h.run(
        "< start
         > N0 M110 N0*125
         < start
         < ok
         > N1 M115*39
         < ok
         .",
    );
    assert!(h.session.is_ready());
    h.take_events();
    // The job's first line is numbered straight after the handshake: nothing was sent
    // twice, so no `ok` is left over to acknowledge it early.
    h.start_job(&["G28"]);
    h.run("> N2 G28*?\n.");
    assert_eq!(h.session.in_flight(), 1);
}

#[test]
fn handshake_probes_when_no_start_arrives_and_fails_clearly_after_the_attempts() {
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    h.run(".");
    h.jump_to_deadline();
    h.run("> N0 M110 N0*125");
    for _ in 1..5 {
        h.jump_to_deadline();
        h.run("> N0 M110 N0*125");
    }
    h.jump_to_deadline();
    h.run(".");
    assert!(
        h.take_events()
            .contains(&Event::Failed(SessionError::NoHandshake { attempts: 5 }))
    );
}

#[test]
fn autoreport_capability_turns_on_temperature_reports_instead_of_polling() {
    let mut h = Harness::new(|now| MarlinSession::new(MarlinConfig::default(), now));
    h.run(
        "< start
         > N0 M110 N0*125
         < ok
         > N1 M115*39
         < Cap:AUTOREPORT_TEMP:1
         < ok
         > N2 M155 S2*?
         < ok
         <  T:200.00 /210.00 B:59.00 /60.00 @:127 B@:0",
    );
    let events = h.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Telemetry(Telemetry::Temperatures(h)) if h[0].current == 200.0 && h[0].target == Some(210.0))));
}

#[test]
fn without_autoreport_temperatures_are_polled_and_read_from_the_ok() {
    let mut h = Harness::new(|now| MarlinSession::new(MarlinConfig::default(), now));
    h.run(
        "< start
         > N0 M110 N0*125
         < ok
         > N1 M115*39
         < ok
         .
         ~ 2000
         > N2 M105*?
         < ok T:21.50 /0.00 B:20.00 /0.00 @:0 B@:0
         .",
    );
    let events = h.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Telemetry(Telemetry::Temperatures(h)) if h.len() == 2 && h[1].current == 20.0)));
}

#[test]
fn job_lines_are_numbered_checksummed_and_windowed_by_command_slots() {
    let mut h = connected(quiet_config());
    h.start_job(&[
        "G28",
        "; comment only",
        "G1 X1 ; go",
        "G1 X2",
        "G1 X3",
        "G1 X4",
        "M400",
    ]);
    h.run(
        "> N2 G28*?
         > N3 G1 X1*?
         > N4 G1 X2*?
         > N5 G1 X3*?
         .
         < ok
         > N6 G1 X4*?
         .
         < ok
         > N7 M400*?
         < ok
         < ok
         < ok
         .",
    );
    assert!(
        !h.take_events()
            .contains(&Event::JobFinished(JobOutcome::Completed))
    );
    // Plain `ok`s cannot name their line: a numbered `M105` fences the end of the job.
    h.run("< ok\n> N8 M105*?\n.");
    assert!(h.take_events().is_empty());
    h.run("< ok T:20.0 /0.0");
    assert_eq!(
        h.take_events()[1],
        Event::JobFinished(JobOutcome::Completed)
    );
    assert_eq!(h.session.last_acked_job_line(), Some(7));
}

#[test]
fn window_never_exceeds_the_rx_byte_budget() {
    let mut h = connected(MarlinConfig {
        rx_buffer: 40,
        ..quiet_config()
    });
    h.start_job(&["G1 X1.000 Y1.000 E0.1", "G1 X2.000 Y2.000 E0.2", "G1 X3"]);
    // Each framed move is 31 bytes: two would exceed 40, so they go one at a time.
    h.run(
        "> N2 G1 X1.000 Y1.000 E0.1*?
         .
         < ok
         > N3 G1 X2.000 Y2.000 E0.2*?
         .
         < ok
         > N4 G1 X3*?
         < ok",
    );
}

#[test]
fn ping_pong_mode_keeps_one_line_in_flight() {
    let mut h = connected(MarlinConfig {
        flow: MarlinFlow::PingPong,
        ..quiet_config()
    });
    h.start_job(&["G1 X1", "G1 X2"]);
    h.run(
        "> N2 G1 X1*?
         .
         < ok
         > N3 G1 X2*?
         .
         < ok
         > N4 M105*?
         < ok T:20.0 /0.0",
    );
    assert_eq!(
        h.take_events()[1],
        Event::JobFinished(JobOutcome::Completed)
    );
}

#[test]
fn advanced_ok_learns_the_command_buffer_and_acknowledges_by_line_number() {
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    h.run(
        "< start
         > N0 M110 N0*125
         < ok N0 P15 B7
         > N1 M115*39
         < ok N1 P15 B7",
    );
    assert!(h.session.firmware().advanced_ok);
    h.take_events();
    h.start_job(&["G1 X1", "G1 X2", "G1 X3"]);
    h.run(
        "> N2 G1 X1*?
         > N3 G1 X2*?
         > N4 G1 X3*?
         .
         < ok N3 P13 B6
         < ok N4 P14 B7
         > N5 M105*?
         < ok T:20.0 /0.0
         .",
    );
    // `ok N3` acknowledged lines 2 and 3 at once: the `ok` of line 2 was lost.
    assert_eq!(h.session.stats().job_lines_acked, 3);
    assert_eq!(
        h.take_events()[1],
        Event::JobFinished(JobOutcome::Completed)
    );
}

/// Connected to a firmware with `ADVANCED_OK` and `BUFSIZE` 4 (`B3` while a command runs).
fn connected_with_advanced_ok_and_4_slots() -> Harness<MarlinSession> {
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    h.run(
        "< start
         > N0 M110 N0*125
         < ok N0 P15 B3
         > N1 M115*39
         < ok N1 P15 B3",
    );
    h.take_events();
    h
}

/// `ok N<k> P<p> B<b>` is the firmware's own view of its buffers: `BUFSIZE - b - 1` lines
/// behind `k` have left the RX ring for the command queue. They no longer count against the
/// RX budget, so the window is the queue plus a full RX ring, not the queue alone.
#[test]
fn advanced_ok_counts_queued_lines_out_of_the_rx_budget() {
    let mut h = connected_with_advanced_ok_and_4_slots();
    let lines: Vec<String> = (1..=10).map(|i| format!("G1 X{}0.000 Y5", i)).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    h.start_job(&refs);
    // Six framed lines of 19 bytes are 114 of the 127 the ring holds; a seventh (20) is not
    // sent. That is already more lines than BUFSIZE (4): the firmware only reads its ring
    // into the queue when a slot is free, so the ring's bytes are the only limit.
    h.run(
        "> N2 G1 X10.000 Y5*?
         > N3 G1 X20.000 Y5*?
         > N4 G1 X30.000 Y5*?
         > N5 G1 X40.000 Y5*?
         > N6 G1 X50.000 Y5*?
         > N7 G1 X60.000 Y5*?
         .",
    );
    assert_eq!(h.session.rx_bytes_in_flight(), 114);
    // B0 with line 2 still in its slot: lines 3, 4 and 5 are queued, only 6 and 7 (38 bytes)
    // can be in the ring. Counting the queued lines as ring bytes too would have sent
    // nothing now; the firmware's view lets four more lines go.
    h.run(
        "< ok N2 P14 B0
         > N8 G1 X70.000 Y5*?
         > N9 G1 X80.000 Y5*?
         > N10 G1 X90.000 Y5*?
         > N11 G1 X100.000 Y5*?
         .",
    );
    assert_eq!(h.session.firmware_buffers(), Some((14, 0)));
    assert_eq!(h.session.rx_bytes_in_flight(), 38 + 20 + 19 + 21 + 21);
    assert!(h.session.rx_bytes_in_flight() <= 127);
    h.run(
        "< ok N3 P13 B0
         < ok N4 P12 B0
         < ok N5 P11 B0
         < ok N6 P10 B0
         < ok N7 P9 B0
         < ok N8 P8 B0
         < ok N9 P7 B1
         < ok N10 P6 B2
         < ok N11 P5 B3
         > N12 M105*?
         < ok T:20.0 /0.0
         .",
    );
    assert_eq!(
        h.take_events().last(),
        Some(&Event::JobFinished(JobOutcome::Completed))
    );
}

/// A resend says the firmware's last accepted line is `n - 1`: whatever the last `ok N P B`
/// said about lines from `n` on no longer holds, and they count against the ring again.
#[test]
fn a_resend_takes_the_rejected_lines_out_of_the_advanced_ok_queue_view() {
    let mut h = connected_with_advanced_ok_and_4_slots();
    let lines: Vec<String> = (1..=6).map(|i| format!("G1 X{}0.000 Y5", i)).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    h.start_job(&refs);
    h.run(
        "> N2 G1 X10.000 Y5*?
         > N3 G1 X20.000 Y5*?
         > N4 G1 X30.000 Y5*?
         > N5 G1 X40.000 Y5*?
         > N6 G1 X50.000 Y5*?
         > N7 G1 X60.000 Y5*?
         < ok N2 P14 B0
         .",
    );
    // Lines 3 to 5 are queued, 6 and 7 in the ring.
    assert_eq!(h.session.rx_bytes_in_flight(), 38);
    h.run(
        "< Error:checksum mismatch, Last Line: 3
         < Resend: 4",
    );
    // Only line 3 was accepted: 4 to 7 go again, all counted against the ring.
    h.run(
        "> N4 G1 X30.000 Y5*?
         > N5 G1 X40.000 Y5*?
         > N6 G1 X50.000 Y5*?
         > N7 G1 X60.000 Y5*?
         .",
    );
    assert_eq!(h.session.rx_bytes_in_flight(), 4 * 19);
}

#[test]
fn resend_rewinds_to_the_requested_line_and_ignores_the_cascade() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1", "G1 X2", "G1 X3", "G1 X4", "G1 X5"]);
    h.run(
        "> N2 G1 X1*?
         > N3 G1 X2*?
         > N4 G1 X3*?
         > N5 G1 X4*?
         < ok
         < Error:checksum mismatch, Last Line: 2
         < Resend: 3
         > N3 G1 X2*?
         > N4 G1 X3*?
         > N5 G1 X4*?
         > N6 G1 X5*?
         .
         < Error:Line Number is not Last Line Number+1, Last Line: 2
         < Resend: 3
         < Error:Line Number is not Last Line Number+1, Last Line: 2
         < Resend: 3
         .
         < ok
         < ok
         < ok
         < ok
         > N7 M105*?
         < ok T:20.0 /0.0
         .",
    );
    let events = h.take_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Resend { line: 3 }))
            .count(),
        1
    );
    assert_eq!(
        events.last(),
        Some(&Event::JobFinished(JobOutcome::Completed))
    );
    assert_eq!(h.session.stats().resends, 1);
    assert_eq!(h.session.stats().retransmitted_lines, 3);
    assert_eq!(h.session.stats().job_lines_sent, 5);
}

#[test]
fn a_second_resend_beyond_the_cascade_is_served_again() {
    let mut h = connected(MarlinConfig {
        flow: MarlinFlow::PingPong,
        ..quiet_config()
    });
    h.start_job(&["G1 X1", "G1 X2"]);
    h.run(
        "> N2 G1 X1*?
         < Error:checksum mismatch, Last Line: 1
         < Resend: 2
         > N2 G1 X1*?
         < Error:checksum mismatch, Last Line: 1
         < Resend: 2
         > N2 G1 X1*?
         < ok
         > N3 G1 X2*?
         < ok",
    );
    assert_eq!(h.session.stats().resends, 2);
}

#[test]
fn spellings_of_resend_from_other_firmware_all_rewind() {
    for spelling in ["rs 2", "rs N2", "Resend:2", "Resend: N:2"] {
        let mut h = connected(MarlinConfig {
            flow: MarlinFlow::PingPong,
            ..quiet_config()
        });
        h.start_job(&["G1 X1"]);
        h.run(&format!(
            "> N2 G1 X1*?
             < {spelling}
             > N2 G1 X1*?
             < ok
             > N3 M105*?
             < ok T:0"
        ));
        let events = h.take_events();
        assert_eq!(events[0], Event::Resend { line: 2 });
        assert_eq!(
            events.last(),
            Some(&Event::JobFinished(JobOutcome::Completed))
        );
    }
}

#[test]
fn an_ok_after_resend_is_not_counted_when_the_firmware_sends_one() {
    let mut h = connected(MarlinConfig {
        ok_after_resend: true,
        ..quiet_config()
    });
    h.start_job(&["G1 X1", "G1 X2"]);
    h.run(
        "> N2 G1 X1*?
         > N3 G1 X2*?
         < Error:checksum mismatch, Last Line: 1
         < Resend: 2
         < ok
         > N2 G1 X1*?
         > N3 G1 X2*?
         < ok
         .",
    );
    assert_eq!(h.session.in_flight(), 1);
    h.run("< ok\n> N4 M105*?\n< ok T:0");
    assert_eq!(
        h.take_events().last(),
        Some(&Event::JobFinished(JobOutcome::Completed))
    );
}

#[test]
fn a_lost_ok_is_found_by_a_numbered_probe_after_silence() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1", "G1 X2"]);
    h.run(
        "> N2 G1 X1*?
         > N3 G1 X2*?
         < ok
         .",
    );
    // The second `ok` was corrupted on the way back: silence follows.
    h.jump_to_deadline();
    h.run(
        "> \\nN4 M105*?
         < ok T:20.0 /0.0 B:20.0 /0.0
         .",
    );
    assert_eq!(h.session.in_flight(), 0);
    assert_eq!(
        h.take_events().last(),
        Some(&Event::JobFinished(JobOutcome::Completed))
    );
    assert_eq!(h.session.stats().probes, 1);
}

#[test]
fn a_probe_reveals_a_missed_line_through_a_resend() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1"]);
    h.run("> N2 G1 X1*?");
    h.jump_to_deadline();
    h.run(
        "> \\nN3 M105*?
         < Error:Line Number is not Last Line Number+1, Last Line: 1
         < Resend: 2
         > N2 G1 X1*?
         > N3 M105*?
         < ok
         < ok T:20.0 /0.0",
    );
    assert!(
        h.take_events()
            .contains(&Event::JobFinished(JobOutcome::Completed))
    );
    assert_eq!(h.session.in_flight(), 0);
}

#[test]
fn wait_with_lines_in_flight_triggers_an_immediate_probe() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1"]);
    h.run(
        "> N2 G1 X1*?
         < wait
         > \\nN3 M105*?",
    );
}

#[test]
fn busy_keepalives_extend_the_deadline_and_a_dead_link_gives_a_clear_error() {
    let mut h = connected(quiet_config());
    h.start_job(&["G28"]);
    h.run("> N2 G28*?");
    for _ in 0..10 {
        h.advance(Duration::from_secs(2));
        h.input("echo:busy: processing");
    }
    h.run(".");
    h.advance(Duration::from_secs(6));
    h.run("> \\nN3 M105*?");
    // A probe's line end can be lost too, so three go out before the link is declared dead.
    h.advance(Duration::from_secs(4));
    h.run("> \\nN4 M105*?");
    h.advance(Duration::from_secs(4));
    h.run("> \\nN5 M105*?");
    assert!(h.take_events().is_empty());
    h.advance(Duration::from_secs(4));
    let events = h.take_events();
    assert!(
        events.contains(&Event::Failed(SessionError::Stalled { last_acked: None })),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::JobFinished(JobOutcome::Failed(_))))
    );
    h.run(".");
}

#[test]
fn emergency_stop_goes_out_first_and_unnumbered() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1", "G1 X2", "G1 X3"]);
    h.command(Command::EmergencyStop);
    h.run(
        "> M112
         .",
    );
    assert_eq!(
        h.take_events(),
        [Event::JobFinished(JobOutcome::EmergencyStopped)]
    );
    h.run("< Error:Printer halted. kill() called!\n.");
    assert_eq!(
        h.take_events(),
        [Event::Message(
            "Error:Printer halted. kill() called!".into()
        )]
    );
}

#[test]
fn cancel_stops_feeding_then_runs_the_end_script_after_in_flight_lines() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1", "G1 X2", "G1 X3", "G1 X4", "G1 X5", "G1 X6"]);
    h.run(
        "> N2 G1 X1*?
         > N3 G1 X2*?
         > N4 G1 X3*?
         > N5 G1 X4*?",
    );
    h.command(Command::Cancel);
    h.run(
        "< ok
         > N6 M104 S0*?
         < ok
         > N7 M140 S0*?
         < ok
         > N8 M107*?
         < ok
         > N9 M84*?
         < ok
         < ok
         < ok
         < ok
         .",
    );
    assert_eq!(h.take_events(), [Event::JobFinished(JobOutcome::Cancelled)]);
}

#[test]
fn pause_stops_feeding_and_resume_continues() {
    let mut h = connected(MarlinConfig {
        flow: MarlinFlow::PingPong,
        ..quiet_config()
    });
    h.start_job(&["G1 X1", "G1 X2"]);
    h.run("> N2 G1 X1*?");
    h.command(Command::Pause);
    h.run("< ok\n.");
    h.command(Command::Resume);
    h.run("> N3 G1 X2*?\n< ok\n> N4 M105*?\n< ok T:0");
    let events = h.take_events();
    assert_eq!(events[..2], [Event::Paused, Event::Resumed]);
    assert_eq!(
        events.last(),
        Some(&Event::JobFinished(JobOutcome::Completed))
    );
}

#[test]
fn host_actions_and_positions_become_events() {
    let mut h = connected(quiet_config());
    h.run(
        "< //action:pause
         < // action:resume
         < X:1.00 Y:2.00 Z:3.00 E:0.00 Count X:80 Y:160 Z:1200
         < echo:Unknown command: \"G999\"",
    );
    let events = h.take_events();
    assert_eq!(events[0], Event::HostAction(HostAction::Pause));
    assert_eq!(events[1], Event::HostAction(HostAction::Resume));
    assert!(matches!(&events[2], Event::Telemetry(Telemetry::Position(p)) if p.z == Some(3.0)));
    assert!(matches!(&events[3], Event::Message(m) if m.contains("Unknown command")));
}

#[test]
fn an_unexpected_start_during_a_job_fails_it_and_shakes_hands_again() {
    let mut h = connected(quiet_config());
    h.start_job(&["G1 X1"]);
    h.run(
        "> N2 G1 X1*?
         < start
         > N0 M110 N0*125",
    );
    let events = h.take_events();
    assert_eq!(events[0], Event::FirmwareReset);
    assert!(matches!(
        events[1],
        Event::JobFinished(JobOutcome::Failed(_))
    ));
}

#[test]
fn requests_for_lines_older_than_the_history_fail_after_repeating() {
    let mut h = connected(MarlinConfig {
        resend_history: 2,
        ..quiet_config()
    });
    h.start_job(&["G1 X1", "G1 X2", "G1 X3", "G1 X4"]);
    h.run("> N2 G1 X1*?\n> N3 G1 X2*?\n> N4 G1 X3*?\n> N5 G1 X4*?\n< ok\n< ok\n< ok\n< ok");
    h.run("> N6 M105*?\n< Resend: 1\n.\n< Resend: 1\n< Resend: 1");
    assert!(
        h.take_events()
            .contains(&Event::Failed(SessionError::HistoryExhausted { line: 1 }))
    );
}

#[test]
fn bad_job_lines_are_refused_with_their_line_number() {
    let mut h = connected(quiet_config());
    h.session
        .handle_command(h.now, Command::StartJob(JobOptions::default()))
        .unwrap();
    h.session.push_job_line("G1 X1").unwrap();
    let err = h.session.push_job_line("M110 N5").unwrap_err();
    assert_eq!(
        err,
        CommandError::BadLine {
            source_line: 2,
            reason: "M110 would reset the line numbers the session relies on".into()
        }
    );
    let long = format!("M117 {}", "x".repeat(100));
    assert!(matches!(
        h.session.push_job_line(&long),
        Err(CommandError::BadLine { source_line: 3, .. })
    ));
}

#[test]
fn a_job_cannot_start_before_the_handshake() {
    let mut h = Harness::new(|now| MarlinSession::new(quiet_config(), now));
    let err = h
        .session
        .handle_command(h.now, Command::StartJob(JobOptions::default()));
    assert!(matches!(err, Err(CommandError::NotReady(_))));
}
