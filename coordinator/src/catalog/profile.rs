//! Machine profiles (`profiles/*.toml`): an id, a name, the protocol's
//! [`Capabilities`], motion limits and power draw. The catalog needs their ids and
//! processes to check the G-code a design ships; agents reference the same files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::ProfileId;
use munifab_protocol::Capabilities;

/// Why a profile file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The folder or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a bad value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// The profile's id and its file name differ.
    #[error("{path}: id `{id}` must match the file name")]
    IdMismatch {
        /// The file.
        path: PathBuf,
        /// The id inside it.
        id: ProfileId,
    },
    /// Two files define the same id.
    #[error("profile `{0}` is defined twice")]
    Duplicate(ProfileId),
}

/// Motion limits, for duration estimates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Motion {
    /// XY feed limit, mm/min.
    pub max_feed_mm_min: f64,
    /// Z feed limit, mm/min.
    pub max_z_feed_mm_min: f64,
    /// Acceleration, mm/s².
    pub acceleration_mm_s2: f64,
}

/// Power draw, for the ledger's energy estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Power {
    /// Average draw while running, W.
    pub watts: f64,
}

/// Keys of the protocol's `Capabilities`. The wire type ignores unknown fields (newer
/// agents may announce more), but a profile file is configuration, where an unknown key
/// is a typo; a test keeps this list in step with the type.
const CAPABILITY_KEYS: &[&str] = &[
    "process",
    "firmware",
    "build_volume",
    "nozzle_diameter_mm",
    "materials",
    "max_hotend_temp_c",
    "max_bed_temp_c",
    "spindle_max_rpm",
    "tool_count",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    id: ProfileId,
    name: String,
    capabilities: toml::Table,
    motion: Motion,
    power: Power,
}

/// A machine profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineProfile {
    /// Slug; equals the file name without `.toml`.
    pub id: ProfileId,
    /// Human name.
    pub name: String,
    /// What the machine can do.
    pub capabilities: Capabilities,
    /// Motion limits.
    pub motion: Motion,
    /// Power draw.
    pub power: Power,
}

impl MachineProfile {
    /// Parse one profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let profile = Self::parse(&text).map_err(|message| ProfileError::Parse {
            path: path.to_owned(),
            message,
        })?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(profile.id.as_str()) {
            return Err(ProfileError::IdMismatch {
                path: path.to_owned(),
                id: profile.id,
            });
        }
        Ok(profile)
    }

    /// Parse a profile's TOML text strictly: unknown keys anywhere are errors.
    fn parse(text: &str) -> Result<Self, String> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(unknown) = raw
            .capabilities
            .keys()
            .find(|k| !CAPABILITY_KEYS.contains(&k.as_str()))
        {
            return Err(format!("unknown key `capabilities.{unknown}`"));
        }
        for (key, value) in &raw.capabilities {
            if key == "build_volume" {
                check_box(value)?;
            }
        }
        let capabilities: Capabilities = toml::Value::Table(raw.capabilities)
            .try_into()
            .map_err(|e: toml::de::Error| format!("in `capabilities`: {}", e.message()))?;
        Ok(Self {
            id: raw.id,
            name: raw.name,
            capabilities,
            motion: raw.motion,
            power: raw.power,
        })
    }

    /// Load every `*.toml` in `dir`, keyed by id.
    pub fn load_dir(dir: &Path) -> Result<BTreeMap<ProfileId, Self>, ProfileError> {
        let io = |source| ProfileError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        paths.sort();
        let mut out = BTreeMap::new();
        for path in paths {
            let profile = Self::load(&path)?;
            if out.contains_key(&profile.id) {
                return Err(ProfileError::Duplicate(profile.id));
            }
            out.insert(profile.id.clone(), profile);
        }
        Ok(out)
    }
}

/// `build_volume = { min = { x, y, z }, max = { x, y, z } }` and nothing else.
fn check_box(value: &toml::Value) -> Result<(), String> {
    let table = value
        .as_table()
        .ok_or("`capabilities.build_volume` must be a table")?;
    for (corner, point) in table {
        if corner != "min" && corner != "max" {
            return Err(format!("unknown key `capabilities.build_volume.{corner}`"));
        }
        let point = point
            .as_table()
            .ok_or_else(|| format!("`capabilities.build_volume.{corner}` must be a table"))?;
        if let Some(axis) = point
            .keys()
            .find(|k| !["x", "y", "z"].contains(&k.as_str()))
        {
            return Err(format!(
                "unknown key `capabilities.build_volume.{corner}.{axis}`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use munifab_protocol::{Box3, Firmware, Process, Vec3};

    use super::*;

    const MARLIN: &str = r#"
id = "generic-marlin-220"
name = "Generic"
[capabilities]
process = "fdm"
firmware = "marlin"
build_volume = { min = { x = 0.0, y = 0.0, z = 0.0 }, max = { x = 220.0, y = 220.0, z = 250.0 } }
materials = ["PLA"]
max_hotend_temp_c = 260.0
tool_count = 1
[motion]
max_feed_mm_min = 12000.0
max_z_feed_mm_min = 600.0
acceleration_mm_s2 = 1000.0
[power]
watts = 120.0
"#;

    #[test]
    fn a_profile_parses_into_the_protocol_capabilities() {
        let p = MachineProfile::parse(MARLIN).unwrap();
        assert_eq!(p.capabilities.process, Process::Fdm);
        assert_eq!(p.capabilities.firmware, Firmware::Marlin);
        assert_eq!(p.capabilities.build_volume.max.z, 250.0);
    }

    #[test]
    fn unknown_keys_are_refused_even_inside_capabilities() {
        let e = MachineProfile::parse(
            &MARLIN.replace("tool_count = 1", "tool_count = 1\nlaser_watts = 5"),
        )
        .unwrap_err();
        assert!(e.contains("capabilities.laser_watts"), "{e}");
        let e = MachineProfile::parse(&MARLIN.replace("z = 250.0 }", "z = 250.0, w = 1.0 }"))
            .unwrap_err();
        assert!(e.contains("build_volume.max.w"), "{e}");
        let e =
            MachineProfile::parse(&MARLIN.replace("watts = 120.0", "watts = 120.0\nvolts = 24"))
                .unwrap_err();
        assert!(e.contains("volts"), "{e}");
    }

    #[test]
    fn the_capability_key_list_matches_the_protocol_type() {
        let full = Capabilities {
            process: Process::Cnc,
            firmware: Firmware::Grbl,
            build_volume: Box3 {
                min: Vec3::default(),
                max: Vec3::default(),
            },
            nozzle_diameter_mm: Some(0.4),
            materials: vec!["MDF".into()],
            max_hotend_temp_c: Some(1.0),
            max_bed_temp_c: Some(1.0),
            spindle_max_rpm: Some(1.0),
            tool_count: 1,
        };
        let value = toml::Value::try_from(&full).unwrap();
        let mut keys: Vec<&str> = value
            .as_table()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = CAPABILITY_KEYS.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
