//! Transcript tests of the virtual Marlin against the exact lines real Marlin prints.
//! A virtual clock jumps from deadline to deadline; nothing sleeps.

use super::*;

/// `N<n> <cmd>*<xor>\n`, as a host frames a protected line.
pub(crate) fn numbered(n: i64, command: &str) -> String {
    let payload = format!("N{n} {command}");
    let checksum = payload.bytes().fold(0u8, |cs, b| cs ^ b);
    format!("{payload}*{checksum}\n")
}

struct Bench {
    marlin: Marlin,
    now: Instant,
}

impl Bench {
    fn new(config: MarlinConfig) -> Self {
        let now = Instant::now();
        let marlin = Marlin::new(config, now).expect("valid config");
        let mut bench = Bench { marlin, now };
        bench.lines();
        bench
    }

    fn default() -> Self {
        Bench::new(MarlinConfig::default())
    }

    fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.marlin.handle_input(self.now, bytes);
    }

    fn lines(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.marlin.poll_output())
            .map(|line| {
                let text = String::from_utf8(line).expect("ASCII output");
                assert!(text.ends_with('\n'), "every line ends with LF: {text:?}");
                text.trim_end_matches('\n').to_owned()
            })
            .collect()
    }

    /// Lets `duration` of virtual time pass, waking at every deadline on the way.
    fn advance(&mut self, duration: Duration) {
        let end = self.now + duration;
        for _ in 0..1_000_000 {
            match self.marlin.poll_timeout() {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.marlin.handle_timeout(self.now);
                    // A deadline that handling does not move would spin a runner.
                    assert!(
                        self.marlin
                            .poll_timeout()
                            .is_none_or(|next| next > self.now)
                    );
                }
                _ => break,
            }
        }
        self.now = end;
        self.marlin.handle_timeout(end);
    }

    fn commands(&self) -> Vec<&str> {
        self.marlin
            .record()
            .iter()
            .map(|e| e.command.as_str())
            .collect()
    }
}

#[test]
fn a_reset_prints_start_and_the_boot_lines() {
    let now = Instant::now();
    let mut marlin = Marlin::new(MarlinConfig::default(), now).unwrap();
    let first = marlin.poll_output().unwrap();
    assert_eq!(first, b"start\n");
    let rest: Vec<Vec<u8>> = std::iter::from_fn(|| marlin.poll_output()).collect();
    assert!(
        rest.iter().all(|line| line.starts_with(b"echo:")),
        "{rest:?}"
    );
}

#[test]
fn the_boot_delay_keeps_the_controller_silent_and_deaf() {
    let config = MarlinConfig {
        boot_delay: Duration::from_millis(1500),
        ..MarlinConfig::default()
    };
    let now = Instant::now();
    let mut marlin = Marlin::new(config, now).unwrap();
    assert_eq!(marlin.poll_output(), None);
    marlin.handle_input(now + Duration::from_millis(100), b"M105\n");
    assert_eq!(marlin.rx_lost(), 5);
    assert_eq!(
        marlin.poll_timeout(),
        Some(now + Duration::from_millis(1500))
    );
    marlin.handle_timeout(now + Duration::from_millis(1500));
    assert_eq!(marlin.poll_output().unwrap(), b"start\n");
}

#[test]
fn the_documented_hello_and_identification_lines_are_accepted() {
    let mut bench = Bench::default();
    // Lines and checksums from real OctoPrint logs.
    bench.send("N0 M110 N0*125\n");
    assert_eq!(bench.lines(), ["ok"]);
    bench.send("N1 M115*39\n");
    let lines = bench.lines();
    assert!(
        lines[0].starts_with("FIRMWARE_NAME:Marlin 2.1.2 "),
        "{}",
        lines[0]
    );
    assert!(lines.contains(&"Cap:AUTOREPORT_TEMP:1".to_owned()));
    assert!(lines.contains(&"Cap:EMERGENCY_PARSER:0".to_owned()));
    assert_eq!(lines.last().unwrap(), "ok");
    assert_eq!(bench.marlin.last_line_number(), 1);
}

#[test]
fn m110_runs_after_the_lines_read_behind_it_so_a_host_must_wait_for_its_ok() {
    let mut bench = Bench::default();
    // Marlin fills its queue before running M110, which then sets last_N back to 0.
    bench.send("N0 M110 N0*125\nN1 M115*39\n");
    bench.lines();
    assert_eq!(bench.marlin.last_line_number(), 0);
}

#[test]
fn m115_reports_the_emergency_parser_when_built_with_it() {
    let mut bench = Bench::new(MarlinConfig {
        emergency_parser: true,
        ..MarlinConfig::default()
    });
    bench.send("M115\n");
    assert!(bench.lines().contains(&"Cap:EMERGENCY_PARSER:1".to_owned()));
}

#[test]
fn a_wrong_line_number_is_rejected_with_marlins_error_and_a_resend() {
    let mut bench = Bench::default();
    bench.send(&numbered(1, "G28"));
    bench.advance(Duration::from_secs(30));
    bench.lines();
    bench.send(&numbered(3, "G1 X10"));
    assert_eq!(
        bench.lines(),
        [
            "Error:Line Number is not Last Line Number+1, Last Line: 1",
            "Resend: 2"
        ]
    );
    assert_eq!(bench.commands(), ["G28"]);
}

#[test]
fn a_bad_checksum_is_rejected_and_the_rx_buffer_behind_it_discarded() {
    let mut bench = Bench::default();
    let good = numbered(2, "G1 X10");
    let bad = numbered(1, "G1 X5").replace("X5", "X6");
    // Both lines arrive before the firmware reads: the second one is thrown away.
    bench.send(&format!("{bad}{good}"));
    assert_eq!(
        bench.lines(),
        ["Error:checksum mismatch, Last Line: 0", "Resend: 1"]
    );
    assert!(bench.commands().is_empty());
    assert_eq!(bench.marlin.rx_len(), 0);
}

#[test]
fn a_numbered_line_without_checksum_is_rejected() {
    let mut bench = Bench::default();
    bench.send("N1 G1 X5\n");
    assert_eq!(
        bench.lines(),
        [
            "Error:No Checksum with line number, Last Line: 0",
            "Resend: 1"
        ]
    );
}

#[test]
fn ok_after_resend_is_a_build_option() {
    let mut bench = Bench::new(MarlinConfig {
        ok_after_resend: true,
        ..MarlinConfig::default()
    });
    bench.send("N1 G1 X5\n");
    assert_eq!(bench.lines().last().unwrap(), "ok");
}

#[test]
fn m110_sets_the_line_number_the_next_line_must_follow() {
    let mut bench = Bench::default();
    bench.send(&numbered(7, "M110 N100"));
    bench.send(&numbered(101, "M105"));
    let lines = bench.lines();
    assert_eq!(lines[0], "ok");
    assert!(lines[1].starts_with("ok T:"), "{lines:?}");
    assert_eq!(bench.marlin.last_line_number(), 101);
}

#[test]
fn the_record_holds_commands_without_line_numbers_checksums_or_comments() {
    let mut bench = Bench::default();
    bench.send(&numbered(1, "G1 X5 Y5 F3000"));
    bench.send("G1 X0 ; back home\n");
    bench.advance(Duration::from_secs(5));
    let record = bench.marlin.record();
    assert_eq!(
        record[0],
        Executed {
            line: Some(1),
            command: "G1 X5 Y5 F3000".into()
        }
    );
    assert_eq!(
        record[1],
        Executed {
            line: None,
            command: "G1 X0".into()
        }
    );
}

#[test]
fn unknown_commands_are_answered_with_marlins_echo_and_ok() {
    let mut bench = Bench::default();
    bench.send(&numbered(1, "G12345 X1"));
    assert_eq!(bench.lines(), ["echo:Unknown command: \"G12345 X1\"", "ok"]);
    assert_eq!(bench.commands(), ["G12345 X1"]);
}

#[test]
fn advanced_ok_reports_the_line_planner_and_queue_room() {
    let mut bench = Bench::new(MarlinConfig {
        advanced_ok: true,
        ..MarlinConfig::default()
    });
    bench.send(&numbered(1, "M400"));
    assert_eq!(bench.lines(), ["ok N1 P15 B3"]);
    bench.send(&numbered(2, "G1 X100 F600"));
    assert_eq!(bench.lines(), ["ok N2 P14 B3"]);
    bench.send("M400\n");
    assert_eq!(bench.lines(), Vec::<String>::new());
    bench.advance(Duration::from_secs(10));
    let lines = bench.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| *l == "echo:busy: processing")
            .count(),
        4
    );
    assert_eq!(lines.last().unwrap(), "ok P15 B3");
}

#[test]
fn m105_answers_temperatures_on_the_ok_line() {
    let mut bench = Bench::default();
    bench.send("M105\n");
    assert_eq!(bench.lines(), ["ok T:21.30 /0.00 B:21.30 /0.00 @:0 B@:0"]);
}

#[test]
fn m109_blocks_with_busy_keepalives_and_temperature_lines_until_the_hotend_is_hot() {
    let mut bench = Bench::default();
    bench.send("M109 S200\n");
    assert!(bench.lines().is_empty());
    bench.advance(Duration::from_millis(2_050));
    let lines = bench.lines();
    assert!(
        lines.contains(&"echo:busy: processing".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(" T:") && l.contains("/200.00") && l.ends_with(" W:?")),
        "{lines:?}"
    );
    bench.advance(Duration::from_secs(120));
    let lines = bench.lines();
    assert_eq!(lines.last().unwrap(), "ok");
    let (hotend, _) = bench.marlin.temperatures();
    assert!((hotend - 200.0).abs() < 1.5, "{hotend}");
    let busy = lines
        .iter()
        .filter(|l| *l == "echo:busy: processing")
        .count();
    assert!(
        busy >= 10,
        "a keepalive every 2 s over 30+ s of heating, got {busy}"
    );
}

#[test]
fn m108_breaks_a_heating_wait_through_the_emergency_parser() {
    let mut bench = Bench::new(MarlinConfig {
        emergency_parser: true,
        ..MarlinConfig::default()
    });
    bench.send("M190 S60\n");
    bench.advance(Duration::from_secs(1));
    bench.lines();
    bench.send("M108\n");
    assert_eq!(bench.lines(), ["ok", "ok"]);
}

#[test]
fn without_the_emergency_parser_m108_is_not_read_while_a_heating_wait_runs() {
    let mut bench = Bench::default();
    bench.send("M190 S60\n");
    bench.advance(Duration::from_secs(1));
    bench.lines();
    bench.send("M108\n");
    bench.advance(Duration::from_secs(1));
    assert!(!bench.lines().contains(&"ok".to_owned()));
}

#[test]
fn a_move_takes_its_time_from_feed_rate_and_distance() {
    let mut bench = Bench::default();
    bench.send("G1 X100 F6000\nM400\n");
    assert_eq!(bench.lines(), ["ok"]);
    bench.advance(Duration::from_millis(900));
    assert!(
        bench.lines().is_empty(),
        "100 mm at 100 mm/s is not done after 0.9 s"
    );
    bench.advance(Duration::from_millis(200));
    assert_eq!(bench.lines(), ["ok"]);
}

#[test]
fn the_speed_factor_divides_move_times() {
    let mut bench = Bench::new(MarlinConfig {
        speed: 10.0,
        ..MarlinConfig::default()
    });
    bench.send("G1 X100 F6000\nM400\n");
    bench.advance(Duration::from_millis(110));
    assert_eq!(bench.lines(), ["ok", "ok"]);
}

#[test]
fn ok_for_a_move_is_held_back_while_the_planner_is_full() {
    let mut bench = Bench::default();
    let moves: String = (1..=20).map(|i| format!("G1 X{} F600\n", i * 10)).collect();
    // Feed line by line as a careful host would; 15 blocks fit in the planner.
    for line in moves.lines().take(16) {
        bench.send(&format!("{line}\n"));
    }
    assert_eq!(bench.lines().len(), 15);
    bench.advance(Duration::from_millis(900));
    assert!(bench.lines().is_empty());
    bench.advance(Duration::from_millis(200));
    assert_eq!(bench.lines(), ["ok"]);
}

#[test]
fn bytes_beyond_the_rx_buffer_are_lost_while_the_firmware_is_busy() {
    let mut bench = Bench::default();
    bench.send("G4 S5\n");
    let burst: String = (0..10)
        .map(|i| format!("G1 X{i} Y{i} F1200 ; a comment to fill\n"))
        .collect();
    bench.send(&burst);
    assert_eq!(bench.marlin.rx_len(), 128);
    assert_eq!(bench.marlin.rx_lost(), burst.len() as u64 - 128);
}

#[test]
fn m112_kills_and_only_a_reset_brings_the_controller_back() {
    let mut bench = Bench::default();
    // queue.cpp checks for M112 as it reads the line, before M104 (read first) has run.
    bench.send("M104 S200\nM112\n");
    assert_eq!(bench.lines(), ["Error:Printer halted. kill() called!"]);
    assert!(bench.commands().is_empty());
    assert!(bench.marlin.is_killed());
    bench.send("M999\nM105\n");
    bench.advance(Duration::from_secs(5));
    assert!(bench.lines().is_empty());
    bench.marlin.reset(bench.now);
    assert_eq!(bench.lines()[0], "start");
    bench.send("M105\n");
    assert!(bench.lines()[0].starts_with("ok T:"));
}

#[test]
fn the_emergency_parser_kills_even_when_the_queue_is_full() {
    let mut bench = Bench::new(MarlinConfig {
        emergency_parser: true,
        ..MarlinConfig::default()
    });
    bench.send("G4 S60\nG4 S1\nG4 S1\nG4 S1\nG4 S1\n");
    bench.lines();
    bench.send(&numbered(1, "M112"));
    assert_eq!(bench.lines(), ["Error:Printer halted. kill() called!"]);
}

#[test]
fn without_the_emergency_parser_m112_waits_for_room_in_the_queue() {
    let mut bench = Bench::default();
    bench.send("G4 S60\nG4 S1\nG4 S1\nG4 S1\nG4 S1\n");
    bench.send("M112\n");
    assert!(!bench.marlin.is_killed());
    bench.advance(Duration::from_secs(61));
    assert!(bench.marlin.is_killed());
}

#[test]
fn m114_reports_the_planned_position_and_stepper_counts() {
    let mut bench = Bench::default();
    bench.send("G1 X10 Y20 Z1.5 E2 F3000\nM400\nM114\n");
    bench.advance(Duration::from_secs(5));
    let lines = bench.lines();
    assert!(
        lines.contains(&"X:10.00 Y:20.00 Z:1.50 E:2.00 Count X:800 Y:1600 Z:600".to_owned()),
        "{lines:?}"
    );
}

#[test]
fn m155_reports_temperatures_on_its_own_every_interval() {
    let mut bench = Bench::default();
    bench.send("M155 S2\n");
    assert_eq!(bench.lines(), ["ok"]);
    bench.advance(Duration::from_millis(4_100));
    assert_eq!(bench.lines(), [" T:21.30 /0.00 B:21.30 /0.00 @:0 B@:0"; 2]);
}

#[test]
fn relative_moves_and_g92_change_the_reported_position() {
    let mut bench = Bench::new(MarlinConfig {
        speed: 0.0,
        ..MarlinConfig::default()
    });
    bench.send("G91\nG1 X5\nG1 X5\nG90\nG92 X0\nG1 X1\nM114\n");
    let lines = bench.lines();
    assert!(lines.iter().any(|l| l.starts_with("X:1.00 ")), "{lines:?}");
}

#[test]
fn an_arc_is_planned_as_one_millimetre_segments() {
    let mut bench = Bench::new(MarlinConfig {
        advanced_ok: true,
        ..MarlinConfig::default()
    });
    // Half a circle of radius 5: 15.7 mm, 15 segments, exactly what the planner holds.
    bench.send("G2 X10 Y0 I5 J0 F60\n");
    assert_eq!(bench.lines(), ["ok P0 B3"]);
    bench.send("G2 X0 Y0\n");
    assert_eq!(bench.lines(), ["Error:G2/G3 bad parameters", "ok P0 B3"]);
}

#[test]
fn a_line_longer_than_max_cmd_size_is_cut_and_fails_its_checksum() {
    let mut bench = Bench::default();
    let long = numbered(1, &format!("M117 {}", "x".repeat(100)));
    bench.send(&long);
    assert_eq!(
        bench.lines(),
        [
            "Error:No Checksum with line number, Last Line: 0",
            "Resend: 1"
        ]
    );
}

#[test]
fn marlin_2_executes_an_unnumbered_line_even_if_it_carries_a_checksum() {
    // The hazard of pipelining: a fragment left after an RX discard runs unchecked.
    let mut bench = Bench::default();
    bench.send("G1 X5*99\n");
    assert_eq!(bench.lines(), ["ok"]);
    assert_eq!(bench.commands(), ["G1 X5"]);
}

#[test]
fn the_marlin_1_option_rejects_a_checksum_without_line_number_and_asks_no_resend() {
    let mut bench = Bench::new(MarlinConfig {
        reject_checksum_without_line_number: true,
        ..MarlinConfig::default()
    });
    bench.send("G1 X5*99\n");
    assert_eq!(
        bench.lines(),
        ["Error:No Line Number with checksum, Last Line: 0"]
    );
    assert!(bench.commands().is_empty());
}

#[test]
fn empty_lines_and_comment_lines_get_no_ok() {
    let mut bench = Bench::default();
    bench.send("\n\r\n; just a comment\n");
    assert!(bench.lines().is_empty());
}

#[test]
fn an_invalid_configuration_is_refused() {
    let now = Instant::now();
    let bad_speed = MarlinConfig {
        speed: -1.0,
        ..MarlinConfig::default()
    };
    assert_eq!(
        Marlin::new(bad_speed, now).unwrap_err(),
        VmConfigError::Speed(-1.0)
    );
    let no_queue = MarlinConfig {
        bufsize: 0,
        ..MarlinConfig::default()
    };
    assert!(matches!(
        Marlin::new(no_queue, now).unwrap_err(),
        VmConfigError::Size {
            name: "bufsize",
            ..
        }
    ));
}

#[test]
fn m113_changes_or_silences_the_busy_keepalive() {
    let mut bench = Bench::default();
    bench.send("M113 S1\nG4 S3\n");
    bench.advance(Duration::from_millis(3_500));
    let lines = bench.lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| *l == "echo:busy: processing")
            .count(),
        2,
        "{lines:?}"
    );
    bench.send("M113 S0\nM113\nG4 S3\n");
    bench.advance(Duration::from_millis(3_500));
    assert_eq!(bench.lines(), ["ok", "echo:M113 S0", "ok", "ok"]);
}

#[test]
fn no_timeouts_prints_wait_while_the_queue_stays_empty() {
    let config = MarlinConfig {
        no_timeouts: Some(Duration::from_secs(1)),
        ..MarlinConfig::default()
    };
    let mut bench = Bench::new(config);
    bench.advance(Duration::from_millis(2_500));
    assert_eq!(bench.lines(), ["wait", "wait"]);
    bench.send("G4 S2\n");
    bench.advance(Duration::from_millis(1_500));
    assert!(bench.lines().is_empty(), "no wait while a command runs");
}

#[test]
fn m999_asks_for_the_next_line_unless_told_not_to() {
    let mut bench = Bench::default();
    bench.send(&numbered(1, "M999"));
    assert_eq!(bench.lines(), ["Resend: 2", "ok"]);
    bench.send(&numbered(2, "M999 S1"));
    assert_eq!(bench.lines(), ["ok"]);
}

#[test]
fn lower_case_commands_are_unknown_as_in_stock_builds() {
    let mut bench = Bench::default();
    bench.send("g28\n");
    assert_eq!(bench.lines(), ["echo:Unknown command: \"g28\"", "ok"]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn chunk() -> impl Strategy<Value = (Vec<u8>, u64)> {
        let bytes = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "(N[0-9]{1,3} )?(G1 X[0-9.]{1,5}|M10[459] S[0-9]{1,3}|M112|M108|M400|G4 S1|M110 N[0-9])(\\*[0-9]{1,3})?\n"
                .prop_map(String::into_bytes),
        ];
        (bytes, 0u64..3_000)
    }

    proptest! {
        /// Whatever arrives, in whatever rhythm, the firmware neither panics nor holds more
        /// than its RX buffer.
        #[test]
        fn arbitrary_input_never_overfills_the_rx_buffer(
            chunks in proptest::collection::vec(chunk(), 1..60),
            emergency_parser in any::<bool>(),
            advanced_ok in any::<bool>(),
        ) {
            let config = MarlinConfig { emergency_parser, advanced_ok, ..MarlinConfig::default() };
            let mut bench = Bench::new(config);
            for (bytes, pause_ms) in chunks {
                bench.send_bytes(&bytes);
                prop_assert!(bench.marlin.rx_len() <= 128);
                bench.advance(Duration::from_millis(pause_ms));
                prop_assert!(bench.marlin.rx_len() <= 128);
                bench.lines();
            }
        }
    }
}
