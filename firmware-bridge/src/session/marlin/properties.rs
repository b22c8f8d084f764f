//! Property tests against a small model of Marlin's line checking (queue.cpp): numbered
//! lines must follow the last one, checksums must match, a bad line flushes the RX buffer
//! and asks for a resend. Bytes are corrupted in both directions at random.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::session::line::checksum;
use crate::session::{Command, JobOptions};

/// Deterministic noise source so failures shrink and replay.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, per_million: u64) -> bool {
        self.next() % 1_000_000 < per_million
    }
}

struct ModelMarlin {
    rx: VecDeque<u8>,
    partial: Vec<u8>,
    last_n: u32,
    advanced_ok: bool,
    ok_after_resend: bool,
    executed: Vec<String>,
    out: Vec<u8>,
}

impl ModelMarlin {
    /// Parse at most `lines` complete lines from the RX buffer, as a slow firmware would.
    fn step(&mut self, lines: usize) {
        let mut done = 0;
        while done < lines {
            let Some(b) = self.rx.pop_front() else { return };
            if b != b'\n' {
                self.partial.push(b);
                continue;
            }
            done += 1;
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned();
            self.line(line.trim());
        }
    }

    fn reject(&mut self, why: &str) {
        self.out
            .extend(format!("Error:{why}, Last Line: {}\n", self.last_n).bytes());
        self.rx.clear();
        self.partial.clear();
        self.out
            .extend(format!("Resend: {}\n", self.last_n + 1).bytes());
        if self.ok_after_resend {
            self.out.extend(b"ok\n");
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            return;
        }
        let Some(rest) = line.strip_prefix('N') else {
            self.out.extend(b"echo:Unknown command\nok\n");
            return;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(n) = rest[..digits].parse::<u32>() else {
            return self.reject("Line Number is not Last Line Number+1");
        };
        let m110 = line.contains("M110");
        if n != self.last_n.wrapping_add(1) && !m110 {
            return self.reject("Line Number is not Last Line Number+1");
        }
        let Some(star) = line.rfind('*') else {
            return self.reject("No Checksum with line number");
        };
        if line[star + 1..].parse::<u32>().ok()
            != Some(u32::from(checksum(&line.as_bytes()[..star])))
        {
            return self.reject("checksum mismatch");
        }
        self.last_n = n;
        // Marlin's parser stops at the first `*`: a line merged with the next by a lost line
        // end that still passes the checksum runs as its first part, and the next line is
        // then asked for again.
        let first_star = line.find('*').unwrap_or(star);
        let command = line[1 + digits..first_star].trim().to_owned();
        let ok = if self.advanced_ok {
            format!("ok N{n} P15 B3")
        } else {
            "ok".to_owned()
        };
        if command == "M105" {
            // Marlin's M105 prints its own plain `ok`, even with ADVANCED_OK.
            self.out.extend(b"ok T:20.0 /0.0\n");
        } else {
            self.out.extend(format!("{ok}\n").bytes());
        }
        if m110 {
            self.last_n = command
                .split_whitespace()
                .find_map(|w| w.strip_prefix('N')?.parse().ok())
                .unwrap_or(0);
        }
        self.executed.push(command);
    }
}

struct Outcome {
    executed: Vec<String>,
    events: Vec<Event>,
    wire_numbers: Vec<u32>,
}

/// Corrupt at most one byte per line. Marlin's XOR checksum detects every single-byte error
/// but misses two errors that cancel out; that is the protocol's limit, not the host's.
fn corrupt(noise: &mut Noise, bytes: &mut [u8], per_million: u64) {
    for line in bytes.split_inclusive_mut(|b| *b == b'\n') {
        for b in line.iter_mut() {
            if noise.chance(per_million) {
                let replacement = 0x20 + (noise.next() % 0x5f) as u8;
                if replacement != *b {
                    *b = replacement;
                    break;
                }
            }
        }
    }
}

/// How the simulated firmware and link behave.
#[derive(Clone, Copy)]
struct Link {
    advanced_ok: bool,
    ok_after_resend: bool,
    seed: u64,
    corrupt_in: u64,
    corrupt_out: u64,
    parse_per_step: usize,
}

fn simulate(file: &[String], config: MarlinConfig, link: Link) -> Outcome {
    let Link {
        advanced_ok,
        ok_after_resend,
        seed,
        corrupt_in,
        corrupt_out,
        parse_per_step,
    } = link;
    let mut noise = Noise(seed | 1);
    let mut now = Instant::now();
    let mut host = MarlinSession::new(config, now);
    let mut fw = ModelMarlin {
        rx: VecDeque::new(),
        partial: Vec::new(),
        last_n: 0,
        advanced_ok,
        ok_after_resend,
        executed: Vec::new(),
        out: b"start\n".to_vec(),
    };
    let mut events = Vec::new();
    let mut wire_numbers = Vec::new();
    let mut job: Option<VecDeque<&String>> = None;
    let mut job_started_at = 0;
    for _ in 0..200_000 {
        if job.is_none() && host.is_ready() {
            host.handle_command(now, Command::StartJob(JobOptions::default()))
                .expect("job starts");
            job = Some(file.iter().collect());
            job_started_at = fw.executed.len();
        }
        if let Some(lines) = job.as_mut() {
            while host.wants_job_line() {
                match lines.pop_front() {
                    Some(l) => host.push_job_line(l).expect("line accepted"),
                    None => {
                        host.end_job_input();
                        break;
                    }
                }
            }
        }
        let mut sent = false;
        while let Some(mut bytes) = host.poll_transmit(now) {
            sent = true;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Some(n) = text
                .trim_start()
                .strip_prefix('N')
                .and_then(|r| r.split(' ').next()?.parse().ok())
            {
                wire_numbers.push(n);
            }
            corrupt(&mut noise, &mut bytes, corrupt_in);
            fw.rx.extend(bytes);
        }
        fw.step(parse_per_step);
        let mut reply = std::mem::take(&mut fw.out);
        let replied = !reply.is_empty();
        corrupt(&mut noise, &mut reply, corrupt_out);
        now += Duration::from_micros(500);
        host.handle_input(now, &reply);
        while let Some(e) = host.poll_event() {
            let end = matches!(e, Event::JobFinished(_) | Event::Failed(_));
            events.push(e);
            if end {
                return Outcome {
                    executed: fw.executed.split_off(job_started_at),
                    events,
                    wire_numbers,
                };
            }
        }
        if !sent && !replied && fw.rx.is_empty() {
            if let Some(at) = host.poll_timeout() {
                now = now.max(at);
            }
            host.handle_timeout(now);
        }
    }
    panic!("simulation did not finish; events so far: {events:?}");
}

fn job_file(len: usize) -> Vec<String> {
    (0..len)
        .map(|i| format!("G1 X{}.{} Y{} E{}", i % 200, i % 10, i % 77, i))
        .collect()
}

fn executed_matches_file(outcome: &Outcome, file: &[String]) {
    assert_eq!(
        outcome.events.last(),
        Some(&Event::JobFinished(JobOutcome::Completed)),
        "events: {:?}",
        outcome.events
    );
    let jobs: Vec<&String> = outcome
        .executed
        .iter()
        .filter(|c| c.starts_with("G1"))
        .collect();
    assert_eq!(jobs.len(), file.len(), "every job line runs exactly once");
    for (i, (ran, want)) in jobs.iter().zip(file).enumerate() {
        assert_eq!(*ran, want, "job line {} ran out of order", i + 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn checksums_are_the_xor_of_everything_before_the_star(n in 0u32..10_000_000, cmd in "[A-Z][0-9]{1,3}( [A-Z]-?[0-9]{1,4}\\.[0-9]{1,3}){0,5}") {
        let framed = line::frame_numbered(n, &cmd);
        let star = framed.rfind('*').unwrap();
        let cs: u8 = framed[star + 1..].trim_end().parse().unwrap();
        prop_assert_eq!(cs, framed.as_bytes()[..star].iter().fold(0u8, |a, b| a ^ b));
        let prefix = format!("N{n} {cmd}*");
        prop_assert!(framed.starts_with(&prefix));
    }

    #[test]
    fn every_line_runs_exactly_once_in_order_through_corruption_both_ways(
        seed in any::<u64>(),
        corrupt_in in 0u64..20_000,
        corrupt_out in 0u64..20_000,
        advanced_ok in any::<bool>(),
        ok_after_resend in any::<bool>(),
        parse_per_step in 1usize..4,
    ) {
        let file = job_file(150);
        let config = MarlinConfig {
            temperature_interval: None,
            ok_after_resend,
            silence_timeout: Duration::from_millis(300),
            probe_timeout: Duration::from_millis(300),
            ..MarlinConfig::default()
        };
        let outcome = simulate(&file, config, Link { advanced_ok, ok_after_resend, seed, corrupt_in, corrupt_out, parse_per_step });
        executed_matches_file(&outcome, &file);
    }

    #[test]
    fn line_numbers_strictly_increase_between_resets(seed in any::<u64>(), corrupt_in in 0u64..20_000) {
        let file = job_file(80);
        let config = MarlinConfig { temperature_interval: None, ..MarlinConfig::default() };
        let outcome = simulate(&file, config, Link { advanced_ok: false, ok_after_resend: false, seed, corrupt_in, corrupt_out: 0, parse_per_step: 2 });
        let mut highest: Option<u32> = None;
        for n in outcome.wire_numbers {
            if n == 0 {
                highest = Some(0);
                continue;
            }
            match highest {
                Some(h) if n > h => { prop_assert_eq!(n, h + 1, "a new line skips a number"); highest = Some(n); }
                Some(_) => {} // a retransmission of an older line
                None => prop_assert!(false, "a numbered line before the M110 reset"),
            }
        }
    }

    #[test]
    fn any_sequence_of_resend_requests_keeps_the_history_consistent(requests in proptest::collection::vec(0u32..40, 1..30)) {
        let mut h = crate::session::testkit::Harness::new(|now| MarlinSession::new(MarlinConfig { temperature_interval: None, ..MarlinConfig::default() }, now));
        h.run("< start\n> N0 M110 N0*125\n< ok\n> N1 M115*39\n< ok");
        let lines: Vec<String> = job_file(30);
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        h.start_job(&refs);
        for r in requests {
            h.drain();
            h.input(&format!("Resend: {r}"));
            h.drain();
            // Whatever was asked, the next line on the wire is the first one not acknowledged,
            // or a line the firmware asked for: never a gap.
            prop_assert!(h.session.acked <= h.session.cursor);
            prop_assert!(h.session.cursor <= h.session.history.len());
            let first = h.session.first_n();
            for (i, e) in h.session.history.iter().enumerate() {
                prop_assert_eq!(e.n, first + i as u32);
            }
        }
    }
}

#[test]
fn heavy_corruption_in_ping_pong_mode_still_runs_every_line_once() {
    let file = job_file(200);
    let config = MarlinConfig {
        flow: MarlinFlow::PingPong,
        temperature_interval: None,
        silence_timeout: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(300),
        ..MarlinConfig::default()
    };
    let outcome = simulate(
        &file,
        config,
        Link {
            advanced_ok: false,
            ok_after_resend: false,
            seed: 7,
            corrupt_in: 10_000,
            corrupt_out: 10_000,
            parse_per_step: 1,
        },
    );
    executed_matches_file(&outcome, &file);
}
