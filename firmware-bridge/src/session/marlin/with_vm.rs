//! The Marlin session against the virtual Marlin core, both sans-IO, on a virtual clock.

use std::collections::VecDeque;
use std::time::Duration;

use super::*;
use crate::session::{Command, JobOptions};
use crate::virtual_machine::{
    self as vm, FaultConfig, FirmwareConfig, VirtualMachine, VmConfig, VmStats,
};

pub(crate) struct Run {
    pub(crate) events: Vec<Event>,
    pub(crate) record: Vec<String>,
    pub(crate) stats: Stats,
    pub(crate) trace: VecDeque<String>,
    /// The machine's counters at the end (`rx_lost`: bytes its RX ring had no room for).
    pub(crate) vm: VmStats,
    /// The most lines the host ever had unacknowledged.
    pub(crate) max_in_flight: usize,
}

pub(crate) fn run(
    lines: &[String],
    vm_config: VmConfig,
    config: MarlinConfig,
    max_steps: usize,
) -> Run {
    let mut now = Instant::now();
    let mut machine = VirtualMachine::new(vm_config, now).expect("valid vm config");
    let mut host = MarlinSession::new(config, now);
    let mut job: Option<VecDeque<&String>> = None;
    let mut events = Vec::new();
    let mut trace = VecDeque::new();
    let mut max_in_flight = 0;
    let keep = |trace: &mut VecDeque<String>, s: String| {
        if trace.len() > 60 {
            trace.pop_front();
        }
        trace.push_back(s);
    };
    for _ in 0..max_steps {
        if job.is_none() && host.is_ready() {
            host.handle_command(now, Command::StartJob(JobOptions::default()))
                .unwrap();
            job = Some(lines.iter().collect());
        }
        if let Some(j) = job.as_mut() {
            while host.wants_job_line() {
                match j.pop_front() {
                    Some(l) => host.push_job_line(l).unwrap(),
                    None => {
                        host.end_job_input();
                        break;
                    }
                }
            }
        }
        while let Some(bytes) = host.poll_transmit(now) {
            keep(
                &mut trace,
                format!("{now:?} > {:?}", String::from_utf8_lossy(&bytes)),
            );
            machine.handle_host_bytes(now, &bytes);
        }
        max_in_flight = max_in_flight.max(host.in_flight());
        while let Some(bytes) = machine.poll_transmit() {
            keep(
                &mut trace,
                format!("{now:?} < {:?}", String::from_utf8_lossy(&bytes)),
            );
            host.handle_input(now, &bytes);
        }
        while let Some(e) = host.poll_event() {
            let end = matches!(e, Event::JobFinished(_) | Event::Failed(_));
            events.push(e);
            if end {
                return Run {
                    events,
                    record: machine.record().iter().map(|e| e.command.clone()).collect(),
                    stats: host.stats(),
                    trace,
                    vm: machine.stats(),
                    max_in_flight,
                };
            }
        }
        let next = [host.poll_timeout(), machine.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(at) if at > now => now = at,
            Some(_) => now += Duration::from_micros(10),
            None => now += Duration::from_millis(1),
        }
        machine.handle_timeout(now);
        host.handle_timeout(now);
    }
    panic!(
        "no end after {max_steps} steps; last wire traffic:\n{}",
        trace.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}

pub(crate) fn noisy_marlin(seed: u64, rate: f64) -> VmConfig {
    VmConfig {
        firmware: FirmwareConfig::Marlin(vm::MarlinConfig {
            speed: 0.0,
            ..vm::MarlinConfig::default()
        }),
        baud: 250_000,
        faults: FaultConfig {
            seed,
            corrupt_to_machine: rate,
            corrupt_to_host: rate,
            ..FaultConfig::default()
        },
    }
}

#[test]
fn plain_ok_streaming_through_the_virtual_marlin_survives_bit_errors_both_ways() {
    let lines: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "G1 X{}.{} Y{} E{}.{:03} F4800",
                i % 180,
                i % 10,
                i % 77,
                i / 100,
                i % 1000
            )
        })
        .collect();
    let config = MarlinConfig {
        temperature_interval: None,
        silence_timeout: Duration::from_millis(300),
        probe_timeout: Duration::from_millis(300),
        ..MarlinConfig::default()
    };
    // 0.3 % of bytes flipped each way: a resend every few lines, yet (for this seed) no two
    // flips that cancel in Marlin's XOR checksum, so the record must equal the file.
    let run = run(&lines, noisy_marlin(3, 0.003), config, 5_000_000);
    assert!(run.stats.resends > 100, "{:?}", run.stats);
    assert_eq!(
        run.events.last(),
        Some(&Event::JobFinished(JobOutcome::Completed)),
        "{:?}; last wire traffic: {:#?}",
        run.stats,
        run.trace
    );
    // Two flips that cancel in Marlin's XOR checksum let a damaged line through now and
    // then (a protocol limit, covered in tests/bridge_pty.rs); everything else must be the
    // file, in order, once.
    let ran: Vec<&String> = run.record.iter().filter(|c| !c.starts_with("M1")).collect();
    // An entry that matches none of the next three file lines (a damaged line, which the
    // virtual Marlin records even when it is an unknown command, or a damaged probe) does
    // not move the cursor: the next exact entry skips past the damaged line itself.
    // Advancing on a miss would let the cursor run ahead of the record for good.
    let (mut i, mut exact) = (0, 0);
    for c in ran {
        if let Some(k) = (0..3).find(|k| lines.get(i + k) == Some(c)) {
            exact += 1;
            i += k + 1;
        }
    }
    assert!(
        exact * 1000 >= lines.len() * 995,
        "{exact} of {} ran exactly",
        lines.len()
    );
    assert!(i >= lines.len() - 2, "the record covers the file");
}

mod advanced_ok {
    use proptest::prelude::*;

    use super::*;

    fn quiet() -> MarlinConfig {
        MarlinConfig {
            temperature_interval: None,
            ..MarlinConfig::default()
        }
    }

    fn marlin(advanced_ok: bool, bufsize: usize, speed: f64) -> VmConfig {
        VmConfig {
            firmware: FirmwareConfig::Marlin(vm::MarlinConfig {
                advanced_ok,
                bufsize,
                speed,
                ..vm::MarlinConfig::default()
            }),
            baud: 250_000,
            faults: FaultConfig::default(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Whatever the line lengths, queue size and motion speed, the window that trusts
        /// `ok N P B` never sends more than the virtual Marlin's 128-byte ring can take: not
        /// one byte is lost, no line needs a resend, and every line runs once, in order.
        #[test]
        fn the_advanced_ok_window_never_overflows_the_rx_ring(
            lengths in proptest::collection::vec(0usize..50, 20..120),
            bufsize in 2usize..9,
            speed in prop_oneof![Just(0.0), 0.5f64..50.0],
        ) {
            let lines: Vec<String> = lengths
                .iter()
                .enumerate()
                .map(|(i, &pad)| format!("G1 X{}.{} F600{}", i % 50, i % 10, " ".repeat(pad) + &"Y1".repeat(pad / 8)))
                .collect();
            let run = run(&lines, marlin(true, bufsize, speed), quiet(), 2_000_000);
            prop_assert_eq!(run.events.last(), Some(&Event::JobFinished(JobOutcome::Completed)));
            prop_assert_eq!(run.vm.rx_lost, 0, "{:?}", run.trace);
            prop_assert_eq!(run.stats.resends, 0);
            let moves: Vec<String> = run.record.into_iter().filter(|c| c.starts_with("G1")).collect();
            let want: Vec<String> = lines.iter().map(|l| l.trim_end().to_owned()).collect();
            prop_assert_eq!(moves, want);
        }
    }

    /// Short lines behind a slow machine: the queue is full and the ring fills behind it. The
    /// window holds the queue's lines plus a ring's worth, which a count of command slots
    /// alone (the plain-`ok` window) would not allow.
    #[test]
    fn the_advanced_ok_window_keeps_more_lines_than_command_slots_in_flight() {
        let lines: Vec<String> = (0..200).map(|i| format!("G1 X{} F600", i % 20)).collect();
        let exact = run(&lines, marlin(true, 4, 50.0), quiet(), 2_000_000);
        assert_eq!(
            exact.events.last(),
            Some(&Event::JobFinished(JobOutcome::Completed))
        );
        assert_eq!(exact.vm.rx_lost, 0);
        assert!(
            exact.max_in_flight > 4 + 5,
            "four queued lines and at least six in the ring: {}",
            exact.max_in_flight
        );
        let plain = run(&lines, marlin(false, 4, 50.0), quiet(), 2_000_000);
        assert_eq!(plain.vm.rx_lost, 0);
        assert!(plain.max_in_flight <= 4, "{}", plain.max_in_flight);
    }
}
