//! The motion planner both firmwares share: a ring of blocks executed one after the other,
//! each taking the time its distance and feed rate ask for.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Machine axes in the order X, Y, Z, E (GRBL leaves E at zero).
pub(crate) type Axes = [f64; 4];

/// One straight move in the planner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Block {
    pub(crate) start: Axes,
    pub(crate) end: Axes,
    pub(crate) duration: Duration,
    /// Feed rate in mm/min, for status reports.
    pub(crate) feed: f64,
    /// The line number the block came from (GRBL `Ln:`).
    pub(crate) line: Option<u32>,
    /// A rapid (G0) rather than a feed move: feed and rapid overrides scale different moves.
    pub(crate) rapid: bool,
}

/// The block ring and the stepper that drains it.
///
/// Design note: only the head block moves. `running_since` is when the head (re)started and
/// `head_done` how much of it had already run before a feed hold, so hold and resume need no
/// timer inside the planner.
#[derive(Debug)]
pub(crate) struct Planner {
    capacity: usize,
    blocks: VecDeque<Block>,
    running_since: Option<Instant>,
    head_done: Duration,
    held: bool,
    rest_position: Axes,
}

impl Planner {
    /// `block_buffer_size` as configured in firmware; like Marlin and GRBL, one slot stays
    /// empty so the ring can tell full from empty.
    pub(crate) fn new(block_buffer_size: usize, position: Axes) -> Self {
        Planner {
            capacity: block_buffer_size.saturating_sub(1).max(1),
            blocks: VecDeque::new(),
            running_since: None,
            head_done: Duration::ZERO,
            held: false,
            rest_position: position,
        }
    }

    pub(crate) fn free(&self) -> usize {
        self.capacity - self.blocks.len()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held
    }

    /// Queues a block; the caller checks [`Planner::free`] first.
    pub(crate) fn push(&mut self, now: Instant, block: Block) {
        debug_assert!(self.free() > 0);
        self.blocks.push_back(block);
        if self.blocks.len() == 1 && !self.held {
            self.running_since = Some(now);
            self.head_done = Duration::ZERO;
        }
    }

    /// Retires every block finished by `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        while let (Some(since), Some(head)) = (self.running_since, self.blocks.front()) {
            let left = head.duration.saturating_sub(self.head_done);
            if now.duration_since(since) < left {
                break;
            }
            self.rest_position = head.end;
            self.blocks.pop_front();
            self.head_done = Duration::ZERO;
            self.running_since = if self.blocks.is_empty() {
                None
            } else {
                Some(since + left)
            };
        }
    }

    /// When the head block finishes, if something is moving.
    pub(crate) fn next_completion(&self) -> Option<Instant> {
        let since = self.running_since?;
        let head = self.blocks.front()?;
        Some(since + head.duration.saturating_sub(self.head_done))
    }

    /// Freezes motion where it is (GRBL feed hold; deceleration is not modelled).
    pub(crate) fn hold(&mut self, now: Instant) {
        self.advance(now);
        if let Some(since) = self.running_since.take() {
            self.head_done += now.duration_since(since);
        }
        self.held = true;
    }

    pub(crate) fn resume(&mut self, now: Instant) {
        self.held = false;
        if !self.blocks.is_empty() && self.running_since.is_none() {
            self.running_since = Some(now);
        }
    }

    /// Drops every planned block and stops where the machine is now.
    pub(crate) fn clear(&mut self, now: Instant) -> Axes {
        let here = self.position(now);
        self.blocks.clear();
        self.running_since = None;
        self.head_done = Duration::ZERO;
        self.held = false;
        self.rest_position = here;
        here
    }

    /// Where the tool is at `now`, interpolated along the moving block.
    pub(crate) fn position(&self, now: Instant) -> Axes {
        let Some(head) = self.blocks.front() else {
            return self.rest_position;
        };
        let done = match self.running_since {
            Some(since) => self.head_done + now.saturating_duration_since(since),
            None => self.head_done,
        };
        let fraction = if head.duration.is_zero() {
            0.0
        } else {
            (done.as_secs_f64() / head.duration.as_secs_f64()).clamp(0.0, 1.0)
        };
        std::array::from_fn(|i| head.start[i] + (head.end[i] - head.start[i]) * fraction)
    }

    /// The block being executed, if the machine is moving.
    pub(crate) fn current(&self) -> Option<&Block> {
        self.blocks.front()
    }

    /// Forgets the resting position (after homing or `G92`).
    pub(crate) fn set_rest_position(&mut self, position: Axes) {
        self.rest_position = position;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(x0: f64, x1: f64, ms: u64) -> Block {
        Block {
            start: [x0, 0.0, 0.0, 0.0],
            end: [x1, 0.0, 0.0, 0.0],
            duration: Duration::from_millis(ms),
            feed: 600.0,
            line: None,
            rapid: false,
        }
    }

    #[test]
    fn blocks_run_back_to_back_and_free_their_slots() {
        let t0 = Instant::now();
        let mut planner = Planner::new(16, [0.0; 4]);
        assert_eq!(planner.free(), 15);
        planner.push(t0, block(0.0, 10.0, 100));
        planner.push(t0, block(10.0, 20.0, 100));
        assert_eq!(
            planner.next_completion(),
            Some(t0 + Duration::from_millis(100))
        );
        planner.advance(t0 + Duration::from_millis(150));
        assert_eq!(planner.len(), 1);
        assert_eq!(planner.position(t0 + Duration::from_millis(150))[0], 15.0);
        planner.advance(t0 + Duration::from_millis(200));
        assert!(planner.is_empty());
        assert_eq!(planner.position(t0 + Duration::from_secs(9))[0], 20.0);
    }

    #[test]
    fn a_hold_freezes_the_head_block_until_resumed() {
        let t0 = Instant::now();
        let mut planner = Planner::new(16, [0.0; 4]);
        planner.push(t0, block(0.0, 10.0, 100));
        planner.hold(t0 + Duration::from_millis(40));
        planner.advance(t0 + Duration::from_secs(5));
        assert_eq!(planner.len(), 1);
        assert_eq!(planner.next_completion(), None);
        planner.resume(t0 + Duration::from_secs(5));
        assert_eq!(
            planner.next_completion(),
            Some(t0 + Duration::from_millis(5_060))
        );
    }
}
