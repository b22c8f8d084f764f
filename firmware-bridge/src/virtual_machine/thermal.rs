//! A first-order thermal model of a heater (hotend or bed) with a feed-forward plus
//! proportional controller, close enough to a PID-tuned heater for a host to see realistic
//! heating curves, overshoot-free settling and cooling towards ambient.

/// Which heater a command talks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaterId {
    Hotend,
    Bed,
}

/// One heater and the block of metal it heats.
///
/// Design note: with power `p` the block settles at `ambient + p·(full_power_temp − ambient)`
/// with time constant `tau`; integrating in steps of at most 100 ms of simulated time and
/// recomputing the controller output each step keeps the model stable for any jump of the
/// virtual clock.
#[derive(Debug, Clone)]
pub(crate) struct Heater {
    temp: f64,
    target: f64,
    ambient: f64,
    full_power_temp: f64,
    tau: f64,
    power: f64,
}

const STEP_SECONDS: f64 = 0.1;
const GAIN_PER_DEGREE: f64 = 0.05;

impl Heater {
    pub(crate) fn hotend(ambient: f64) -> Self {
        Heater {
            temp: ambient,
            target: 0.0,
            ambient,
            full_power_temp: 400.0,
            tau: 40.0,
            power: 0.0,
        }
    }

    pub(crate) fn bed(ambient: f64) -> Self {
        Heater {
            temp: ambient,
            target: 0.0,
            ambient,
            full_power_temp: 150.0,
            tau: 120.0,
            power: 0.0,
        }
    }

    pub(crate) fn temp(&self) -> f64 {
        self.temp
    }

    pub(crate) fn target(&self) -> f64 {
        self.target
    }

    /// Heater output as Marlin prints it after `@:` (0..=127 on 8-bit boards).
    pub(crate) fn pwm(&self) -> u8 {
        (self.power * 127.0).round().clamp(0.0, 127.0) as u8
    }

    /// Sets the target; targets above what the heater can reach are clamped below it.
    pub(crate) fn set_target(&mut self, target: f64) {
        self.target = target.clamp(0.0, self.full_power_temp - 10.0);
        self.update_power();
    }

    /// Heaters off, as after a kill.
    pub(crate) fn switch_off(&mut self) {
        self.target = 0.0;
        self.power = 0.0;
    }

    /// Advances the physics by `seconds` of simulated time; `None` means infinitely fast
    /// (speed factor 0): the block jumps to where it would settle.
    pub(crate) fn advance(&mut self, seconds: Option<f64>) {
        let Some(mut left) = seconds else {
            self.temp = if self.target > self.ambient {
                self.target
            } else {
                self.ambient
            };
            self.update_power();
            return;
        };
        while left > 0.0 {
            if self.settled() {
                // Nothing changes any more; long idle spans at high speed cost nothing.
                return;
            }
            let dt = left.min(STEP_SECONDS);
            let settle = self.ambient + self.power * (self.full_power_temp - self.ambient);
            self.temp = settle + (self.temp - settle) * (-dt / self.tau).exp();
            self.update_power();
            left -= dt;
        }
    }

    fn settled(&self) -> bool {
        let rest = if self.target > self.ambient {
            self.target
        } else {
            self.ambient
        };
        (self.temp - rest).abs() < 1e-4
    }

    fn update_power(&mut self) {
        if self.target <= 0.0 {
            self.power = 0.0;
            return;
        }
        let feed_forward =
            (self.target - self.ambient).max(0.0) / (self.full_power_temp - self.ambient);
        self.power = (feed_forward + GAIN_PER_DEGREE * (self.target - self.temp)).clamp(0.0, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hotend_heats_to_its_target_and_stays_there() {
        let mut hotend = Heater::hotend(21.0);
        hotend.set_target(210.0);
        hotend.advance(Some(10.0));
        let after_ten_seconds = hotend.temp();
        assert!(
            after_ten_seconds > 60.0 && after_ten_seconds < 210.0,
            "{after_ten_seconds}"
        );
        hotend.advance(Some(300.0));
        assert!((hotend.temp() - 210.0).abs() < 0.5, "{}", hotend.temp());
        assert!(hotend.pwm() > 0);
    }

    #[test]
    fn a_settled_heater_costs_nothing_over_a_long_idle() {
        let mut hotend = Heater::hotend(21.0);
        hotend.set_target(200.0);
        hotend.advance(None);
        hotend.advance(Some(1e9));
        assert!((hotend.temp() - 200.0).abs() < 1e-3);
    }

    #[test]
    fn a_switched_off_bed_cools_towards_ambient() {
        let mut bed = Heater::bed(20.0);
        bed.set_target(60.0);
        bed.advance(None);
        assert_eq!(bed.temp(), 60.0);
        bed.switch_off();
        bed.advance(Some(60.0));
        assert!(bed.temp() < 60.0 && bed.temp() > 20.0);
        assert_eq!(bed.pwm(), 0);
    }
}
