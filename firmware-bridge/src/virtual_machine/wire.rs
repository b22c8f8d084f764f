//! One direction of an emulated UART: 8N1 frames carry 10 bits, so at `baud` a byte takes
//! `10 / baud` seconds and a burst written by the host arrives spread out in time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes in transit in one direction, delivered at the emulated baud rate.
///
/// Design note: the queue stands for the sender's driver buffer (the USB-serial adapter or
/// the firmware's TX ring); the receiver sees a byte only once its whole frame has crossed
/// the line. Pacing is computed from `free_at`, the instant the line finished the last
/// delivered frame, so batches of any size give the same arrival times as byte-by-byte.
#[derive(Debug)]
pub(crate) struct Wire {
    byte_time: Option<Duration>,
    queue: VecDeque<u8>,
    free_at: Option<Instant>,
}

impl Wire {
    /// A line at `baud`; 0 means unpaced (bytes arrive as soon as they are sent).
    pub(crate) fn new(baud: u32) -> Self {
        let byte_time = (baud > 0).then(|| Duration::from_nanos(10_000_000_000 / u64::from(baud)));
        Wire {
            byte_time,
            queue: VecDeque::new(),
            free_at: None,
        }
    }

    pub(crate) fn send(&mut self, now: Instant, bytes: &[u8]) {
        if self.queue.is_empty() {
            // An idle line starts the next frame now, not when the last one ended.
            self.free_at = Some(self.free_at.map_or(now, |t| t.max(now)));
        }
        self.queue.extend(bytes);
    }

    /// Moves every byte whose frame has fully arrived by `now` into `out`.
    pub(crate) fn receive(&mut self, now: Instant, out: &mut Vec<u8>) {
        let Some(byte_time) = self.byte_time else {
            out.extend(self.queue.drain(..));
            return;
        };
        let Some(free_at) = self.free_at else { return };
        if self.queue.is_empty() || now < free_at {
            return;
        }
        let elapsed = now.duration_since(free_at).as_nanos();
        let arrived = usize::try_from(elapsed / byte_time.as_nanos())
            .unwrap_or(usize::MAX)
            .min(self.queue.len());
        let arrived_u32 = u32::try_from(arrived).unwrap_or(u32::MAX);
        self.free_at = Some(free_at + byte_time * arrived_u32);
        out.extend(self.queue.drain(..arrived));
    }

    /// Like [`Wire::receive`], and also says when the first byte moved into `out` arrived and
    /// how long each byte takes, so the receiver can act on each byte at its own arrival time
    /// rather than at `now` (a timer that fires late must not delay the firmware's answer).
    pub(crate) fn receive_timed(&mut self, now: Instant, out: &mut Vec<u8>) -> (Instant, Duration) {
        let timing = match (self.byte_time, self.free_at) {
            (Some(byte_time), Some(free_at)) => (free_at + byte_time, byte_time),
            _ => (now, Duration::ZERO),
        };
        self.receive(now, out);
        timing
    }

    /// When the next byte finishes arriving, if one is in transit.
    pub(crate) fn next_arrival(&self) -> Option<Instant> {
        if self.queue.is_empty() {
            return None;
        }
        match (self.byte_time, self.free_at) {
            (Some(byte_time), Some(free_at)) => Some(free_at + byte_time),
            _ => self.free_at,
        }
    }

    pub(crate) fn in_transit(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_at_a_tenth_of_the_baud_rate() {
        let t0 = Instant::now();
        let mut wire = Wire::new(10_000); // 1 ms per byte
        wire.send(t0, b"hello");
        let mut out = Vec::new();
        wire.receive(t0 + Duration::from_micros(2_500), &mut out);
        assert_eq!(out, b"he");
        assert_eq!(wire.next_arrival(), Some(t0 + Duration::from_millis(3)));
        wire.receive(t0 + Duration::from_millis(10), &mut out);
        assert_eq!(out, b"hello");
        assert_eq!(wire.next_arrival(), None);
    }

    #[test]
    fn an_idle_line_does_not_bank_time_for_later_bursts() {
        let t0 = Instant::now();
        let mut wire = Wire::new(10_000);
        wire.send(t0, b"a");
        let mut out = Vec::new();
        wire.receive(t0 + Duration::from_secs(1), &mut out);
        wire.send(t0 + Duration::from_secs(5), b"bc");
        wire.receive(
            t0 + Duration::from_secs(5) + Duration::from_micros(1_500),
            &mut out,
        );
        assert_eq!(out, b"ab");
    }

    #[test]
    fn received_bytes_come_with_their_own_arrival_times() {
        let t0 = Instant::now();
        let mut wire = Wire::new(10_000); // 1 ms per byte
        wire.send(t0, b"abc");
        let mut out = Vec::new();
        let (first, per_byte) = wire.receive_timed(t0 + Duration::from_millis(7), &mut out);
        assert_eq!(out, b"abc");
        assert_eq!(first, t0 + Duration::from_millis(1));
        assert_eq!(
            first + per_byte * 2,
            t0 + Duration::from_millis(3),
            "the last byte"
        );
    }

    #[test]
    fn an_unpaced_line_delivers_everything_at_once() {
        let t0 = Instant::now();
        let mut wire = Wire::new(0);
        wire.send(t0, b"abc");
        let mut out = Vec::new();
        wire.receive(t0, &mut out);
        assert_eq!(out, b"abc");
    }
}
