//! The result of analysing a file, and its bridges to the wire types the coordinator and
//! the agent exchange.

use munifab_protocol::{AnalysisSummary, Box3, Flavour, Process, Requirements, Severity, Vec3};
use serde::Serialize;

use super::finding::Finding;
use super::slicer::{SlicerInfo, Thumbnail};

/// Filament diameter assumed when the header does not say, mm.
pub const DEFAULT_FILAMENT_DIAMETER_MM: f64 = 1.75;

/// Typical density of a filament material, g/cm³, for files whose slicer header names the
/// material but leaves its density at 0 or out (PrusaSlicer's default profiles do): the
/// ledger charges material by mass, and 0 g for a printed part would be wrong.
pub fn typical_density_g_cm3(material: &str) -> Option<f64> {
    let m = material.trim().to_ascii_uppercase();
    Some(match m.as_str() {
        "PLA" => 1.24,
        "PETG" | "PET" => 1.27,
        "ABS" => 1.04,
        "ASA" => 1.07,
        "TPU" | "FLEX" => 1.21,
        "PA" | "NYLON" | "PA6" | "PA12" => 1.14,
        "PC" => 1.20,
        "HIPS" => 1.04,
        "PVA" => 1.23,
        _ => return None,
    })
}

/// Everything the analysis learnt about a file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// Lines in the file (a last line without newline counts).
    pub lines: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Dialect the file is written in.
    pub flavour: Flavour,
    /// Process the file is for.
    pub process: Process,
    /// Why the flavour and process were chosen.
    pub flavour_evidence: Vec<Evidence>,
    /// Extent of all moves (travel included), mm, in the coordinates the file starts in.
    pub bounds: Option<Box3>,
    /// Extent of extruding or cutting moves, mm.
    pub work_bounds: Option<Box3>,
    /// Filament pushed through all extruders, mm (net of retractions).
    pub extrusion_mm: f64,
    /// Number of layers (z heights at which extrusion happened, in order of change).
    pub layers: u32,
    /// Layer heights, when there were layers.
    pub layer_heights: Option<LayerHeights>,
    /// Estimated run time from the motion model, seconds (heat-up waits not included).
    pub estimated_seconds: f64,
    /// Temperatures requested.
    pub temperatures: Temperatures,
    /// Highest part-cooling fan duty requested, percent.
    pub fan_max_percent: Option<f64>,
    /// Distinct spindle speeds (or laser powers) requested while on, ascending (at most 32).
    pub spindle_rpm: Vec<f64>,
    /// Per tool: moves, extrusion, heat. Only tools the file selects or moves with.
    pub tools: Vec<ToolReport>,
    /// What the slicer or CAM post-processor wrote in its comments.
    pub slicer: Option<SlicerInfo>,
    /// Embedded thumbnails, decoded.
    pub thumbnails: Vec<Thumbnail>,
    /// Findings, sorted by line; at most [`KEPT_PER_CODE`](super::KEPT_PER_CODE) per code.
    pub findings: Vec<Finding>,
    /// Findings beyond the per-code cap, only counted.
    pub suppressed_findings: u64,
}

/// One reason for the dialect or process decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Line where it was first seen.
    pub line: u64,
    /// The dialect it points to.
    pub flavour: Flavour,
    /// What was seen.
    pub what: &'static str,
}

/// Heights of the layers, mm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LayerHeights {
    /// Z of the first layer.
    pub first_z: f64,
    /// Z of the last layer.
    pub last_z: f64,
    /// Thinnest layer (rise between consecutive layers).
    pub min_mm: f64,
    /// Thickest layer.
    pub max_mm: f64,
}

/// Highest temperatures requested, °C.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Temperatures {
    /// Hotend, highest over all tools.
    pub hotend_c: Option<f64>,
    /// Bed.
    pub bed_c: Option<f64>,
    /// Chamber.
    pub chamber_c: Option<f64>,
}

/// What one tool (extruder or cutter) did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolReport {
    /// Tool number (`T0` is 0).
    pub tool: u32,
    /// Filament pushed, mm.
    pub extrusion_mm: f64,
    /// Extent of all its moves.
    pub bounds: Option<Box3>,
    /// Extent of its extruding or cutting moves.
    pub work_bounds: Option<Box3>,
    /// Highest hotend temperature requested for it, °C.
    pub hotend_c: Option<f64>,
}

impl Analysis {
    /// Whether an error finding refuses the file.
    pub fn is_refused(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// The error findings.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// Findings in their wire form.
    pub fn wire_findings(&self) -> Vec<munifab_protocol::Finding> {
        self.findings.iter().map(Into::into).collect()
    }

    /// Filament diameter from the header, or the common 1.75 mm.
    pub fn filament_diameter_mm(&self) -> f64 {
        self.slicer
            .as_ref()
            .and_then(|s| s.filament_diameter_mm)
            .filter(|d| *d > 0.0)
            .unwrap_or(DEFAULT_FILAMENT_DIAMETER_MM)
    }

    /// Mass of the extruded filament for a density in g/cm³, grams.
    pub fn material_grams(&self, density_g_cm3: f64) -> f64 {
        let r = self.filament_diameter_mm() / 2.0;
        let mm3 = std::f64::consts::PI * r * r * self.extrusion_mm.max(0.0);
        mm3 / 1000.0 * density_g_cm3
    }

    /// What the file needs from a machine: the input of [`Requirements::unmet_by`].
    pub fn requirements(&self) -> Requirements {
        let slicer = self.slicer.as_ref();
        Requirements {
            process: self.process,
            flavour: self.flavour,
            bounds: self.bounds,
            hotend_temp_c: self.temperatures.hotend_c,
            bed_temp_c: self.temperatures.bed_c,
            spindle_rpm: self.spindle_rpm.last().copied(),
            nozzle_diameter_mm: slicer.and_then(|s| s.nozzle_diameter_mm),
            material: slicer.and_then(|s| s.filament_type.clone()),
            // A printer needs as many extruders as the highest number used; CNC tool
            // numbers name cutters changed by hand, so one spindle runs them all.
            tools: match self.process {
                Process::Fdm => self.tools.iter().map(|t| t.tool + 1).max().unwrap_or(1),
                Process::Cnc | Process::Laser => 1,
            },
        }
    }

    /// The figures the coordinator sends with an assignment. The mass uses `density_g_cm3`
    /// when given, else the slicer's filament density when above 0, else the
    /// [typical density](typical_density_g_cm3) of the slicer's filament type, else none.
    pub fn summary(&self, density_g_cm3: Option<f64>) -> AnalysisSummary {
        let slicer = self.slicer.as_ref();
        let density = density_g_cm3
            .or_else(|| {
                slicer
                    .and_then(|s| s.filament_density_g_cm3)
                    .filter(|d| *d > 0.0)
            })
            .or_else(|| {
                slicer
                    .and_then(|s| s.filament_type.as_deref())
                    .and_then(typical_density_g_cm3)
            });
        AnalysisSummary {
            lines: self.lines,
            bytes: self.bytes,
            estimated_seconds: self.estimated_seconds,
            extrusion_mm: self.extrusion_mm,
            material_grams: density
                .filter(|_| self.process == Process::Fdm)
                .map(|d| self.material_grams(d)),
            layers: self.layers,
        }
    }
}

/// Running min/max per axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct BoundsAcc {
    min: [f64; 3],
    max: [f64; 3],
}

impl Default for BoundsAcc {
    fn default() -> Self {
        Self {
            min: [f64::INFINITY; 3],
            max: [f64::NEG_INFINITY; 3],
        }
    }
}

impl BoundsAcc {
    #[inline]
    pub(crate) fn add(&mut self, axis: usize, v: f64) {
        if v < self.min[axis] {
            self.min[axis] = v;
        }
        if v > self.max[axis] {
            self.max[axis] = v;
        }
    }

    #[inline]
    pub(crate) fn add_point(&mut self, p: &[f64; 3], known: &[bool; 3]) {
        for axis in 0..3 {
            if known[axis] {
                self.add(axis, p[axis]);
            }
        }
    }

    /// [`add_point`](Self::add_point) with every axis known, without a branch: `v < min`
    /// selects as the branch would (a NaN never replaces a bound), so the result is the
    /// same to the bit, and a bound that grows now and then costs no misprediction.
    #[inline(always)]
    pub(crate) fn add_known_point(&mut self, p: &[f64; 3]) {
        for ((&v, lo), hi) in p.iter().zip(&mut self.min).zip(&mut self.max) {
            *lo = if v < *lo { v } else { *lo };
            *hi = if v > *hi { v } else { *hi };
        }
    }

    pub(crate) fn merge(&mut self, other: &BoundsAcc) {
        for axis in 0..3 {
            self.min[axis] = self.min[axis].min(other.min[axis]);
            self.max[axis] = self.max[axis].max(other.max[axis]);
        }
    }

    /// The box, with axes never reached reported as 0..0; none when nothing moved.
    pub(crate) fn to_box(self) -> Option<Box3> {
        if (0..3).all(|a| self.min[a] > self.max[a]) {
            return None;
        }
        let get = |a: usize| {
            if self.min[a] > self.max[a] {
                (0.0, 0.0)
            } else {
                (self.min[a], self.max[a])
            }
        };
        let (x, y, z) = (get(0), get(1), get(2));
        Some(Box3 {
            min: Vec3 {
                x: x.0,
                y: y.0,
                z: z.0,
            },
            max: Vec3 {
                x: x.1,
                y: y.1,
                z: z.1,
            },
        })
    }
}
