//! A firmware core behind an emulated serial line, with fault injection. Still sans-IO: the
//! runners only shuttle bytes and call [`VirtualMachine::handle_timeout`] at its deadline.

use std::collections::VecDeque;
use std::time::Instant;

use super::faults::{Fault, FaultConfig, Rng};
use super::wire::Wire;
use super::{Executed, FirmwareCore, Grbl, GrblConfig, Marlin, MarlinConfig, VmConfigError};

/// Which firmware to run, and how it is built.
#[derive(Debug, Clone, PartialEq)]
pub enum FirmwareConfig {
    /// A Marlin 2.x 3D printer.
    Marlin(MarlinConfig),
    /// A GRBL 1.1 CNC controller.
    Grbl(GrblConfig),
}

/// Everything a virtual machine needs to start.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// The firmware and its build options.
    pub firmware: FirmwareConfig,
    /// Emulated baud rate; bytes move at baud/10 per second each way; 0 = unpaced.
    pub baud: u32,
    /// Random faults, seeded.
    pub faults: FaultConfig,
}

/// Something the machine did that its runner must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmEvent {
    /// The machine pulled its own cable ([`Fault::Disconnect`]); the link must close.
    Unplugged,
}

/// Counters of what happened on the line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmStats {
    /// Bytes the host wrote.
    pub bytes_from_host: u64,
    /// Bytes that reached the host.
    pub bytes_to_host: u64,
    /// Bytes corrupted on their way to the firmware.
    pub corrupted_to_machine: u64,
    /// Bytes corrupted on their way to the host.
    pub corrupted_to_host: u64,
    /// `ok` lines dropped.
    pub oks_dropped: u64,
    /// Resets (injected or random).
    pub resets: u64,
    /// Bytes the firmware lost to a full RX buffer or a boot.
    pub rx_lost: u64,
}

/// A virtual controller on an emulated UART.
#[derive(Debug)]
pub struct VirtualMachine {
    core: Box<dyn FirmwareCore>,
    to_machine: Wire,
    to_host: Wire,
    faults: FaultConfig,
    rng: Rng,
    drop_next_ok: bool,
    corrupt_next: bool,
    executed_seen: usize,
    scratch: Vec<u8>,
    ready: Vec<u8>,
    events: VecDeque<VmEvent>,
    pending_lines: VecDeque<Vec<u8>>,
    unplugged: bool,
    stats: VmStats,
}

impl VirtualMachine {
    /// A machine powered on at `now`.
    pub fn new(config: VmConfig, now: Instant) -> Result<Self, VmConfigError> {
        config.faults.validate()?;
        let core: Box<dyn FirmwareCore> = match config.firmware {
            FirmwareConfig::Marlin(marlin) => Box::new(Marlin::new(marlin, now)?),
            FirmwareConfig::Grbl(grbl) => Box::new(Grbl::new(grbl, now)?),
        };
        let mut machine = VirtualMachine {
            core,
            to_machine: Wire::new(config.baud),
            to_host: Wire::new(config.baud),
            rng: Rng::new(config.faults.seed),
            faults: config.faults,
            drop_next_ok: false,
            corrupt_next: false,
            executed_seen: 0,
            scratch: Vec::new(),
            ready: Vec::new(),
            events: VecDeque::new(),
            pending_lines: VecDeque::new(),
            unplugged: false,
            stats: VmStats::default(),
        };
        machine.pump(now);
        Ok(machine)
    }

    /// Bytes the host wrote to the port.
    pub fn handle_host_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if self.unplugged {
            return;
        }
        self.stats.bytes_from_host += bytes.len() as u64;
        self.to_machine.send(now, bytes);
        self.pump(now);
    }

    /// Lets time pass; call it at [`VirtualMachine::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.unplugged {
            self.pump(now);
        }
    }

    /// The next instant something happens on its own (a byte arrives, a move ends…).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.unplugged {
            return None;
        }
        [
            self.to_machine.next_arrival(),
            self.core.poll_timeout(),
            self.to_host.next_arrival(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes that have reached the host's end of the line.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.ready.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.ready))
        }
    }

    /// What the runner must do next, if anything.
    pub fn poll_event(&mut self) -> Option<VmEvent> {
        self.events.pop_front()
    }

    /// Injects a fault now.
    pub fn inject(&mut self, now: Instant, fault: Fault) {
        match fault {
            Fault::DropNextOk => self.drop_next_ok = true,
            Fault::CorruptNextByteToMachine => self.corrupt_next = true,
            Fault::Reset => self.reset(now),
            Fault::SafetyTrip => self.core.trip(now),
            Fault::Disconnect => self.unplug(),
        }
        self.pump(now);
    }

    /// A hardware reset, as when a host opening the port pulses DTR: bytes on the line are
    /// lost and the firmware boots.
    pub fn hardware_reset(&mut self, now: Instant) {
        self.to_machine.clear();
        self.to_host.clear();
        self.ready.clear();
        self.core.reset(now);
        self.pump(now);
    }

    /// Makes the firmware print `line` as if it had decided to, e.g. a host action command
    /// (`//action:pause`) or a message a test wants the host to cope with.
    pub fn print_line(&mut self, now: Instant, line: &str) {
        if self.unplugged {
            return;
        }
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(self.core.line_end());
        self.pending_lines.push_back(bytes);
        self.pump(now);
    }

    /// Every command executed so far, in order.
    pub fn record(&self) -> &[Executed] {
        self.core.record()
    }

    /// Line and fault counters.
    pub fn stats(&self) -> VmStats {
        VmStats {
            rx_lost: self.core.rx_lost(),
            ..self.stats
        }
    }

    /// Bytes the host has written that are still on the wire; a runner stops reading from
    /// the host above a few kilobytes, as a kernel tty buffer would.
    pub fn in_transit_to_machine(&self) -> usize {
        self.to_machine.in_transit()
    }

    /// True once the machine has been unplugged.
    pub fn is_unplugged(&self) -> bool {
        self.unplugged
    }

    fn reset(&mut self, now: Instant) {
        self.stats.resets += 1;
        self.core.reset(now);
    }

    fn unplug(&mut self) {
        if !self.unplugged {
            self.unplugged = true;
            self.to_machine.clear();
            self.to_host.clear();
            self.events.push_back(VmEvent::Unplugged);
        }
    }

    /// Moves bytes along both wires and lets the firmware act on what arrived.
    ///
    /// Design note: the firmware handles each received line at the instant its last byte
    /// arrived, not at `now`, and its answer leaves at that instant too. A runner's timer fires
    /// up to a tick (1 ms for tokio) after a byte is due; acting at `now` would add that tick
    /// to every round trip, which a real UART does not, and at 250000 baud a tick is a fifth
    /// of what a 128-byte receive buffer holds.
    fn pump(&mut self, now: Instant) {
        self.scratch.clear();
        let (first_arrival, byte_time) = self.to_machine.receive_timed(now, &mut self.scratch);
        for byte in &mut self.scratch {
            if std::mem::take(&mut self.corrupt_next)
                || self.rng.chance(self.faults.corrupt_to_machine)
            {
                *byte = self.rng.flip_bit(*byte);
                self.stats.corrupted_to_machine += 1;
            }
        }
        let arrived = std::mem::take(&mut self.scratch);
        let mut rest = &arrived[..];
        let mut done = 0usize;
        while !rest.is_empty() && !self.unplugged {
            // One line at a time, so faults tied to executed commands land between lines.
            let end = rest
                .iter()
                .position(|b| matches!(b, b'\n' | b'\r'))
                .map_or(rest.len(), |i| i + 1);
            done += end;
            let last_byte = u32::try_from(done - 1).unwrap_or(u32::MAX);
            let at = (first_arrival + byte_time * last_byte).min(now);
            self.core.handle_input(at, &rest[..end]);
            rest = &rest[end..];
            self.check_executed(at);
            self.send_output(at);
        }
        self.scratch = arrived;
        if self.unplugged {
            return;
        }
        if self.core.poll_timeout().is_some_and(|at| at <= now) {
            self.core.handle_timeout(now);
        }
        self.check_executed(now);
        self.send_output(now);
        let before = self.ready.len();
        self.to_host.receive(now, &mut self.ready);
        self.stats.bytes_to_host += (self.ready.len() - before) as u64;
    }

    /// Puts what the firmware printed on the wire to the host, starting at `at`.
    fn send_output(&mut self, at: Instant) {
        if self.unplugged {
            return;
        }
        while let Some(mut line) = self
            .pending_lines
            .pop_front()
            .or_else(|| self.core.poll_output())
        {
            if line.starts_with(b"ok")
                && (std::mem::take(&mut self.drop_next_ok) || self.rng.chance(self.faults.drop_ok))
            {
                self.stats.oks_dropped += 1;
                continue;
            }
            for byte in &mut line {
                if self.rng.chance(self.faults.corrupt_to_host) {
                    *byte = self.rng.flip_bit(*byte);
                    self.stats.corrupted_to_host += 1;
                }
            }
            self.to_host.send(at, &line);
        }
    }

    fn check_executed(&mut self, now: Instant) {
        let executed = self.core.record().len();
        while self.executed_seen < executed && !self.unplugged {
            self.executed_seen += 1;
            if self
                .faults
                .disconnect_after_commands
                .is_some_and(|limit| self.executed_seen as u64 >= limit)
            {
                self.unplug();
            } else if self.rng.chance(self.faults.reset_per_command) {
                self.reset(now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
