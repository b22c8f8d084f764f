//! Findings of the validation: what is wrong or worth knowing, where, and how bad.

use std::fmt;

use munifab_protocol::Severity;
use serde::Serialize;

/// Stable machine-readable kind of a finding (the wire `code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingCode {
    /// A command that must never be streamed from a job file.
    ForbiddenCommand,
    /// A command that needs an operator or changes machine settings for the session.
    AttentionCommand,
    /// A command this analysis does not know.
    UnknownCommand,
    /// A line that could not be read as G-code.
    MalformedLine,
    /// A line longer than any firmware accepts.
    LineTooLong,
    /// An arc whose geometry is inconsistent (radius too small, end not on the circle).
    InvalidArc,
    /// A move outside the machine's build volume.
    OutOfVolume,
    /// A hotend temperature above the machine's limit.
    HotendTooHot,
    /// A bed temperature above the machine's limit, or a bed the machine lacks.
    BedTooHot,
    /// A spindle speed above the machine's maximum.
    SpindleTooFast,
    /// A tool number the machine does not have.
    ToolMissing,
    /// The slicer header names a different nozzle than the machine has.
    NozzleMismatch,
    /// The slicer header names a material the machine has not loaded.
    MaterialMismatch,
    /// The file is for another process (a CNC file on a printer).
    WrongProcess,
    /// The file is in another G-code dialect than the machine's firmware speaks.
    WrongFlavour,
    /// An embedded thumbnail could not be decoded.
    InvalidThumbnail,
}

impl FindingCode {
    /// The stable snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingCode::ForbiddenCommand => "forbidden_command",
            FindingCode::AttentionCommand => "attention_command",
            FindingCode::UnknownCommand => "unknown_command",
            FindingCode::MalformedLine => "malformed_line",
            FindingCode::LineTooLong => "line_too_long",
            FindingCode::InvalidArc => "invalid_arc",
            FindingCode::OutOfVolume => "out_of_volume",
            FindingCode::HotendTooHot => "hotend_too_hot",
            FindingCode::BedTooHot => "bed_too_hot",
            FindingCode::SpindleTooFast => "spindle_too_fast",
            FindingCode::ToolMissing => "tool_missing",
            FindingCode::NozzleMismatch => "nozzle_mismatch",
            FindingCode::MaterialMismatch => "material_mismatch",
            FindingCode::WrongProcess => "wrong_process",
            FindingCode::WrongFlavour => "wrong_flavour",
            FindingCode::InvalidThumbnail => "invalid_thumbnail",
        }
    }

    /// How bad a finding of this kind is; fixed per kind so that a refusal never hides
    /// behind the cap on kept findings.
    pub fn severity(self) -> Severity {
        match self {
            FindingCode::AttentionCommand
            | FindingCode::UnknownCommand
            | FindingCode::InvalidThumbnail => Severity::Warning,
            _ => Severity::Error,
        }
    }

    const COUNT: usize = 16;

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FindingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: severity, kind, place and a message a maker understands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Error refuses the file; warning is reported.
    pub severity: Severity,
    /// Stable kind.
    pub code: FindingCode,
    /// 1-based line.
    pub line: u64,
    /// 1-based byte column (1 when the whole line is meant).
    pub column: u32,
    /// What a maker reads.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{sev}[{}] line {}:{}: {}",
            self.code, self.line, self.column, self.message
        )
    }
}

impl From<Finding> for munifab_protocol::Finding {
    fn from(f: Finding) -> Self {
        munifab_protocol::Finding {
            severity: f.severity,
            code: f.code.as_str().to_string(),
            line: f.line,
            column: f.column,
            message: f.message,
        }
    }
}

impl From<&Finding> for munifab_protocol::Finding {
    fn from(f: &Finding) -> Self {
        f.clone().into()
    }
}

/// How many findings of one kind are kept; the rest are only counted, so that a file with
/// a million bad moves still analyses in constant memory.
pub const KEPT_PER_CODE: u32 = 20;

/// Collects findings with a cap per kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FindingSink {
    kept: Vec<Finding>,
    counts: [u64; FindingCode::COUNT],
}

impl FindingSink {
    pub(crate) fn new() -> Self {
        Self {
            kept: Vec::new(),
            counts: [0; FindingCode::COUNT],
        }
    }

    /// Records a finding; the message is only built when it is kept.
    pub(crate) fn push(
        &mut self,
        code: FindingCode,
        line: u64,
        column: u32,
        message: impl FnOnce() -> String,
    ) {
        let count = &mut self.counts[code.index()];
        *count += 1;
        if *count <= u64::from(KEPT_PER_CODE) {
            self.kept.push(Finding {
                severity: code.severity(),
                code,
                line,
                column,
                message: message(),
            });
        }
    }

    /// The kept findings sorted by place, and how many more were only counted.
    pub(crate) fn finish(mut self) -> (Vec<Finding>, u64) {
        self.kept.sort_by_key(|f| (f.line, f.column));
        let total: u64 = self.counts.iter().sum();
        let kept = self.kept.len() as u64;
        (self.kept, total - kept)
    }
}
