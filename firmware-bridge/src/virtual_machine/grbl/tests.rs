//! Transcript tests of the virtual GRBL against the exact lines GRBL 1.1h prints.
//! A virtual clock jumps from deadline to deadline; nothing sleeps.

use proptest::prelude::*;

use super::*;

struct Bench {
    grbl: Grbl,
    now: Instant,
}

impl Bench {
    fn new(config: GrblConfig) -> Self {
        let now = Instant::now();
        let grbl = Grbl::new(config, now).expect("valid config");
        let mut bench = Bench { grbl, now };
        bench.lines();
        bench
    }

    fn default() -> Self {
        Bench::new(GrblConfig::default())
    }

    fn send(&mut self, bytes: &[u8]) {
        self.grbl.handle_input(self.now, bytes);
    }

    fn lines(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.grbl.poll_output())
            .map(|line| {
                let text = String::from_utf8(line).expect("ASCII output");
                assert!(
                    text.ends_with("\r\n"),
                    "GRBL ends lines with CR LF: {text:?}"
                );
                text.trim_end_matches("\r\n").to_owned()
            })
            .collect()
    }

    /// Sends one line and returns everything printed in answer.
    fn line(&mut self, line: &str) -> Vec<String> {
        self.send(format!("{line}\n").as_bytes());
        self.lines()
    }

    fn raw_status(&mut self) -> String {
        self.send(b"?");
        let lines = self.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].clone()
    }

    /// A status report without the fields GRBL shows only every few reports.
    fn status(&mut self) -> String {
        let report = self.raw_status();
        let inner = report.trim_start_matches('<').trim_end_matches('>');
        let kept: Vec<&str> = inner
            .split('|')
            .filter(|field| !["WCO:", "Ov:", "A:"].iter().any(|p| field.starts_with(p)))
            .collect();
        format!("<{}>", kept.join("|"))
    }

    fn advance(&mut self, duration: Duration) {
        let end = self.now + duration;
        for _ in 0..1_000_000 {
            match self.grbl.poll_timeout() {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.grbl.handle_timeout(self.now);
                    // A deadline that handling does not move would spin a runner.
                    assert!(self.grbl.poll_timeout().is_none_or(|next| next > self.now));
                }
                _ => break,
            }
        }
        self.now = end;
        self.grbl.handle_timeout(end);
    }

    fn commands(&self) -> Vec<&str> {
        self.grbl
            .record()
            .iter()
            .map(|e| e.command.as_str())
            .collect()
    }
}

#[test]
fn power_on_prints_a_blank_line_and_the_welcome_banner() {
    let mut grbl = Grbl::new(GrblConfig::default(), Instant::now()).unwrap();
    assert_eq!(grbl.poll_output().unwrap(), b"\r\n");
    assert_eq!(grbl.poll_output().unwrap(), b"Grbl 1.1h ['$' for help]\r\n");
    assert_eq!(grbl.poll_output(), None);
}

#[test]
fn with_homing_enabled_it_powers_up_locked_until_unlocked() {
    let config = GrblConfig {
        homing: true,
        ..GrblConfig::default()
    };
    let mut grbl = Grbl::new(config, Instant::now()).unwrap();
    let lines: Vec<Vec<u8>> = std::iter::from_fn(|| grbl.poll_output()).collect();
    assert_eq!(lines.last().unwrap(), b"[MSG:'$H'|'$X' to unlock]\r\n");
    let mut bench = Bench {
        grbl,
        now: Instant::now(),
    };
    assert_eq!(bench.line("G0 X-1"), ["error:9"]);
    assert!(bench.status().starts_with("<Alarm|"));
    assert_eq!(bench.line("$X"), ["[MSG:Caution: Unlocked]", "ok"]);
    assert_eq!(bench.line("G0 X-1"), ["ok"]);
}

#[test]
fn every_line_gets_ok_or_the_error_code_of_its_real_cause() {
    let mut bench = Bench::default();
    let cases = [
        ("G1 X10", "error:22"),
        ("G5 X1", "error:20"),
        ("X", "error:2"),
        ("G0 X1.2.3", "error:1"),
        ("M3.5", "error:23"),
        ("G0 G1 X1", "error:21"),
        ("G0 X1 X2", "error:25"),
        ("G1 X1 F-5", "error:4"),
        ("G4", "error:28"),
        ("G0 X1 I5", "error:36"),
        ("T300", "error:38"),
        ("N99999999 G0 X1", "error:27"),
        ("G92", "error:26"),
        ("G2 X10 F100", "error:35"),
        ("G80 X1", "error:31"),
        ("E5", "error:20"),
        ("G1 X10 F100", "ok"),
        ("", "ok"),
        ("(only a comment)", "ok"),
    ];
    for (line, expected) in cases {
        assert_eq!(bench.line(line), [expected], "{line:?}");
    }
    assert_eq!(bench.commands(), ["G1X10F100"]);
}

#[test]
fn a_line_over_79_characters_after_filtering_is_error_11_and_not_executed() {
    let mut bench = Bench::default();
    let fits = format!("G1X1F100{}", "0".repeat(71));
    assert_eq!(fits.len(), 79);
    assert_eq!(
        bench.line(&format!(
            "{} ; spaces and comments do not count",
            fits.replace('G', "g ")
        )),
        ["ok"]
    );
    assert_eq!(bench.line(&format!("{fits}0")), ["error:11"]);
    assert_eq!(bench.commands().len(), 1);
}

#[test]
fn an_idle_status_report_has_state_position_buffers_and_feed() {
    let mut bench = Bench::default();
    assert_eq!(
        bench.status(),
        "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0>"
    );
}

#[test]
fn a_running_status_report_shows_the_line_number_and_feed() {
    let mut bench = Bench::default();
    // The spindle change waits for an empty planner (it is), then the move is queued.
    assert_eq!(bench.line("N7 G1 X-10 F300 M3 S1000"), ["ok"]);
    bench.advance(Duration::from_secs(1));
    assert_eq!(
        bench.status(),
        "<Run|MPos:-5.000,0.000,0.000|Bf:14,128|Ln:7|FS:300,1000>"
    );
    bench.advance(Duration::from_secs(2));
    assert_eq!(
        bench.status(),
        "<Idle|MPos:-10.000,0.000,0.000|Bf:15,128|FS:0,1000>"
    );
}

#[test]
fn feed_hold_freezes_motion_and_cycle_start_resumes_it() {
    let mut bench = Bench::default();
    bench.line("G1 X-10 F300");
    bench.advance(Duration::from_secs(1));
    bench.send(b"!");
    bench.advance(Duration::from_secs(10));
    assert_eq!(
        bench.status(),
        "<Hold:0|MPos:-5.000,0.000,0.000|Bf:14,128|FS:0,0>"
    );
    bench.send(b"~");
    bench.advance(Duration::from_secs(1));
    assert_eq!(
        bench.status(),
        "<Idle|MPos:-10.000,0.000,0.000|Bf:15,128|FS:0,0>"
    );
}

#[test]
fn a_soft_reset_during_motion_raises_alarm_3_then_the_banner() {
    let mut bench = Bench::default();
    bench.line("G1 X-10 F600");
    bench.advance(Duration::from_millis(100));
    bench.send(&[0x18]);
    assert_eq!(
        bench.lines(),
        [
            "ALARM:3",
            "",
            "Grbl 1.1h ['$' for help]",
            "[MSG:'$H'|'$X' to unlock]"
        ]
    );
    assert!(bench.status().starts_with("<Alarm|"));
}

#[test]
fn a_soft_reset_while_idle_only_reboots() {
    let mut bench = Bench::default();
    bench.send(b"G1 X-1 F100\n");
    bench.advance(Duration::from_secs(5));
    bench.lines();
    bench.send(&[0x18]);
    assert_eq!(bench.lines(), ["", "Grbl 1.1h ['$' for help]"]);
    assert!(bench.status().starts_with("<Idle|MPos:-1.000,"));
}

#[test]
fn system_commands_report_settings_build_and_parser_state() {
    let mut bench = Bench::default();
    let settings = bench.line("$$");
    assert_eq!(settings.first().unwrap(), "$0=10");
    assert!(settings.contains(&"$110=500.000".to_owned()));
    assert!(settings.contains(&"$10=3".to_owned()));
    assert_eq!(settings.last().unwrap(), "ok");
    assert_eq!(
        bench.line("$I"),
        ["[VER:1.1h.20190830:]", "[OPT:V,15,128]", "ok"]
    );
    assert_eq!(
        bench.line("$G"),
        ["[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]", "ok"]
    );
    bench.line("G1 F500 S1000 M3");
    bench.advance(Duration::ZERO);
    bench.lines();
    assert_eq!(
        bench.line("$G"),
        ["[GC:G1 G54 G17 G21 G90 G94 M3 M9 T0 F500 S1000]", "ok"]
    );
    assert_eq!(bench.line("$Q"), ["error:3"]);
}

#[test]
fn dollar_commands_that_need_idle_are_refused_during_motion() {
    let mut bench = Bench::default();
    bench.line("G1 X-10 F60");
    assert_eq!(bench.line("$$"), ["error:8"]);
    assert_eq!(bench.line("$C"), ["error:8"]);
    assert_eq!(bench.line("$G").last().unwrap(), "ok");
}

#[test]
fn check_mode_parses_without_moving_and_leaving_it_resets() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("$C"), ["[MSG:Enabled]", "ok"]);
    assert_eq!(bench.line("G1 X-50"), ["error:22"]);
    assert_eq!(bench.line("G1 X-50 F100"), ["ok"]);
    assert_eq!(
        bench.status(),
        "<Check|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0>"
    );
    assert_eq!(
        bench.line("$C"),
        ["[MSG:Disabled]", "ok", "", "Grbl 1.1h ['$' for help]"]
    );
    assert!(
        bench.commands().iter().all(|c| !c.starts_with('G')),
        "{:?}",
        bench.commands()
    );
}

#[test]
fn homing_takes_time_and_soft_limits_then_guard_the_travel() {
    let config = GrblConfig {
        homing: true,
        soft_limits: true,
        ..GrblConfig::default()
    };
    let mut bench = Bench::new(config);
    assert_eq!(bench.line("G0 X-5"), ["error:9"]);
    assert_eq!(bench.line("$H"), Vec::<String>::new());
    bench.send(b"?");
    assert_eq!(
        bench.lines(),
        Vec::<String>::new(),
        "no status report while homing"
    );
    bench.advance(Duration::from_secs(5));
    assert_eq!(bench.lines(), ["ok"]);
    assert_eq!(
        bench.status(),
        "<Idle|MPos:-1.000,-1.000,-1.000|Bf:15,128|FS:0,0>"
    );
    assert_eq!(bench.line("G0 X-100"), ["ok"]);
    assert_eq!(bench.line("G0 X5"), ["ALARM:2", "[MSG:Reset to continue]"]);
    assert_eq!(
        bench.line("G0 X-5"),
        Vec::<String>::new(),
        "everything but reset is ignored"
    );
    assert!(bench.status().starts_with("<Alarm|"));
    bench.send(&[0x18]);
    assert_eq!(
        bench.lines(),
        ["", "Grbl 1.1h ['$' for help]", "[MSG:'$H'|'$X' to unlock]"]
    );
}

#[test]
fn homing_is_refused_when_disabled() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("$H"), ["error:5"]);
}

#[test]
fn settings_are_validated_like_grbl_does() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("$20=1"), ["error:10"]);
    assert_eq!(bench.line("$999=1"), ["error:3"]);
    assert_eq!(bench.line("$1=-1"), ["error:4"]);
    assert_eq!(bench.line("$1=abc"), ["error:2"]);
    assert_eq!(bench.line("$10=1"), ["ok"]);
    assert_eq!(bench.status(), "<Idle|MPos:0.000,0.000,0.000|FS:0,0>");
}

#[test]
fn the_ok_for_a_move_waits_for_a_free_planner_block() {
    let mut bench = Bench::default();
    for i in 1..=15 {
        assert_eq!(bench.line(&format!("G1 X-{i} F60")), ["ok"]);
    }
    assert_eq!(bench.line("G1 X-16 F60"), Vec::<String>::new());
    assert!(bench.status().contains("|Bf:0,128|"));
    bench.advance(Duration::from_secs(1));
    assert_eq!(bench.lines(), ["ok"]);
}

#[test]
fn dwell_takes_seconds_after_the_planner_empties() {
    let mut bench = Bench::default();
    bench.line("G1 X-1 F60");
    assert_eq!(bench.line("G4 P0.5"), Vec::<String>::new());
    bench.advance(Duration::from_millis(1_400));
    assert!(bench.lines().is_empty());
    bench.advance(Duration::from_millis(200));
    assert_eq!(bench.lines(), ["ok"]);
}

#[test]
fn m0_pauses_until_cycle_start_and_m2_ends_the_program() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("M0"), Vec::<String>::new());
    assert!(bench.status().starts_with("<Hold:0|"));
    bench.send(b"~");
    assert_eq!(bench.lines(), ["ok"]);
    assert_eq!(bench.line("M2"), ["[MSG:Pgm End]", "ok"]);
}

#[test]
fn jogging_moves_without_changing_the_parser_state_and_can_be_cancelled() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("$J=G91X-10F300"), ["ok"]);
    assert!(bench.status().starts_with("<Jog|"));
    assert_eq!(bench.line("G0 X-1"), ["error:9"]);
    bench.advance(Duration::from_millis(600));
    bench.send(&[0x85]);
    assert_eq!(
        bench.status(),
        "<Idle|MPos:-3.000,0.000,0.000|Bf:15,128|FS:0,0>"
    );
    assert_eq!(bench.line("$J=X-1"), ["error:16"]);
    assert_eq!(
        bench.line("$G")[0],
        "[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]"
    );
}

#[test]
fn startup_lines_run_after_every_reset() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("$N0=G20"), ["ok"]);
    bench.send(&[0x18]);
    assert_eq!(bench.lines(), ["", "Grbl 1.1h ['$' for help]", ">G20:ok"]);
    assert_eq!(bench.line("$N"), ["$N0=G20", "$N1=", "ok"]);
}

#[test]
fn bytes_beyond_the_rx_buffer_are_lost_when_the_host_does_not_count() {
    let mut bench = Bench::default();
    bench.line("G4 P10");
    let burst: String = (0..20).map(|i| format!("G1 X-{i} F100\n")).collect();
    bench.send(burst.as_bytes());
    assert_eq!(bench.grbl.rx_len(), 128);
    assert_eq!(bench.grbl.rx_lost(), burst.len() as u64 - 128);
}

#[test]
fn realtime_bytes_never_take_room_in_the_rx_buffer() {
    let mut bench = Bench::default();
    bench.line("G4 P10");
    bench.send(b"??~~\x90\x91");
    bench.lines();
    assert_eq!(bench.grbl.rx_len(), 0);
}

#[test]
fn the_normalised_file_line_equals_what_grbl_executed() {
    assert_eq!(
        normalize_grbl_line("g1 x10 (move) y2.5 ; done"),
        "G1X10Y2.5"
    );
}

#[test]
fn soft_limits_without_homing_are_an_invalid_configuration() {
    let config = GrblConfig {
        soft_limits: true,
        ..GrblConfig::default()
    };
    assert_eq!(
        Grbl::new(config, Instant::now()).unwrap_err(),
        VmConfigError::SoftLimitsNeedHoming
    );
}

fn job_line() -> impl Strategy<Value = String> {
    (-100i32..0, -100i32..0, 50u32..2000, 0usize..3).prop_map(|(x, y, feed, style)| match style {
        0 => format!("G1 X{x} Y{y} F{feed}"),
        1 => format!("g1x{x}.5y{y} f{feed} ; with a comment"),
        _ => format!("G0 X{x} Y{y}"),
    })
}

proptest! {
    /// A host counting characters never overflows the 128-byte ring, and every line runs
    /// once, in order.
    #[test]
    fn a_character_counting_host_never_loses_a_byte(lines in proptest::collection::vec(job_line(), 1..200)) {
        let mut bench = Bench::new(GrblConfig { speed: 50.0, ..GrblConfig::default() });
        let mut in_flight: VecDeque<usize> = VecDeque::new();
        let mut next = 0;
        let mut answered = 0;
        while answered < lines.len() {
            while next < lines.len() {
                let len = lines[next].len() + 1;
                if in_flight.iter().sum::<usize>() + len > 128 {
                    break;
                }
                bench.send(format!("{}\n", lines[next]).as_bytes());
                in_flight.push_back(len);
                next += 1;
                prop_assert!(bench.grbl.rx_len() <= 128);
            }
            let replies = bench.lines();
            if replies.is_empty() {
                let at = bench.grbl.poll_timeout().expect("something to wait for");
                bench.advance(at.saturating_duration_since(bench.now));
            }
            for reply in replies {
                prop_assert_eq!(reply.as_str(), "ok");
                in_flight.pop_front();
                answered += 1;
            }
        }
        prop_assert_eq!(bench.grbl.rx_lost(), 0);
        let expected: Vec<String> = lines.iter().map(|l| normalize_grbl_line(l)).collect();
        prop_assert_eq!(bench.commands(), expected);
    }
}

#[test]
fn offsets_and_overrides_show_every_few_reports_and_right_after_a_change() {
    let mut bench = Bench::default();
    let reports: Vec<String> = (0..12).map(|_| bench.raw_status()).collect();
    assert_eq!(
        reports[0],
        "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0|WCO:0.000,0.000,0.000>"
    );
    assert_eq!(
        reports[1],
        "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0|Ov:100,100,100>"
    );
    assert_eq!(reports[2], "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0>");
    assert!(reports[10].contains("|WCO:"), "{reports:?}");
    assert!(reports[11].contains("|Ov:"), "{reports:?}");
    bench.line("M3 S1000");
    bench.send(&[0x91, 0x91, 0x97, 0x9B, 0xA0]);
    assert_eq!(
        bench.raw_status(),
        "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,900|Ov:120,25,90|A:SF>"
    );
}

#[test]
fn a_feed_override_changes_how_long_new_moves_take() {
    let mut bench = Bench::default();
    bench.send(&[0x92; 5]);
    bench.line("G1 X-10 F300");
    bench.advance(Duration::from_millis(3_900));
    assert!(
        bench.status().starts_with("<Run|"),
        "10 mm at 50% of 5 mm/s takes 4 s"
    );
    bench.advance(Duration::from_millis(200));
    assert!(bench.status().starts_with("<Idle|"));
}

#[test]
fn work_offsets_from_g10_move_the_work_origin_and_survive_a_reset() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("G10 L2 P1 X-10 Y-20"), ["ok"]);
    assert_eq!(bench.line("G0 X5 Y5"), ["ok"]);
    bench.advance(Duration::from_secs(5));
    assert!(
        bench
            .status()
            .starts_with("<Idle|MPos:-5.000,-15.000,0.000|")
    );
    bench.send(&[0x18]);
    bench.lines();
    let offsets = bench.line("$#");
    assert_eq!(offsets[0], "[G54:-10.000,-20.000,0.000]");
    assert_eq!(
        bench.line("G10 L20 P2 X0"),
        ["ok"],
        "G55 X zero at the current position"
    );
    assert_eq!(bench.line("$#")[1], "[G55:-5.000,0.000,0.000]");
    assert_eq!(bench.line("G10 L3 P1 X0"), ["error:20"]);
    assert_eq!(bench.line("G10 L2 P7 X0"), ["error:29"]);
    assert_eq!(bench.line("G10 L2 X0"), ["error:28"]);
}

#[test]
fn g53_moves_in_machine_coordinates_for_one_block_only() {
    let mut bench = Bench::default();
    bench.line("G10 L2 P1 X-10");
    bench.line("G53 G0 X-50");
    bench.advance(Duration::from_secs(10));
    assert!(bench.status().starts_with("<Idle|MPos:-50.000,"));
    assert_eq!(bench.line("G53 G2 X0 I1"), ["error:30"]);
    bench.line("G0 X0");
    bench.advance(Duration::from_secs(10));
    assert!(bench.status().starts_with("<Idle|MPos:-10.000,"));
}

#[test]
fn g28_goes_home_through_the_intermediate_point_and_g28_1_stores_home() {
    let mut bench = Bench::default();
    bench.line("G0 X-30 Y-40");
    bench.line("G28.1");
    bench.line("G0 X-1 Y-1");
    assert_eq!(bench.line("G28 X-5"), ["ok"]);
    bench.advance(Duration::from_secs(20));
    assert!(
        bench
            .status()
            .starts_with("<Idle|MPos:-30.000,-1.000,0.000|"),
        "only X went home"
    );
    assert_eq!(bench.line("$#")[6], "[G28:-30.000,-40.000,0.000]");
}

#[test]
fn a_dynamic_tool_length_offset_shifts_z_and_needs_only_z() {
    let mut bench = Bench::default();
    assert_eq!(bench.line("G43.1 Z-2"), ["ok"]);
    bench.line("G0 Z0");
    bench.advance(Duration::from_secs(5));
    assert!(bench.status().starts_with("<Idle|MPos:0.000,0.000,-2.000|"));
    assert_eq!(bench.line("G43.1 X1"), ["error:37"]);
    assert_eq!(bench.line("G49"), ["ok"]);
    assert!(bench.line("$#").contains(&"[TLO:0.000]".to_owned()));
}

#[test]
fn g92_sets_the_work_position_on_top_of_the_work_offset() {
    let mut bench = Bench::new(GrblConfig {
        status_report_mask: 2,
        ..GrblConfig::default()
    });
    bench.line("G10 L2 P1 X-10");
    bench.line("G0 X0");
    bench.advance(Duration::from_secs(5));
    assert_eq!(bench.line("G92 X100"), ["ok"]);
    assert!(
        bench
            .status()
            .starts_with("<Idle|WPos:100.000,0.000,0.000|"),
        "{}",
        bench.status()
    );
    bench.line("G92.1");
    assert!(bench.status().starts_with("<Idle|WPos:0.000,"));
}

fn noisy_chunk() -> impl Strategy<Value = (Vec<u8>, u64)> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "(N[0-9]{1,3} )?(G[0-3] X-?[0-9.]{1,5}( F[0-9]{1,4})?|\\$[$#GIXHC]|G4 P0.[0-9]|M[035] S[0-9]{1,4}|[?!~])\n"
            .prop_map(String::into_bytes),
    ];
    (bytes, 0u64..3_000)
}

proptest! {
    /// Whatever arrives, in whatever rhythm, GRBL neither panics nor holds more than its RX
    /// buffer.
    #[test]
    fn arbitrary_input_never_overfills_the_rx_buffer(
        chunks in proptest::collection::vec(noisy_chunk(), 1..60),
        homing in any::<bool>(),
    ) {
        let config = GrblConfig { homing, soft_limits: homing, ..GrblConfig::default() };
        let mut bench = Bench::new(config);
        for (bytes, pause_ms) in chunks {
            bench.send(&bytes);
            prop_assert!(bench.grbl.rx_len() <= 128);
            bench.advance(Duration::from_millis(pause_ms));
            prop_assert!(bench.grbl.rx_len() <= 128);
            bench.lines();
        }
    }
}
