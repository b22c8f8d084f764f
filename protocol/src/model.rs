//! The capability model: what a machine can do, and what a job needs.
//!
//! `Capabilities` is announced by agents in the retained machine state and is the
//! `[capabilities]` table of a machine profile TOML. `Requirements` are derived from the
//! G-code analysis at submission. [`Requirements::unmet_by`] is the one fit check used by
//! the scheduler (to place) and by the agent (to refuse).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The fabrication process of a machine or a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Process {
    /// Fused deposition modelling (3D printing).
    Fdm,
    /// Subtractive machining (router, mill).
    Cnc,
    /// Laser cutting or engraving.
    Laser,
}

/// The firmware a machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// Marlin 1.x/2.x.
    Marlin,
    /// Prusa's Marlin-derived firmware.
    Prusa,
    /// RepRapFirmware (Duet) in Marlin-compatible mode.
    Reprapfirmware,
    /// GRBL 1.1.
    Grbl,
    /// grblHAL.
    Grblhal,
    /// FluidNC.
    Fluidnc,
}

impl Firmware {
    /// The G-code dialect family this firmware speaks.
    pub fn flavour(self) -> Flavour {
        match self {
            Firmware::Marlin | Firmware::Prusa | Firmware::Reprapfirmware => Flavour::Reprap,
            Firmware::Grbl | Firmware::Grblhal | Firmware::Fluidnc => Flavour::Grbl,
        }
    }
}

/// G-code dialect families: a file written for one does not run on the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavour {
    /// Marlin / RepRap style (M104, M109, extrusion on E, ...).
    Reprap,
    /// GRBL style CNC G-code (spindle S/M3, no extrusion, `$` system commands).
    Grbl,
}

/// A point or extent in millimetres.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Vec3 {
    /// X in mm.
    pub x: f64,
    /// Y in mm.
    pub y: f64,
    /// Z in mm.
    pub z: f64,
}

/// An axis-aligned box in millimetres, in the machine's work coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Box3 {
    /// Lowest corner.
    pub min: Vec3,
    /// Highest corner.
    pub max: Vec3,
}

impl Box3 {
    /// Whether `other` lies entirely inside `self` (touching the faces is inside).
    pub fn contains(&self, other: &Box3) -> bool {
        const EPS: f64 = 1e-6;
        other.min.x >= self.min.x - EPS
            && other.min.y >= self.min.y - EPS
            && other.min.z >= self.min.z - EPS
            && other.max.x <= self.max.x + EPS
            && other.max.y <= self.max.y + EPS
            && other.max.z <= self.max.z + EPS
    }
}

/// What a machine can do; announced in its retained state.
///
/// On the wire unknown fields are ignored (a newer agent may announce more). Loaders of
/// configuration files that embed this table reject unknown keys themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Process of the machine.
    pub process: Process,
    /// Firmware it runs.
    pub firmware: Firmware,
    /// Reachable work volume.
    pub build_volume: Box3,
    /// Nozzle diameter in mm (FDM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nozzle_diameter_mm: Option<f64>,
    /// Materials loaded or accepted, upper case (`PLA`, `PETG`, `PLYWOOD`).
    #[serde(default)]
    pub materials: Vec<String>,
    /// Highest hotend temperature the machine may be asked for, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hotend_temp_c: Option<f64>,
    /// Highest bed temperature, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bed_temp_c: Option<f64>,
    /// Highest spindle speed, rpm (CNC, laser power scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spindle_max_rpm: Option<f64>,
    /// Number of tools (extruders, or tool slots).
    #[serde(default = "one")]
    pub tool_count: u32,
}

fn one() -> u32 {
    1
}

/// What a job needs from a machine, derived from the analysis of its G-code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// Process the file is for.
    pub process: Process,
    /// Dialect of the file.
    pub flavour: Flavour,
    /// Extent of all moves, in the file's coordinates (mm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounds: Option<Box3>,
    /// Highest hotend temperature requested, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotend_temp_c: Option<f64>,
    /// Highest bed temperature requested, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bed_temp_c: Option<f64>,
    /// Highest spindle speed requested, rpm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spindle_rpm: Option<f64>,
    /// Nozzle diameter the file was sliced for, mm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nozzle_diameter_mm: Option<f64>,
    /// Material the file was prepared for, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material: Option<String>,
    /// Number of tools used.
    #[serde(default = "one")]
    pub tools: u32,
}

/// One reason a machine cannot run a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Unmet {
    /// Different process (e.g. a CNC file on a printer).
    Process {
        /// Needed.
        need: Process,
        /// Offered.
        have: Process,
    },
    /// Different G-code dialect.
    Flavour {
        /// Needed.
        need: Flavour,
        /// Offered.
        have: Flavour,
    },
    /// Moves leave the machine's volume.
    Volume {
        /// Extent of the job's moves.
        need: Box3,
        /// The machine's volume.
        have: Box3,
    },
    /// Hotend hotter than allowed.
    HotendTemp {
        /// Needed.
        need: f64,
        /// Allowed (absent: the machine has no hotend).
        have: Option<f64>,
    },
    /// Bed hotter than allowed.
    BedTemp {
        /// Needed.
        need: f64,
        /// Allowed (absent: no heated bed).
        have: Option<f64>,
    },
    /// Spindle faster than allowed.
    Spindle {
        /// Needed.
        need: f64,
        /// Allowed (absent: no spindle).
        have: Option<f64>,
    },
    /// A different nozzle is fitted.
    Nozzle {
        /// Needed.
        need: f64,
        /// Fitted.
        have: Option<f64>,
    },
    /// The material is not loaded.
    Material {
        /// Needed.
        need: String,
        /// Loaded.
        have: Vec<String>,
    },
    /// More tools than the machine has.
    Tools {
        /// Needed.
        need: u32,
        /// Available.
        have: u32,
    },
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn opt(v: &Option<f64>) -> String {
            v.map_or_else(|| "none".to_string(), |v| format!("{v}"))
        }
        match self {
            Unmet::Process { need, have } => {
                write!(f, "job is for {need:?}, machine does {have:?}")
            }
            Unmet::Flavour { need, have } => {
                write!(f, "job is {need:?} G-code, machine speaks {have:?}")
            }
            Unmet::Volume { need, have } => write!(
                f,
                "moves span x {:.1}..{:.1} y {:.1}..{:.1} z {:.1}..{:.1} mm, machine reaches x {:.1}..{:.1} y {:.1}..{:.1} z {:.1}..{:.1} mm",
                need.min.x,
                need.max.x,
                need.min.y,
                need.max.y,
                need.min.z,
                need.max.z,
                have.min.x,
                have.max.x,
                have.min.y,
                have.max.y,
                have.min.z,
                have.max.z
            ),
            Unmet::HotendTemp { need, have } => {
                write!(f, "hotend {need} °C requested, limit {} °C", opt(have))
            }
            Unmet::BedTemp { need, have } => {
                write!(f, "bed {need} °C requested, limit {} °C", opt(have))
            }
            Unmet::Spindle { need, have } => {
                write!(f, "spindle {need} rpm requested, limit {} rpm", opt(have))
            }
            Unmet::Nozzle { need, have } => write!(
                f,
                "sliced for a {need} mm nozzle, machine has {} mm",
                opt(have)
            ),
            Unmet::Material { need, have } => write!(
                f,
                "needs {need}, machine has {}",
                if have.is_empty() {
                    "nothing".to_string()
                } else {
                    have.join(", ")
                }
            ),
            Unmet::Tools { need, have } => write!(f, "uses {need} tools, machine has {have}"),
        }
    }
}

impl Requirements {
    /// Every reason `caps` cannot run this job; empty when it fits.
    pub fn unmet_by(&self, caps: &Capabilities) -> Vec<Unmet> {
        let mut unmet = Vec::new();
        if self.process != caps.process {
            unmet.push(Unmet::Process {
                need: self.process,
                have: caps.process,
            });
        }
        if self.flavour != caps.firmware.flavour() {
            unmet.push(Unmet::Flavour {
                need: self.flavour,
                have: caps.firmware.flavour(),
            });
        }
        if let Some(bounds) = self.bounds
            && !caps.build_volume.contains(&bounds)
        {
            unmet.push(Unmet::Volume {
                need: bounds,
                have: caps.build_volume,
            });
        }
        let above = |need: Option<f64>, have: Option<f64>| {
            need.filter(|n| *n > 0.0 && have.is_none_or(|h| *n > h))
        };
        if let Some(need) = above(self.hotend_temp_c, caps.max_hotend_temp_c) {
            unmet.push(Unmet::HotendTemp {
                need,
                have: caps.max_hotend_temp_c,
            });
        }
        if let Some(need) = above(self.bed_temp_c, caps.max_bed_temp_c) {
            unmet.push(Unmet::BedTemp {
                need,
                have: caps.max_bed_temp_c,
            });
        }
        if let Some(need) = above(self.spindle_rpm, caps.spindle_max_rpm) {
            unmet.push(Unmet::Spindle {
                need,
                have: caps.spindle_max_rpm,
            });
        }
        if let Some(need) = self.nozzle_diameter_mm
            && caps
                .nozzle_diameter_mm
                .is_none_or(|have| (have - need).abs() > 1e-3)
        {
            unmet.push(Unmet::Nozzle {
                need,
                have: caps.nozzle_diameter_mm,
            });
        }
        if let Some(need) = &self.material
            && !caps.materials.iter().any(|m| m.eq_ignore_ascii_case(need))
        {
            unmet.push(Unmet::Material {
                need: need.clone(),
                have: caps.materials.clone(),
            });
        }
        if self.tools > caps.tool_count {
            unmet.push(Unmet::Tools {
                need: self.tools,
                have: caps.tool_count,
            });
        }
        unmet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn printer() -> Capabilities {
        Capabilities {
            process: Process::Fdm,
            firmware: Firmware::Marlin,
            build_volume: Box3 {
                min: Vec3::default(),
                max: Vec3 {
                    x: 220.0,
                    y: 220.0,
                    z: 250.0,
                },
            },
            nozzle_diameter_mm: Some(0.4),
            materials: vec!["PLA".into()],
            max_hotend_temp_c: Some(260.0),
            max_bed_temp_c: Some(100.0),
            spindle_max_rpm: None,
            tool_count: 1,
        }
    }

    fn cube_job() -> Requirements {
        Requirements {
            process: Process::Fdm,
            flavour: Flavour::Reprap,
            bounds: Some(Box3 {
                min: Vec3 {
                    x: 100.0,
                    y: 100.0,
                    z: 0.2,
                },
                max: Vec3 {
                    x: 120.0,
                    y: 120.0,
                    z: 20.0,
                },
            }),
            hotend_temp_c: Some(210.0),
            bed_temp_c: Some(60.0),
            spindle_rpm: None,
            nozzle_diameter_mm: Some(0.4),
            material: Some("pla".into()),
            tools: 1,
        }
    }

    #[test]
    fn a_fitting_job_has_nothing_unmet() {
        assert_eq!(cube_job().unmet_by(&printer()), vec![]);
    }

    #[test]
    fn every_mismatch_is_reported_not_just_the_first() {
        let mut job = cube_job();
        job.bounds.as_mut().unwrap().max.x = 230.0;
        job.hotend_temp_c = Some(300.0);
        job.material = Some("PETG".into());
        job.nozzle_diameter_mm = Some(0.6);
        let unmet = job.unmet_by(&printer());
        assert_eq!(unmet.len(), 4, "{unmet:?}");
        assert!(unmet[0].to_string().contains("230.0"));
    }

    #[test]
    fn a_cnc_file_never_fits_a_printer() {
        let job = Requirements {
            process: Process::Cnc,
            flavour: Flavour::Grbl,
            ..cube_job()
        };
        let unmet = job.unmet_by(&printer());
        assert!(matches!(unmet[0], Unmet::Process { .. }));
        assert!(matches!(unmet[1], Unmet::Flavour { .. }));
    }

    #[test]
    fn a_heater_the_machine_lacks_is_unmet() {
        let mut caps = printer();
        caps.max_bed_temp_c = None;
        assert!(matches!(
            cube_job().unmet_by(&caps)[0],
            Unmet::BedTemp { have: None, .. }
        ));
    }

    #[test]
    fn capabilities_from_a_newer_agent_still_decode() {
        let json = serde_json::to_value(printer()).unwrap();
        let mut obj = json.as_object().unwrap().clone();
        obj.insert("chamber_max_temp_c".into(), 60.into());
        assert_eq!(
            serde_json::from_value::<Capabilities>(obj.into()).unwrap(),
            printer()
        );
    }
}
