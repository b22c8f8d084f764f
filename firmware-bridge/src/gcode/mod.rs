//! G-code analysis and validation: know what a file will do before a byte is sent.
//!
//! Usable without the `serial` feature: the coordinator links only this module.
//!
//! - [`Analyzer`]: the streaming analyzer (feed chunks, [`Analyzer::finish`]), and the
//!   one-call helpers [`analyze_bytes`] and [`analyze_reader`].
//! - [`Analysis`]: bounds, extrusion, layers, duration, temperatures, tools, slicer
//!   metadata, thumbnails, dialect with evidence, findings; bridges to the wire
//!   ([`Analysis::requirements`], [`Analysis::summary`], [`Analysis::wire_findings`]).
//! - [`MachineProfile`]: the strict TOML machine profile; [`Analyzer::with_profile`]
//!   validates a file against it.
//! - [`Finding`] / [`FindingCode`]: what is wrong, where, how bad.
//!
//! The fast path (`lexer`) reads bytes without allocating per line; lines it cannot read
//! go to the `gcode` crate for a diagnostic with a span.

mod analysis;
mod analyzer;
mod commands;
mod finding;
mod lexer;
mod motion;
mod profile;
mod slicer;

pub use analysis::{
    Analysis, DEFAULT_FILAMENT_DIAMETER_MM, Evidence, LayerHeights, Temperatures, ToolReport,
    typical_density_g_cm3,
};
pub use analyzer::{Analyzer, MAX_LINE_BYTES, analyze_bytes, analyze_reader};
pub use finding::{Finding, FindingCode, KEPT_PER_CODE};
pub use motion::{MotionLimits, trapezoid_seconds};
pub use profile::{MachineProfile, Power, ProfileError};
pub use slicer::{SlicerInfo, Thumbnail, ThumbnailFormat};
