//! The job lifecycle: states and the one transition rule every state change goes through.
//!
//! ```text
//! submitted → queued → assigned(epoch) → accepted → transferring → running ⇄ paused
//!           → completed | failed | cancelled
//! assigned | accepted | transferring → rejected → queued | failed
//! assigned … paused → lost → queued | failed, or back to the agent's report
//! ```
//!
//! Agent events may skip forward (an agent that was offline replays `started` and
//! `completed` together, and a dropped `transferring` is harmless), but never backward, and
//! a terminal job never moves again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Stored, not yet eligible for placement.
    Submitted,
    /// Waiting for a machine.
    Queued,
    /// Sent to a machine under a new epoch; no answer yet.
    Assigned,
    /// The agent's preflight accepted it.
    Accepted,
    /// The agent is downloading the G-code.
    Transferring,
    /// The machine is running it.
    Running,
    /// Paused on the machine.
    Paused,
    /// Finished successfully (terminal).
    Completed,
    /// Ended in failure (terminal).
    Failed,
    /// Cancelled (terminal).
    Cancelled,
    /// The agent refused it; it goes back to the queue or fails.
    Rejected,
    /// Its agent stayed offline beyond the grace period.
    Lost,
}

impl JobState {
    /// Every state, in lifecycle order (for metrics and docs).
    pub const ALL: [JobState; 12] = [
        JobState::Submitted,
        JobState::Queued,
        JobState::Assigned,
        JobState::Accepted,
        JobState::Transferring,
        JobState::Running,
        JobState::Paused,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Rejected,
        JobState::Lost,
    ];

    /// The name used in the database, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "submitted",
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Accepted => "accepted",
            JobState::Transferring => "transferring",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Rejected => "rejected",
            JobState::Lost => "lost",
        }
    }

    /// No move leaves this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// A machine holds the job (it was assigned and has not ended or been lost).
    pub fn is_on_machine(self) -> bool {
        matches!(
            self,
            JobState::Assigned
                | JobState::Accepted
                | JobState::Transferring
                | JobState::Running
                | JobState::Paused
        )
    }

    /// Whether `self → to` is a legal move. This is the whole lifecycle graph.
    pub fn can_move_to(self, to: JobState) -> bool {
        use JobState::*;
        match self {
            Submitted => matches!(to, Queued | Failed | Cancelled),
            Queued => matches!(to, Assigned | Failed | Cancelled),
            Assigned => matches!(
                to,
                Accepted
                    | Rejected
                    | Transferring
                    | Running
                    | Paused
                    | Completed
                    | Failed
                    | Cancelled
                    | Lost
            ),
            // An agent refuses a job it accepted once the download fails or the file fails
            // its checksum or preflight (`accepted`, `transferring`, `rejected`).
            Accepted => matches!(
                to,
                Rejected | Transferring | Running | Paused | Completed | Failed | Cancelled | Lost
            ),
            Transferring => matches!(
                to,
                Rejected | Running | Paused | Completed | Failed | Cancelled | Lost
            ),
            Running => matches!(to, Paused | Completed | Failed | Cancelled | Lost),
            Paused => matches!(to, Running | Completed | Failed | Cancelled | Lost),
            Rejected => matches!(to, Queued | Failed),
            // A lost job is requeued or failed by policy, or its agent comes back and its
            // report (same epoch) wins.
            Lost => matches!(
                to,
                Queued | Failed | Cancelled | Assigned | Running | Paused | Completed
            ),
            // (Queued → Assigned also covers a requeued lost job whose own agent comes
            // back with the same epoch before it was reassigned.)
            Completed | Failed | Cancelled => false,
        }
    }

    /// Checks a move, naming both ends when it is illegal.
    pub fn transition(self, to: JobState) -> Result<JobState, IllegalMove> {
        if self.can_move_to(to) {
            Ok(to)
        } else {
            Err(IllegalMove { from: self, to })
        }
    }
}

/// A move the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot become {to}")]
pub struct IllegalMove {
    /// The state the job is in.
    pub from: JobState,
    /// The state that was asked for.
    pub to: JobState,
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not a [`JobState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_legal_step_by_step() {
        use JobState::*;
        let path = [
            Submitted,
            Queued,
            Assigned,
            Accepted,
            Transferring,
            Running,
            Paused,
            Running,
            Completed,
        ];
        for pair in path.windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn terminal_states_never_move() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobState::ALL {
                assert!(from.transition(to).is_err(), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn running_cannot_go_back_to_the_queue_without_being_lost() {
        let err = JobState::Running.transition(JobState::Queued).unwrap_err();
        assert_eq!(err.to_string(), "a running job cannot become queued");
        assert!(JobState::Running.can_move_to(JobState::Lost));
        assert!(JobState::Lost.can_move_to(JobState::Queued));
    }

    #[test]
    fn an_agent_may_refuse_a_job_until_it_starts_running() {
        use JobState::*;
        for from in [Assigned, Accepted, Transferring] {
            assert_eq!(from.transition(Rejected), Ok(Rejected), "{from}");
        }
        for from in [Running, Paused, Completed, Queued] {
            assert!(from.transition(Rejected).is_err(), "{from}");
        }
    }

    #[test]
    fn a_rejected_job_goes_back_to_the_queue_or_fails_only() {
        let ok: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|to| JobState::Rejected.can_move_to(*to))
            .collect();
        assert_eq!(ok, vec![JobState::Queued, JobState::Failed]);
    }

    #[test]
    fn state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("running ".parse::<JobState>().is_err());
    }
}
