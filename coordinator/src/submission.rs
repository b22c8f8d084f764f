//! What happens to an uploaded G-code file before it becomes a job: the analysis from
//! `munifab_firmware_bridge::gcode` decides whether the file is refused, and derives the
//! job's requirements and summary. This is the single seam between upload and analysis.

use munifab_firmware_bridge::gcode;
use munifab_protocol::{AnalysisSummary, Finding, Requirements};

/// An accepted file and what was derived from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysed {
    /// The file, unchanged.
    pub bytes: Vec<u8>,
    /// What a machine needs to run it.
    pub requirements: Requirements,
    /// Figures sent with the assignment.
    pub summary: AnalysisSummary,
    /// Warnings (kept for the response; errors refuse the file).
    pub warnings: Vec<Finding>,
}

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The file is empty.
    #[error("the uploaded file is empty")]
    Empty,
    /// The analysis found errors; nothing was stored.
    #[error("the G-code has {} error finding(s); first: {}", .0.len(), .0.first().map_or("", |f| f.message.as_str()))]
    Findings(Vec<Finding>),
}

/// Analyses `bytes` (on a blocking thread: a large file takes a while).
pub async fn analyse(bytes: Vec<u8>) -> Result<Analysed, Refused> {
    analyse_against(bytes, None).await
}

/// Analyses `bytes` and, with a machine profile, checks them against its limits too (build
/// volume, temperatures, spindle, tools): any error refuses the file.
pub async fn analyse_against(
    bytes: Vec<u8>,
    profile: Option<gcode::MachineProfile>,
) -> Result<Analysed, Refused> {
    if bytes.is_empty() {
        return Err(Refused::Empty);
    }
    tokio::task::spawn_blocking(move || analyse_now(bytes, profile.as_ref()))
        .await
        .expect("the analysis does not panic")
}

fn analyse_now(
    bytes: Vec<u8>,
    profile: Option<&gcode::MachineProfile>,
) -> Result<Analysed, Refused> {
    let analysis = gcode::analyze_bytes(&bytes, profile);
    let findings = analysis.wire_findings();
    if analysis.is_refused() {
        return Err(Refused::Findings(
            findings
                .into_iter()
                .filter(|f| f.severity == munifab_protocol::Severity::Error)
                .collect(),
        ));
    }
    Ok(Analysed {
        requirements: analysis.requirements(),
        summary: analysis.summary(None),
        warnings: findings,
        bytes,
    })
}
