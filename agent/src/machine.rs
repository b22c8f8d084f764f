//! The agent's only contact with the firmware bridge: one task per machine owns its link
//! (a serial port, or a built-in virtual machine on a pseudo-terminal) and its host session;
//! a cloneable [`MachineHandle`] starts, pauses, resumes, cancels and stops jobs, and
//! [`MachineEvent`]s come back on a channel.

use std::path::PathBuf;

use munifab_protocol::{JobSummary, Temperature, Vec3};
use tokio::sync::{mpsc, oneshot};

use crate::config::{MachineSettings, Scripts};

/// Why a machine operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The machine task is gone (agent shutting down, or it crashed).
    #[error("machine task is not running")]
    Gone,
    /// The link to the firmware is down.
    #[error("machine is not connected")]
    NotConnected,
    /// The firmware session refused the request.
    #[error("{0}")]
    Refused(String),
    /// The link could not be opened.
    #[error("cannot open {port}: {message}")]
    Open {
        /// The port.
        port: String,
        /// What went wrong.
        message: String,
    },
}

/// Latest readings of a machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Temperatures.
    pub temperatures: Vec<Temperature>,
    /// Tool position.
    pub position: Option<Vec3>,
    /// Last acknowledged file line of the running job.
    pub line: Option<u64>,
    /// Job progress.
    pub percent: Option<f64>,
    /// Firmware state word (GRBL).
    pub firmware_state: Option<String>,
    /// Current feed, mm/min (GRBL status reports).
    pub feed_mm_min: Option<f64>,
    /// Current spindle speed, rpm (GRBL status reports).
    pub spindle_rpm: Option<f64>,
}

/// How a job ended on the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every line acknowledged.
    Completed(JobSummary),
    /// Cancelled on request (cancel script sent).
    Cancelled,
    /// Stopped on an error.
    Failed {
        /// What happened.
        reason: String,
        /// Last file line acknowledged, when known.
        line: Option<u64>,
        /// Figures up to the failure.
        summary: Option<JobSummary>,
    },
}

/// What a machine task reports.
#[derive(Debug, Clone, PartialEq)]
pub enum MachineEvent {
    /// The firmware answered the handshake.
    Connected {
        /// Its name and version.
        firmware: String,
    },
    /// The link is down.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// New readings.
    Telemetry(Snapshot),
    /// The firmware acknowledged more of the job.
    Progress {
        /// Last acknowledged file line.
        line: u64,
        /// Bytes of the file acknowledged.
        bytes: u64,
        /// 0–100.
        percent: f64,
    },
    /// Feeding stopped on request.
    Paused,
    /// Feeding continued.
    Resumed,
    /// The job ended.
    Finished(Outcome),
}

#[derive(Debug)]
enum Control {
    Start(PathBuf, Scripts, oneshot::Sender<Result<(), MachineError>>),
    Pause(oneshot::Sender<Result<(), MachineError>>),
    Resume(oneshot::Sender<Result<(), MachineError>>),
    Cancel(oneshot::Sender<Result<(), MachineError>>),
    EmergencyStop(oneshot::Sender<Result<(), MachineError>>),
    Reconnect(oneshot::Sender<Result<(), MachineError>>),
    Close(oneshot::Sender<()>),
}

/// Cloneable handle to a machine task.
#[derive(Debug, Clone)]
pub struct MachineHandle {
    tx: mpsc::Sender<Control>,
}

impl MachineHandle {
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), MachineError>>) -> Control,
    ) -> Result<(), MachineError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| MachineError::Gone)?;
        rx.await.map_err(|_| MachineError::Gone)?
    }

    /// Streams the verified file at `path`, wrapped in the machine's start and end scripts.
    pub async fn start(&self, path: PathBuf, scripts: Scripts) -> Result<(), MachineError> {
        self.ask(|tx| Control::Start(path, scripts, tx)).await
    }

    /// Stops feeding lines (the firmware finishes what it has buffered).
    pub async fn pause(&self) -> Result<(), MachineError> {
        self.ask(Control::Pause).await
    }

    /// Continues a paused job.
    pub async fn resume(&self) -> Result<(), MachineError> {
        self.ask(Control::Resume).await
    }

    /// Cancels the job and sends the cancel script.
    pub async fn cancel(&self) -> Result<(), MachineError> {
        self.ask(Control::Cancel).await
    }

    /// Halts the machine ahead of anything queued.
    pub async fn emergency_stop(&self) -> Result<(), MachineError> {
        self.ask(Control::EmergencyStop).await
    }

    /// Closes and reopens the link, which resets the firmware (DTR on real boards, a fresh
    /// virtual machine): the way out of a halted controller after an emergency stop.
    pub async fn reconnect(&self) -> Result<(), MachineError> {
        self.ask(Control::Reconnect).await
    }

    /// Closes the link and ends the task.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Control::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the task of one machine.
pub fn spawn(settings: &MachineSettings) -> (MachineHandle, mpsc::Receiver<MachineEvent>) {
    let (tx, rx) = mpsc::channel(16);
    let (ev_tx, ev_rx) = mpsc::channel(64);
    tokio::spawn(driver::run(settings.clone(), rx, ev_tx));
    (MachineHandle { tx }, ev_rx)
}

mod driver;
