//! The emulated line and fault injection around a firmware core, on a virtual clock.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::virtual_machine::normalize_grbl_line;

fn marlin(baud: u32, faults: FaultConfig) -> VmConfig {
    VmConfig {
        firmware: FirmwareConfig::Marlin(MarlinConfig {
            speed: 0.0,
            ..MarlinConfig::default()
        }),
        baud,
        faults,
    }
}

fn marlin_advanced_ok(baud: u32, faults: FaultConfig) -> VmConfig {
    let firmware = MarlinConfig {
        speed: 0.0,
        advanced_ok: true,
        ..MarlinConfig::default()
    };
    VmConfig {
        firmware: FirmwareConfig::Marlin(firmware),
        baud,
        faults,
    }
}

/// Drives a machine on a virtual clock and collects what reaches the host.
struct Line {
    machine: VirtualMachine,
    now: Instant,
    received: Vec<u8>,
}

impl Line {
    fn new(config: VmConfig) -> Self {
        let now = Instant::now();
        let machine = VirtualMachine::new(config, now).expect("valid config");
        let mut line = Line {
            machine,
            now,
            received: Vec::new(),
        };
        // Long enough for the boot lines to cross even a slow line.
        line.advance(Duration::from_secs(5));
        line.received.clear();
        line
    }

    fn send(&mut self, bytes: &[u8]) {
        self.machine.handle_host_bytes(self.now, bytes);
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(bytes) = self.machine.poll_transmit() {
            self.received.extend(bytes);
        }
    }

    fn advance(&mut self, duration: Duration) {
        let end = self.now + duration;
        while let Some(at) = self.machine.poll_timeout().filter(|at| *at <= end) {
            self.now = self.now.max(at);
            self.machine.handle_timeout(self.now);
            assert!(
                self.machine
                    .poll_timeout()
                    .is_none_or(|next| next > self.now),
                "a deadline that does not move"
            );
            self.collect();
        }
        self.now = end;
        self.machine.handle_timeout(end);
        self.collect();
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.received)).into_owned()
    }
}

fn numbered(n: usize, command: &str) -> String {
    let payload = format!("N{n} {command}");
    let checksum = payload.bytes().fold(0u8, |cs, b| cs ^ b);
    format!("{payload}*{checksum}\n")
}

/// A runner's timer fires late (a tokio tick is 1 ms); the firmware must still answer at
/// the instant the line arrived, as a UART interrupt would, not when the runner woke up.
#[test]
fn the_firmware_answers_when_the_line_arrives_even_if_woken_late() {
    // 1000 baud: 10 ms per byte; `G4 P0\n` is complete 60 ms after it is sent.
    let mut line = Line::new(marlin(1000, FaultConfig::default()));
    line.machine.handle_host_bytes(line.now, b"G4 P0\n");
    // Woken only once, 100 ms later: the `ok` left at 60 ms and its three bytes (with the
    // line end) took 30 ms, so it has reached the host by now.
    line.now += Duration::from_millis(100);
    line.machine.handle_timeout(line.now);
    line.collect();
    assert_eq!(line.text(), "ok\n");
}

#[test]
fn bytes_cross_the_line_at_a_tenth_of_the_baud_rate_each_way() {
    // 1000 baud: 10 ms per byte.
    let mut line = Line::new(marlin(1000, FaultConfig::default()));
    line.send(b"M105\n");
    line.advance(Duration::from_millis(49));
    assert_eq!(line.text(), "", "the newline has not arrived yet");
    line.advance(Duration::from_millis(51));
    assert_eq!(
        line.text(),
        "ok T:",
        "five bytes of the answer in the next 50 ms"
    );
    line.advance(Duration::from_secs(1));
    assert_eq!(line.text(), "21.30 /0.00 B:21.30 /0.00 @:0 B@:0\n");
}

#[test]
fn a_dropped_ok_never_reaches_the_host() {
    let mut line = Line::new(marlin(0, FaultConfig::default()));
    line.machine.inject(line.now, Fault::DropNextOk);
    line.send(b"M400\n");
    assert_eq!(line.text(), "");
    line.send(b"M400\n");
    assert_eq!(line.text(), "ok\n");
    assert_eq!(line.machine.stats().oks_dropped, 1);
    assert_eq!(
        line.machine.record().len(),
        2,
        "the command ran even though its ok was lost"
    );
}

#[test]
fn an_injected_corruption_turns_a_good_line_into_an_unknown_one() {
    let mut line = Line::new(marlin(0, FaultConfig::default()));
    line.machine
        .inject(line.now, Fault::CorruptNextByteToMachine);
    // The flipped `N` makes the line unnumbered and unknown: answered, no motion.
    line.send(numbered(1, "G1 X5").as_bytes());
    assert_eq!(line.text(), "echo:Unknown command: \"n1 G1 X5\"\nok\n");
    assert_eq!(line.machine.record()[0].line, None);
    assert_eq!(line.machine.stats().corrupted_to_machine, 1);
}

#[test]
fn corruption_is_the_same_for_the_same_seed_and_differs_for_another() {
    let run = |seed: u64| {
        let faults = FaultConfig {
            seed,
            corrupt_to_machine: 0.05,
            corrupt_to_host: 0.05,
            ..FaultConfig::default()
        };
        let mut line = Line::new(marlin(115_200, faults));
        for n in 1..=50 {
            line.send(numbered(n, &format!("G1 X{n} Y{n}")).as_bytes());
            line.advance(Duration::from_millis(10));
        }
        (line.text(), line.machine.stats())
    };
    let (first, stats) = run(7);
    assert!(
        stats.corrupted_to_machine > 0 && stats.corrupted_to_host > 0,
        "{stats:?}"
    );
    assert_eq!(run(7).0, first);
    assert_ne!(run(8).0, first);
}

#[test]
fn an_injected_reset_reboots_the_firmware_and_keeps_the_record() {
    let mut line = Line::new(marlin(0, FaultConfig::default()));
    line.send(numbered(1, "G28").as_bytes());
    line.machine.inject(line.now, Fault::Reset);
    line.collect();
    assert!(line.text().contains("start\n"));
    line.send(numbered(2, "G28").as_bytes());
    assert_eq!(
        line.text(),
        "Error:Line Number is not Last Line Number+1, Last Line: 0\nResend: 1\n"
    );
    assert_eq!(line.machine.record().len(), 1);
    assert_eq!(line.machine.stats().resets, 1);
}

#[test]
fn a_reset_rate_of_one_reboots_after_every_command() {
    let faults = FaultConfig {
        reset_per_command: 1.0,
        ..FaultConfig::default()
    };
    let mut line = Line::new(marlin(0, faults));
    line.send(b"M400\n");
    assert_eq!(line.machine.stats().resets, 1);
    assert!(line.text().contains("start\n"));
    line.send(b"M400\n");
    assert_eq!(line.machine.stats().resets, 2);
    assert_eq!(line.machine.record().len(), 2);
}

#[test]
fn a_disconnect_is_reported_once_and_silences_the_machine() {
    let mut line = Line::new(marlin(0, FaultConfig::default()));
    line.machine.inject(line.now, Fault::Disconnect);
    assert_eq!(line.machine.poll_event(), Some(VmEvent::Unplugged));
    assert_eq!(line.machine.poll_event(), None);
    line.send(b"M105\n");
    assert_eq!(line.text(), "");
    assert_eq!(line.machine.poll_timeout(), None);
}

#[test]
fn an_invalid_fault_rate_is_refused() {
    let faults = FaultConfig {
        corrupt_to_host: -0.1,
        ..FaultConfig::default()
    };
    let error = VirtualMachine::new(marlin(0, faults), Instant::now()).unwrap_err();
    assert_eq!(
        error,
        VmConfigError::Probability {
            name: "corrupt_to_host",
            value: -0.1
        }
    );
}

/// How a stream ended.
#[derive(Debug, PartialEq)]
enum Streamed {
    /// Every line was acknowledged.
    Complete,
    /// The firmware asked for a line never sent: its line counter went past the host's,
    /// which only a corrupted line number that still passed the checksum can cause.
    Desynchronised,
}

/// A host that keeps one line in flight, honours `Resend:` and resends on a timeout. It
/// takes only `ok N<its line>` as the answer: after an RX discard, the tail of a cut line
/// runs as an unknown command whose plain `ok` must not be mistaken for the line's.
/// `Resend:` for the line after the last one sent means its `ok` was lost, but only when the
/// error before it agrees (`Last Line: <that line>`): one flipped bit turns `Resend: 24` into
/// `Resend: 25`, and believing that alone would skip a line that never ran.
fn stream_one_line_at_a_time(line: &mut Line, job: &[String]) -> Streamed {
    let mut current = 1;
    let mut highest_sent = 0;
    let mut deadline: Option<Instant> = None;
    let mut pending = String::new();
    let mut beyond = 0;
    // `Last Line: N` of the latest error line, which Marlin prints before its `Resend:`.
    let mut last_line: Option<usize> = None;
    for _ in 0..1_000_000 {
        if current > job.len() {
            return Streamed::Complete;
        }
        if deadline.is_none() {
            line.send(numbered(current, &job[current - 1]).as_bytes());
            highest_sent = highest_sent.max(current);
            deadline = Some(line.now + Duration::from_secs(2));
        }
        let wake = line
            .machine
            .poll_timeout()
            .into_iter()
            .chain(deadline)
            .min()
            .expect("a deadline");
        line.advance(wake.saturating_duration_since(line.now));
        pending.push_str(&line.text());
        while let Some(end) = pending.find('\n') {
            let reply: String = pending.drain(..=end).collect();
            if reply.starts_with(&format!("ok N{current} ")) {
                current += 1;
                deadline = None;
            } else if let Some((_, n)) = reply.rsplit_once("Last Line: ") {
                last_line = n.trim().parse().ok();
            } else if let Some(rest) = reply.strip_prefix("Resend:")
                && let Ok(asked) = rest.trim().parse::<usize>()
            {
                let confirmed = last_line.take();
                let lost_ok = asked == highest_sent + 1 && confirmed == Some(highest_sent);
                if (1..=highest_sent).contains(&asked) || lost_ok {
                    current = asked;
                    deadline = None;
                } else if asked > highest_sent + 1 {
                    // One such number may be a corrupted reply; the same request again is not.
                    beyond += 1;
                    if beyond >= 3 {
                        return Streamed::Desynchronised;
                    }
                }
            }
        }
        if deadline.is_some_and(|at| line.now >= at) {
            deadline = None;
        }
    }
    panic!("the stream made no progress");
}

fn job() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        (0u32..200, 0u32..200, 1u32..500)
            .prop_map(|(x, y, e)| format!("G1 X{x}.5 Y{y} E{e}.25 F1800")),
        20..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With corruption both ways, Marlin's line numbers keep every executed line unique and
    /// in order. The XOR checksum misses two flips of the same bit, so a line may run with a
    /// corrupted text, or even a corrupted number that then desynchronises the stream; the
    /// numbers that ran are still 1, 2, 3… without repeats or gaps.
    #[test]
    fn marlin_never_executes_a_line_twice_or_out_of_order(
        job in job(),
        seed in any::<u64>(),
        to_machine in 0.0..0.02f64,
        to_host in 0.0..0.02f64,
    ) {
        let faults = FaultConfig { seed, corrupt_to_machine: to_machine, corrupt_to_host: to_host, ..FaultConfig::default() };
        let mut line = Line::new(marlin_advanced_ok(115_200, faults));
        let streamed = stream_one_line_at_a_time(&mut line, &job);
        let numbers: Vec<u64> = line.machine.record().iter().filter_map(|e| e.line).collect();
        let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
        prop_assert_eq!(&numbers, &expected);
        if streamed == Streamed::Complete {
            prop_assert_eq!(numbers.len(), job.len());
        }
        // One flipped bit cannot turn the space before `G` into a line end, so no tail of a
        // cut line is ever a move.
        let unnumbered_moves = line.machine.record().iter().filter(|e| e.line.is_none() && e.command.starts_with('G')).count();
        prop_assert_eq!(unnumbered_moves, 0);
    }

    /// Without corruption the record is the file, word for word.
    #[test]
    fn a_clean_line_executes_exactly_the_file(job in job()) {
        let mut line = Line::new(marlin_advanced_ok(250_000, FaultConfig::default()));
        prop_assert_eq!(stream_one_line_at_a_time(&mut line, &job), Streamed::Complete);
        let commands: Vec<&str> = line.machine.record().iter().map(|e| e.command.as_str()).collect();
        prop_assert_eq!(commands, job.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

#[test]
fn a_printed_line_reaches_the_host_with_the_firmwares_line_end() {
    let mut line = Line::new(marlin(0, FaultConfig::default()));
    line.machine.print_line(line.now, "//action:pause");
    line.collect();
    assert_eq!(line.text(), "//action:pause\n");
    let grbl = VmConfig {
        firmware: FirmwareConfig::Grbl(GrblConfig::default()),
        baud: 0,
        faults: FaultConfig::default(),
    };
    let mut line = Line::new(grbl);
    line.machine.print_line(line.now, "[MSG:Check Door]");
    line.collect();
    assert_eq!(line.text(), "[MSG:Check Door]\r\n");
}

#[test]
fn a_safety_trip_kills_marlin_and_locks_grbl_until_reset() {
    let mut line = Line::new(marlin(0, FaultConfig::default()));
    line.machine.inject(line.now, Fault::SafetyTrip);
    line.collect();
    assert_eq!(
        line.text(),
        "Error:Thermal Runaway, system stopped! Heater_ID: 0\nError:Printer halted. kill() called!\n"
    );
    let grbl = VmConfig {
        firmware: FirmwareConfig::Grbl(GrblConfig::default()),
        baud: 0,
        faults: FaultConfig::default(),
    };
    let mut line = Line::new(grbl);
    line.machine.inject(line.now, Fault::SafetyTrip);
    line.send(b"G0 X-1\n");
    assert_eq!(line.text(), "ALARM:1\r\n[MSG:Reset to continue]\r\n");
    line.send(&[0x18]);
    assert!(line.text().ends_with("[MSG:'$H'|'$X' to unlock]\r\n"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Over a paced line, a host counting characters against 128 bytes and polling `?`
    /// never loses a byte, and GRBL runs the file line for line.
    #[test]
    fn grbl_over_a_paced_line_keeps_every_byte_of_a_character_counting_host(
        job in proptest::collection::vec(
            (0u32..190, 0u32..190, 100u32..3000).prop_map(|(x, y, f)| format!("G1 X-{x}.25 Y-{y} F{f} (cut)")),
            1..150,
        ),
        poll_every in 1usize..20,
    ) {
        let config = VmConfig {
            firmware: FirmwareConfig::Grbl(GrblConfig { speed: 20.0, ..GrblConfig::default() }),
            baud: 115_200,
            faults: FaultConfig::default(),
        };
        let mut line = Line::new(config);
        let mut in_flight: VecDeque<usize> = VecDeque::new();
        let (mut next, mut answered) = (0, 0);
        let mut pending = String::new();
        for _ in 0..1_000_000 {
            if answered == job.len() {
                break;
            }
            while next < job.len() && in_flight.iter().sum::<usize>() + job[next].len() < 128 {
                line.send(format!("{}\n", job[next]).as_bytes());
                in_flight.push_back(job[next].len() + 1);
                next += 1;
                if next % poll_every == 0 {
                    line.send(b"?");
                }
            }
            let wake = line.machine.poll_timeout().expect("bytes or moves in flight");
            line.advance(wake.saturating_duration_since(line.now));
            pending.push_str(&line.text());
            while let Some(end) = pending.find("\r\n") {
                let reply: String = pending.drain(..end + 2).collect();
                if reply == "ok\r\n" {
                    in_flight.pop_front();
                    answered += 1;
                } else {
                    prop_assert!(reply.starts_with('<'), "{}", reply);
                }
            }
        }
        prop_assert_eq!(answered, job.len());
        prop_assert_eq!(line.machine.stats().rx_lost, 0);
        let commands: Vec<String> = line.machine.record().iter().map(|e| e.command.clone()).collect();
        let expected: Vec<String> = job.iter().map(|l| normalize_grbl_line(l)).collect();
        prop_assert_eq!(commands, expected);
    }
}
