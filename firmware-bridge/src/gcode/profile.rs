//! Machine profiles: the TOML files in `profiles/` that describe what a machine can do
//! (see `PROFILE-FORMAT.md`). Strict: an unknown key anywhere is an error naming the file and
//! the key, because a misspelt limit silently ignored is a limit not enforced.

use std::path::{Path, PathBuf};

use munifab_protocol::Capabilities;
use serde::{Deserialize, Serialize};

use super::motion::MotionLimits;

/// A machine profile, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineProfile {
    /// Slug `[a-z0-9][a-z0-9_-]{0,63}`.
    pub id: String,
    /// Name for people.
    pub name: String,
    /// What the machine can do (the protocol's capability model).
    pub capabilities: Capabilities,
    /// Motion limits for the duration estimate.
    pub motion: MotionLimits,
    /// Power draw for the energy estimate.
    pub power: Power,
}

/// The `[power]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// Average draw while running, W.
    pub watts: f64,
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read machine profile {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or lacks a required key.
    #[error("machine profile {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key the format does not define.
    #[error("machine profile {path}: unknown key `{key}`")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// Dotted path of the key.
        key: String,
    },
    /// A value out of range.
    #[error("machine profile {path}: `{key}` {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted path of the key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl MachineProfile {
    /// Reads and validates a profile file.
    pub fn load(path: &Path) -> Result<MachineProfile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates profile text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<MachineProfile, ProfileError> {
        let syntax = |e: toml::de::Error| ProfileError::Syntax {
            path: origin.to_owned(),
            message: e.message().to_string(),
        };
        let de = toml::Deserializer::parse(text).map_err(syntax)?;
        let mut unknown = Vec::new();
        // `Capabilities` tolerates unknown fields on the wire on purpose; serde_ignored
        // catches what it (and every other table) would silently drop.
        let profile: MachineProfile =
            serde_ignored::deserialize(de, |p| unknown.push(p.to_string())).map_err(syntax)?;
        if let Some(key) = unknown.into_iter().next() {
            return Err(ProfileError::UnknownKey {
                path: origin.to_owned(),
                key,
            });
        }
        profile.validate(origin)?;
        Ok(profile)
    }

    fn validate(&self, origin: &Path) -> Result<(), ProfileError> {
        let bad = |key: &'static str, reason: String| {
            Err(ProfileError::Invalid {
                path: origin.to_owned(),
                key,
                reason,
            })
        };
        let slug_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.as_bytes()[0].is_ascii_alphanumeric()
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !slug_ok {
            return bad(
                "id",
                format!("`{}` must match [a-z0-9][a-z0-9_-]{{0,63}}", self.id),
            );
        }
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        let caps = &self.capabilities;
        let (lo, hi) = (caps.build_volume.min, caps.build_volume.max);
        for (key, a, b) in [
            ("capabilities.build_volume.x", lo.x, hi.x),
            ("capabilities.build_volume.y", lo.y, hi.y),
            ("capabilities.build_volume.z", lo.z, hi.z),
        ] {
            if !(a.is_finite() && b.is_finite() && b > a) {
                return bad(
                    key,
                    format!("must span a positive length (min {a}, max {b})"),
                );
            }
        }
        let positive = [
            ("capabilities.nozzle_diameter_mm", caps.nozzle_diameter_mm),
            ("capabilities.max_hotend_temp_c", caps.max_hotend_temp_c),
            ("capabilities.max_bed_temp_c", caps.max_bed_temp_c),
            ("capabilities.spindle_max_rpm", caps.spindle_max_rpm),
            ("motion.max_feed_mm_min", Some(self.motion.max_feed_mm_min)),
            (
                "motion.max_z_feed_mm_min",
                Some(self.motion.max_z_feed_mm_min),
            ),
            (
                "motion.acceleration_mm_s2",
                Some(self.motion.acceleration_mm_s2),
            ),
        ];
        for (key, v) in positive {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return bad(key, format!("must be a positive number, not {v}"));
            }
        }
        if let Some(t) = caps
            .max_hotend_temp_c
            .into_iter()
            .chain(caps.max_bed_temp_c)
            .find(|t| *t > 600.0)
        {
            return bad(
                "capabilities.max_*_temp_c",
                format!("{t} °C is beyond any hobby heater"),
            );
        }
        if !(self.power.watts.is_finite() && self.power.watts >= 0.0) {
            return bad(
                "power.watts",
                format!("must be zero or more, not {}", self.power.watts),
            );
        }
        if caps.tool_count == 0 || caps.tool_count > 64 {
            return bad(
                "capabilities.tool_count",
                format!("must be 1 to 64, not {}", caps.tool_count),
            );
        }
        if let Some(m) = caps
            .materials
            .iter()
            .find(|m| m.is_empty() || m.to_ascii_uppercase() != **m)
        {
            return bad(
                "capabilities.materials",
                format!("`{m}` must be a non-empty upper-case name"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRINTER: &str = r#"
id = "generic-marlin-220"
name = "Generic Marlin printer 220x220x250"

[capabilities]
process = "fdm"
firmware = "marlin"
build_volume = { min = { x = 0.0, y = 0.0, z = 0.0 }, max = { x = 220.0, y = 220.0, z = 250.0 } }
nozzle_diameter_mm = 0.4
materials = ["PLA", "PETG"]
max_hotend_temp_c = 260.0
max_bed_temp_c = 100.0
tool_count = 1

[motion]
max_feed_mm_min = 12000.0
max_z_feed_mm_min = 600.0
acceleration_mm_s2 = 1000.0

[power]
watts = 120.0
"#;

    fn load(text: &str) -> Result<MachineProfile, ProfileError> {
        MachineProfile::from_toml(text, Path::new("profiles/test.toml"))
    }

    #[test]
    fn the_documented_printer_profile_loads() {
        let p = load(PRINTER).unwrap();
        assert_eq!(p.id, "generic-marlin-220");
        assert_eq!(p.capabilities.build_volume.max.x, 220.0);
        assert_eq!(p.motion.acceleration_mm_s2, 1000.0);
    }

    #[test]
    fn an_unknown_key_inside_capabilities_names_the_file_and_key() {
        let text = PRINTER.replace(
            "tool_count = 1",
            "tool_count = 1\nmax_chamber_temp_c = 60.0",
        );
        let err = load(&text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("profiles/test.toml"), "{msg}");
        assert!(msg.contains("capabilities.max_chamber_temp_c"), "{msg}");
    }

    #[test]
    fn an_unknown_key_at_the_top_or_in_motion_is_an_error() {
        let text = PRINTER.replace("[power]", "jerk = 8.0\n[power]");
        assert!(matches!(load(&text), Err(ProfileError::UnknownKey { .. })));
        let text = PRINTER.replace("name =", "colour = \"red\"\nname =");
        assert!(
            matches!(load(&text), Err(ProfileError::UnknownKey { key, .. }) if key == "colour")
        );
    }

    #[test]
    fn a_flat_build_volume_is_refused() {
        let text = PRINTER.replace("z = 250.0", "z = 0.0");
        let err = load(&text).unwrap_err();
        assert!(err.to_string().contains("build_volume.z"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (from, to, key) in [
            (
                "acceleration_mm_s2 = 1000.0",
                "acceleration_mm_s2 = 0.0",
                "motion.acceleration_mm_s2",
            ),
            (
                "nozzle_diameter_mm = 0.4",
                "nozzle_diameter_mm = -0.4",
                "nozzle_diameter_mm",
            ),
            ("tool_count = 1", "tool_count = 0", "tool_count"),
            ("\"PLA\", \"PETG\"", "\"pla\"", "materials"),
            ("generic-marlin-220", "Generic Marlin", "id"),
        ] {
            let err = load(&PRINTER.replace(from, to)).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn a_missing_table_and_broken_toml_are_syntax_errors() {
        let text = PRINTER.replace("[power]\nwatts = 120.0\n", "");
        assert!(matches!(load(&text), Err(ProfileError::Syntax { .. })));
        assert!(matches!(load("id = "), Err(ProfileError::Syntax { .. })));
    }
}
