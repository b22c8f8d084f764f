//! Pure job bookkeeping of one machine: may it take an assignment, which sequence number
//! does the next event get, is a progress event due. No IO and no clock: `now` is passed in.

use std::time::{Duration, Instant};

use munifab_protocol::{
    Assign, Capabilities, CurrentJob, Finding, JobId, JobRef, MachineId, MachineStatus,
    RejectReason, Severity,
};

/// Progress events are sent when this much progress accumulated…
pub const PROGRESS_STEP_PERCENT: f64 = 1.0;
/// …or this much time passed with any progress, whichever comes first.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Where a running job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Downloading and checking the artifact.
    Transferring,
    /// Lines are going to the firmware.
    Running,
    /// Paused by a command.
    Paused,
}

/// The job a machine holds.
#[derive(Debug, Clone)]
pub struct Run {
    job: JobId,
    machine: MachineId,
    epoch: u64,
    next_seq: u64,
    phase: Phase,
    gate: ProgressGate,
}

impl Run {
    /// A run whose first event (`accepted`) gets sequence number 0.
    pub fn new(job: JobId, machine: MachineId, epoch: u64) -> Self {
        Self {
            job,
            machine,
            epoch,
            next_seq: 0,
            phase: Phase::Transferring,
            gate: ProgressGate::default(),
        }
    }

    /// The reference for the next event, consuming its sequence number.
    pub fn next_ref(&mut self) -> JobRef {
        let seq = self.next_seq;
        self.next_seq += 1;
        JobRef {
            job: self.job,
            machine: self.machine.clone(),
            epoch: self.epoch,
            seq,
        }
    }

    /// The job.
    pub fn job(&self) -> JobId {
        self.job
    }

    /// The assignment epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Moves to `phase`.
    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    /// Whether a progress event should go out for `percent` at `now` (and records it if so).
    pub fn progress_due(&mut self, percent: f64, now: Instant) -> bool {
        self.gate.due(percent, now)
    }

    /// As announced in the machine state.
    pub fn current(&self) -> CurrentJob {
        CurrentJob {
            job: self.job,
            epoch: self.epoch,
        }
    }
}

/// Rate limit of progress events: at most every [`PROGRESS_STEP_PERCENT`] or
/// [`PROGRESS_INTERVAL`].
#[derive(Debug, Clone, Default)]
pub struct ProgressGate {
    last: Option<(f64, Instant)>,
}

impl ProgressGate {
    /// Whether `percent` at `now` is worth an event; remembers it when it is.
    pub fn due(&mut self, percent: f64, now: Instant) -> bool {
        let due = match self.last {
            None => percent > 0.0,
            Some((p, at)) => {
                percent >= p + PROGRESS_STEP_PERCENT
                    || (percent > p && now.duration_since(at) >= PROGRESS_INTERVAL)
                    || (percent >= 100.0 && p < 100.0)
            }
        };
        if due {
            self.last = Some((percent, now));
        }
        due
    }
}

/// Why an assignment is refused before anything is downloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The wire reason.
    pub reason: RejectReason,
    /// For people.
    pub message: String,
    /// Findings (unmet requirements), when the reason is `preflight_failed`.
    pub findings: Vec<Finding>,
}

/// Decides whether a machine in `status`, holding `current`, may take `assign`.
pub fn admit(
    assign: &Assign,
    status: MachineStatus,
    current: Option<&Run>,
    caps: &Capabilities,
) -> Result<(), Refusal> {
    let refuse = |reason, message: String| {
        Err(Refusal {
            reason,
            message,
            findings: Vec::new(),
        })
    };
    if let Some(run) = current {
        return refuse(
            RejectReason::Busy,
            format!("machine is running job {} (epoch {})", run.job, run.epoch),
        );
    }
    match status {
        MachineStatus::Ready => {}
        MachineStatus::Busy | MachineStatus::Paused => {
            return refuse(RejectReason::Busy, "machine is busy".into());
        }
        MachineStatus::NeedsAttention | MachineStatus::Idle => {
            return refuse(
                RejectReason::NotReady,
                "machine is not confirmed ready: an operator must clear it first".into(),
            );
        }
        MachineStatus::Offline => {
            return refuse(RejectReason::NotReady, "machine is not connected".into());
        }
        MachineStatus::Error => {
            return refuse(
                RejectReason::NotReady,
                "machine is in an error state and needs an operator".into(),
            );
        }
    }
    let unmet = assign.requirements.unmet_by(caps);
    if !unmet.is_empty() {
        return Err(Refusal {
            reason: RejectReason::PreflightFailed,
            message: unmet
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            findings: unmet
                .iter()
                .map(|u| Finding {
                    severity: Severity::Error,
                    code: "unmet_requirement".into(),
                    line: 0,
                    column: 0,
                    message: u.to_string(),
                })
                .collect(),
        });
    }
    Ok(())
}

/// The state a machine goes to when a job ends.
pub fn after_job(needs_confirmation: bool) -> MachineStatus {
    if needs_confirmation {
        MachineStatus::NeedsAttention
    } else {
        MachineStatus::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use munifab_protocol::{
        AnalysisSummary, Artifact, Box3, Firmware, Flavour, Process, Requirements, Vec3,
    };

    fn caps() -> Capabilities {
        Capabilities {
            process: Process::Fdm,
            firmware: Firmware::Marlin,
            build_volume: Box3 {
                min: Vec3::default(),
                max: Vec3 {
                    x: 200.0,
                    y: 200.0,
                    z: 200.0,
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

    fn assign(max_x: f64) -> Assign {
        Assign {
            job: JobId::random(),
            epoch: 1,
            machine: MachineId::new("mk3").unwrap(),
            artifact: Artifact {
                url: "http://x/a".into(),
                sha256: "0".repeat(64),
                size: 1,
            },
            requirements: Requirements {
                process: Process::Fdm,
                flavour: Flavour::Reprap,
                bounds: Some(Box3 {
                    min: Vec3::default(),
                    max: Vec3 {
                        x: max_x,
                        y: 10.0,
                        z: 10.0,
                    },
                }),
                hotend_temp_c: None,
                bed_temp_c: None,
                spindle_rpm: None,
                nozzle_diameter_mm: None,
                material: None,
                tools: 1,
            },
            analysis: AnalysisSummary::default(),
        }
    }

    #[test]
    fn only_a_ready_idle_machine_takes_a_fitting_job() {
        let a = assign(10.0);
        assert_eq!(admit(&a, MachineStatus::Ready, None, &caps()), Ok(()));
        for (status, reason) in [
            (MachineStatus::Idle, RejectReason::NotReady),
            (MachineStatus::NeedsAttention, RejectReason::NotReady),
            (MachineStatus::Offline, RejectReason::NotReady),
            (MachineStatus::Error, RejectReason::NotReady),
            (MachineStatus::Busy, RejectReason::Busy),
        ] {
            assert_eq!(
                admit(&a, status, None, &caps()).unwrap_err().reason,
                reason,
                "{status:?}"
            );
        }
        let run = Run::new(JobId::random(), a.machine.clone(), 1);
        assert_eq!(
            admit(&a, MachineStatus::Ready, Some(&run), &caps())
                .unwrap_err()
                .reason,
            RejectReason::Busy
        );
    }

    #[test]
    fn requirements_beyond_the_machine_are_a_preflight_refusal_with_findings() {
        let r = admit(&assign(500.0), MachineStatus::Ready, None, &caps()).unwrap_err();
        assert_eq!(r.reason, RejectReason::PreflightFailed);
        assert_eq!(r.findings.len(), 1);
        assert!(r.message.contains("500"), "{}", r.message);
    }

    #[test]
    fn sequence_numbers_start_at_zero_without_gaps() {
        let mut run = Run::new(JobId::random(), MachineId::new("m").unwrap(), 4);
        let seqs: Vec<u64> = (0..4).map(|_| run.next_ref().seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        assert_eq!(run.next_ref().epoch, 4);
    }

    #[test]
    fn progress_is_reported_per_percent_or_every_five_seconds() {
        let t0 = Instant::now();
        let mut g = ProgressGate::default();
        assert!(!g.due(0.0, t0));
        assert!(g.due(0.1, t0));
        assert!(!g.due(0.5, t0 + Duration::from_secs(1)));
        assert!(g.due(1.1, t0 + Duration::from_secs(2)));
        assert!(!g.due(1.2, t0 + Duration::from_secs(6)));
        assert!(g.due(1.3, t0 + Duration::from_secs(7)));
        assert!(
            !g.due(1.3, t0 + Duration::from_secs(60)),
            "no progress, no event"
        );
        assert!(g.due(100.0, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn a_finished_job_needs_attention_unless_confirmation_is_off() {
        assert_eq!(after_job(true), MachineStatus::NeedsAttention);
        assert_eq!(after_job(false), MachineStatus::Ready);
    }
}
