//! Duration estimate: a trapezoidal velocity profile per move, with junction speeds taken
//! from the angle between consecutive moves and one move of look-ahead.
//!
//! Firmware plans over 16–32 moves with junction deviation; one move of look-ahead with a
//! cosine junction rule is within a few percent on slicer output and needs no buffer. Each
//! junction speed is also capped so that the next move could still stop at its end, which
//! keeps the estimate on the safe (longer) side when the look-ahead is too short.

use serde::{Deserialize, Serialize};

/// Motion limits of a machine, the `[motion]` table of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MotionLimits {
    /// Highest XY feed, mm/min.
    pub max_feed_mm_min: f64,
    /// Highest Z feed, mm/min.
    pub max_z_feed_mm_min: f64,
    /// Acceleration, mm/s².
    pub acceleration_mm_s2: f64,
}

impl MotionLimits {
    /// Limits of a typical hobby printer, used when no profile is given.
    pub const DEFAULT: MotionLimits = MotionLimits {
        max_feed_mm_min: 12_000.0,
        max_z_feed_mm_min: 600.0,
        acceleration_mm_s2: 1_000.0,
    };
}

impl Default for MotionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Time to travel `length` mm starting at `v0`, ending at `v1`, cruising at most at `vmax`
/// (mm/s) with acceleration `a` (mm/s²). The caller guarantees `v1` reachable from `v0`.
pub fn trapezoid_seconds(length: f64, v0: f64, v1: f64, vmax: f64, a: f64) -> f64 {
    if length <= 0.0 || vmax <= 0.0 || a <= 0.0 {
        return 0.0;
    }
    trapezoid(
        length,
        v0,
        v0 * v0,
        v1,
        v1 * v1,
        vmax,
        1.0 / vmax,
        a,
        1.0 / a,
    )
}

/// [`trapezoid_seconds`] for a positive length, speed and acceleration, with the squares of
/// the end speeds and the reciprocals at hand. Both shapes are computed and one is
/// selected: which one applies is a coin toss on slicer output, and a mispredicted branch
/// costs more than the square root.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn trapezoid(
    length: f64,
    v0: f64,
    v00: f64,
    v1: f64,
    v11: f64,
    vmax: f64,
    inv_vmax: f64,
    a: f64,
    inv_a: f64,
) -> f64 {
    let accel_dist = (vmax * vmax - v00) * 0.5 * inv_a;
    let decel_dist = (vmax * vmax - v11) * 0.5 * inv_a;
    let cruise = (2.0 * vmax - v0 - v1) * inv_a + (length - accel_dist - decel_dist) * inv_vmax;
    // Never reaches vmax: a triangle peaking where both ramps meet.
    let peak = ((2.0 * a * length + v00 + v11) * 0.5).sqrt();
    let triangle = ((peak - v0).max(0.0) + (peak - v1).max(0.0)) * inv_a;
    if accel_dist + decel_dist <= length {
        cruise
    } else {
        triangle
    }
}

/// `a.min(b)` for a `b` that is never NaN, and never a zero when `a` is one: then the
/// same value as [`f64::min`], to the bit, in one `minsd` instead of a NaN-aware blend
/// of five instructions (`a < b` is false for a NaN `a`, which selects `b`, as `min`
/// does). In the planner `b` is a squared speed that includes `2·a·length`, positive and
/// never NaN (lengths and accelerations reaching it are positive numbers).
#[inline(always)]
fn min_of_numbers(a: f64, b: f64) -> f64 {
    debug_assert!(!b.is_nan());
    if a < b { a } else { b }
}

/// One move waiting for the next to know its exit speed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending {
    length: f64,
    vmax: f64,
    inv_vmax: f64,
    entry: f64,
    /// `entry²`, and the square of the fastest exit: `entry² + 2·a·length`.
    entry2: f64,
    reachable2: f64,
    dir_end: [f64; 3],
    /// Squared length of `dir_end`.
    norm2: f64,
}

/// A move whose entry and exit speeds are both known, waiting to be timed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Planned {
    length: f64,
    entry: f64,
    entry2: f64,
    exit: f64,
    exit2: f64,
    vmax: f64,
    inv_vmax: f64,
    /// The acceleration in force when the exit speed was decided, and its reciprocal.
    accel: f64,
    inv_accel: f64,
}

impl Planned {
    /// No move: every field zero, so that [`seconds`](Self::seconds) is exactly +0.0 (all
    /// products are `0 × 0`, the square root is of zero, and the cruise shape is chosen).
    const NONE: Planned = Planned {
        length: 0.0,
        entry: 0.0,
        entry2: 0.0,
        exit: 0.0,
        exit2: 0.0,
        vmax: 0.0,
        inv_vmax: 0.0,
        accel: 0.0,
        inv_accel: 0.0,
    };

    #[inline(always)]
    fn seconds(&self) -> f64 {
        trapezoid(
            self.length,
            self.entry,
            self.entry2,
            self.exit,
            self.exit2,
            self.vmax,
            self.inv_vmax,
            self.accel,
            self.inv_accel,
        )
    }
}

/// The streaming duration planner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planner {
    accel: f64,
    inv_accel: f64,
    /// The move waiting for its successor, valid when `has_pending`.
    pending: Pending,
    has_pending: bool,
    /// The move before it, timed only when the next move arrives: its inputs are ready
    /// by then, so timing it does not wait for the new move's arithmetic. The sum is
    /// taken in the same order as timing each move at once would.
    /// [`Planned::NONE`] when there is none: it times to exactly +0.0, and adding that
    /// changes no sum, so the move can be timed without a test.
    planned: Planned,
    /// The last speed limit seen and its reciprocal: most moves share their feed.
    last_vmax: f64,
    last_inv_vmax: f64,
    seconds: f64,
}

impl Planner {
    pub(crate) fn new(accel: f64) -> Self {
        Self {
            accel: accel.max(1e-3),
            inv_accel: 1.0 / accel.max(1e-3),
            pending: Pending {
                length: 0.0,
                vmax: 0.0,
                inv_vmax: 0.0,
                entry: 0.0,
                entry2: 0.0,
                reachable2: 0.0,
                dir_end: [0.0; 3],
                norm2: 1.0,
            },
            has_pending: false,
            planned: Planned::NONE,
            last_vmax: 1.0,
            last_inv_vmax: 1.0,
            seconds: 0.0,
        }
    }

    /// Changes the acceleration for the moves that follow (`M204` in a file). Slicers
    /// change it per feature without stopping, so neither does this.
    pub(crate) fn set_acceleration(&mut self, accel: f64) {
        self.accel = accel.max(1e-3);
        self.inv_accel = 1.0 / self.accel;
    }

    /// Adds a move of `length` mm at up to `vmax` mm/s whose direction is `dir_start` at
    /// its start and `dir_end` at its end: vectors of squared length `norm2`, not
    /// necessarily unit (a straight move passes its displacement and `length²`, sparing a
    /// division); zero vectors with `norm2` 1 for extruder-only moves.
    #[inline(always)]
    pub(crate) fn push(
        &mut self,
        length: f64,
        vmax: f64,
        dir_start: [f64; 3],
        dir_end: [f64; 3],
        norm2: f64,
    ) {
        if length <= 0.0 || vmax <= 0.0 {
            return;
        }
        if vmax != self.last_vmax {
            self.last_vmax = vmax;
            self.last_inv_vmax = 1.0 / vmax;
        }
        let inv_vmax = self.last_inv_vmax;
        self.seconds += self.planned.seconds();
        let a = self.accel;
        let stoppable2 = 2.0 * a * length;
        let (entry, entry2) = if self.has_pending {
            let prev = self.pending;
            let dot = prev.dir_end[0] * dir_start[0]
                + prev.dir_end[1] * dir_start[1]
                + prev.dir_end[2] * dir_start[2];
            // The junction speed: the angle's (the cosine times the slower of the two
            // moves' speeds), capped by what the previous move can reach from its entry and
            // by what this move can still stop from. Worked out in squares: the entry
            // speeds chain from move to move, and a square root in that chain would make
            // every move wait for the previous one's.
            let vmin = prev.vmax.min(vmax);
            let cos = dot.max(0.0);
            let angle2 = vmin * vmin * (cos * cos / (prev.norm2 * norm2));
            let junction2 = min_of_numbers(min_of_numbers(angle2, stoppable2), prev.reachable2);
            let junction = junction2.sqrt();
            self.planned = Planned {
                length: prev.length,
                entry: prev.entry,
                entry2: prev.entry2,
                exit: junction,
                exit2: junction2,
                vmax: prev.vmax,
                inv_vmax: prev.inv_vmax,
                accel: a,
                inv_accel: self.inv_accel,
            };
            (junction, junction2)
        } else {
            self.planned = Planned::NONE;
            (0.0, 0.0)
        };
        self.pending = Pending {
            length,
            vmax,
            inv_vmax,
            entry,
            entry2,
            reachable2: entry2 + stoppable2,
            dir_end,
            norm2,
        };
        self.has_pending = true;
    }

    /// Brings the machine to rest (a dwell, a heat-up wait, the end of the file).
    pub(crate) fn stop(&mut self) {
        self.seconds += self.planned.seconds();
        self.planned = Planned::NONE;
        if self.has_pending {
            let prev = self.pending;
            self.has_pending = false;
            self.seconds += trapezoid(
                prev.length,
                prev.entry,
                prev.entry2,
                0.0,
                0.0,
                prev.vmax,
                prev.inv_vmax,
                self.accel,
                self.inv_accel,
            );
        }
    }

    /// Adds a pause with the machine at rest.
    pub(crate) fn dwell(&mut self, seconds: f64) {
        self.stop();
        if seconds > 0.0 {
            self.seconds += seconds;
        }
    }

    /// Total seconds so far, including the move still waiting for its successor.
    pub(crate) fn finish(mut self) -> f64 {
        self.stop();
        self.seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_move_ramps_cruises_and_ramps() {
        // 10 mm at 10 mm/s, 1000 mm/s²: 0.01 s up, 0.01 s down, 9.9 mm cruise.
        let t = trapezoid_seconds(10.0, 0.0, 0.0, 10.0, 1000.0);
        assert!((t - 1.01).abs() < 1e-12, "{t}");
    }

    #[test]
    fn a_short_move_is_a_triangle() {
        // 1 mm at up to 100 mm/s with 100 mm/s²: peak 10 mm/s after 0.1 s each way.
        let t = trapezoid_seconds(1.0, 0.0, 0.0, 100.0, 100.0);
        assert!((t - 0.2).abs() < 1e-12, "{t}");
    }

    #[test]
    fn a_straight_line_split_in_two_takes_as_long_as_whole() {
        let x = [1.0, 0.0, 0.0];
        let mut whole = Planner::new(1000.0);
        whole.push(20.0, 10.0, x, x, 1.0);
        let mut split = Planner::new(1000.0);
        split.push(10.0, 10.0, x, x, 1.0);
        split.push(10.0, 10.0, x, x, 1.0);
        let (a, b) = (whole.finish(), split.finish());
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn a_move_timed_late_keeps_the_acceleration_of_its_junction() {
        // The first move is timed with 100 mm/s², in force when its exit was decided,
        // although the planner times it only at the stop; the last one with the 1000 mm/s²
        // in force at the stop.
        let mut p = Planner::new(1000.0);
        p.push(10.0, 10.0, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], 1.0);
        p.set_acceleration(100.0);
        p.push(10.0, 10.0, [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], 1.0);
        p.set_acceleration(1000.0);
        // 0.1 s up, 0.1 s down, 9 mm at 10 mm/s: 1.1 s; then 1.01 s as in the test above.
        let t = p.finish();
        assert!((t - 2.11).abs() < 1e-12, "{t}");
    }

    #[test]
    fn no_planned_move_takes_no_time() {
        assert_eq!(Planned::NONE.seconds().to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn a_right_angle_stops_the_machine() {
        let mut p = Planner::new(1000.0);
        p.push(10.0, 10.0, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], 1.0);
        p.push(10.0, 10.0, [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], 1.0);
        assert!((p.finish() - 2.02).abs() < 1e-12);
    }
}
