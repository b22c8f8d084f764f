//! Seeded, deterministic fault injection: the same seed and the same traffic give the same
//! faults, so a failing run can be replayed.

use super::VmConfigError;

/// Random faults a virtual machine injects on its own, all driven by one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Seed of the pseudo-random generator behind every fault below.
    pub seed: u64,
    /// Probability that a byte from the host reaches the firmware with one bit flipped.
    pub corrupt_to_machine: f64,
    /// Probability that a byte from the firmware reaches the host with one bit flipped.
    pub corrupt_to_host: f64,
    /// Probability that an `ok…` line is never sent.
    pub drop_ok: f64,
    /// Probability, per executed command, that the controller resets spontaneously.
    pub reset_per_command: f64,
    /// Unplug the machine after it has executed this many commands.
    pub disconnect_after_commands: Option<u64>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 0x4d75_6e69_4661_6221,
            corrupt_to_machine: 0.0,
            corrupt_to_host: 0.0,
            drop_ok: 0.0,
            reset_per_command: 0.0,
            disconnect_after_commands: None,
        }
    }
}

impl FaultConfig {
    pub(crate) fn validate(&self) -> Result<(), VmConfigError> {
        let rates = [
            ("corrupt_to_machine", self.corrupt_to_machine),
            ("corrupt_to_host", self.corrupt_to_host),
            ("drop_ok", self.drop_ok),
            ("reset_per_command", self.reset_per_command),
        ];
        for (name, value) in rates {
            if !(0.0..=1.0).contains(&value) {
                return Err(VmConfigError::Probability { name, value });
            }
        }
        Ok(())
    }
}

/// A fault injected on demand while the machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next `ok…` line the firmware prints is lost.
    DropNextOk,
    /// The next byte from the host reaches the firmware with one bit flipped.
    CorruptNextByteToMachine,
    /// The controller resets (brown-out, watchdog): everything in flight is lost, then it boots.
    Reset,
    /// The machine's own protection fires: Marlin thermal runaway (then kill), GRBL hard
    /// limit (`ALARM:1`).
    SafetyTrip,
    /// The USB cable is pulled: the link closes.
    Disconnect,
}

/// SplitMix64: tiny, fast, and good enough to decide where faults land.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        // 53 random bits give a uniform float in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    /// Flips one random bit of `byte`.
    pub(crate) fn flip_bit(&mut self, byte: u8) -> u8 {
        byte ^ (1 << (self.next_u64() % 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<bool> = (0..100).map(|_| a.chance(0.3)).collect();
        let ys: Vec<bool> = (0..100).map(|_| b.chance(0.3)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().any(|x| *x) && xs.iter().any(|x| !*x));
    }

    #[test]
    fn a_flipped_byte_always_differs_in_exactly_one_bit() {
        let mut rng = Rng::new(1);
        for byte in 0..=255u8 {
            assert_eq!((rng.flip_bit(byte) ^ byte).count_ones(), 1);
        }
    }

    #[test]
    fn a_rate_outside_zero_to_one_is_rejected() {
        let config = FaultConfig {
            drop_ok: 1.5,
            ..FaultConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(VmConfigError::Probability {
                name: "drop_ok",
                ..
            })
        ));
    }
}
