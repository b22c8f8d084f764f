//! The serial transport: one tokio task owns the byte stream (a serial port, a pty, an
//! in-memory duplex) and drives a sans-IO [`Session`] with it; everyone else holds a cloneable
//! [`BridgeHandle`] that sends requests over a channel and awaits a oneshot reply.
//!
//! The task loop is thin on purpose: pull job lines while the session wants them, write what
//! the session hands out (most urgent first), and wait on three things at once — bytes from
//! the firmware, a request, the session's deadline. Time comes from tokio's clock, so tests
//! can pause it.

mod serial;

use std::io;
use std::time::Instant;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use self::serial::{
    DtrPolicy, PortSettings, SerialPortInfo, list_by_id, open_serial, resolve_port,
};
use crate::session::detect::{DetectConfig, DetectError, Detector, Family};
use crate::session::{Command, CommandError, Event, JobOptions, Session, Stats};

/// Job lines come from any buffered reader (a file, a pipe, memory), a line at a time.
pub type JobSource = Box<dyn AsyncBufRead + Send + Unpin>;

/// What the transport reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeEvent {
    /// Something the session reported.
    Session(Event),
    /// The byte stream ended or failed (device unplugged, pty closed). The task has stopped.
    Disconnected {
        /// The last job line (file line) the firmware acknowledged.
        last_acked_line: Option<u64>,
        /// What the operating system said.
        reason: String,
    },
    /// Reading the job file failed; the job was cancelled.
    JobSourceFailed(String),
}

/// Why a request to the bridge failed.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The session refused the command.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// The transport task has stopped (disconnected or shut down).
    #[error("the serial link is closed")]
    Closed,
}

#[derive(Debug)]
enum Request {
    Command(Command, oneshot::Sender<Result<(), CommandError>>),
    StartJob(
        JobOptions,
        JobSourceCell,
        oneshot::Sender<Result<(), CommandError>>,
    ),
    Stats(oneshot::Sender<Stats>),
    Shutdown,
}

/// `JobSource` is not `Debug`; this wrapper is.
struct JobSourceCell(JobSource);

impl std::fmt::Debug for JobSourceCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobSource")
    }
}

/// A cloneable handle on a running bridge task.
#[derive(Debug, Clone)]
pub struct BridgeHandle {
    requests: mpsc::Sender<Request>,
}

impl BridgeHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, BridgeError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| BridgeError::Closed)?;
        rx.await.map_err(|_| BridgeError::Closed)
    }

    /// Apply a command (pause, resume, cancel, emergency stop, a console line).
    pub async fn command(&self, command: Command) -> Result<(), BridgeError> {
        Ok(self.ask(|tx| Request::Command(command, tx)).await??)
    }

    /// Start streaming `source` as a job.
    pub async fn start_job(
        &self,
        options: JobOptions,
        source: JobSource,
    ) -> Result<(), BridgeError> {
        Ok(self
            .ask(|tx| Request::StartJob(options, JobSourceCell(source), tx))
            .await??)
    }

    /// The session's counters.
    pub async fn stats(&self) -> Result<Stats, BridgeError> {
        self.ask(Request::Stats).await
    }

    /// Stop the task; the stream is closed when it ends.
    pub async fn shutdown(&self) {
        let _ = self.requests.send(Request::Shutdown).await;
    }
}

/// A running bridge: its handle, its events and the task itself.
#[derive(Debug)]
pub struct Bridge {
    /// Talk to the task.
    pub handle: BridgeHandle,
    /// Everything the task reports, in order; ends when the task stops.
    pub events: mpsc::UnboundedReceiver<BridgeEvent>,
    /// The task; yields the session's final counters when it ends.
    pub task: JoinHandle<Stats>,
}

/// Spawn the task that owns `stream` and drives `session` with it.
pub fn spawn<S, IO>(session: S, stream: IO) -> Bridge
where
    S: Session + Send + 'static,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (requests, rx) = mpsc::channel(16);
    let (events_tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut session = session;
        drive(&mut session, stream, rx, events_tx).await;
        session.stats()
    });
    Bridge {
        handle: BridgeHandle { requests },
        events,
        task,
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Read chunk size: a USB serial adapter hands over at most a few hundred bytes at a time.
const READ_CHUNK: usize = 1024;

async fn drive<S, IO>(
    session: &mut S,
    stream: IO,
    mut requests: mpsc::Receiver<Request>,
    events: mpsc::UnboundedSender<BridgeEvent>,
) where
    S: Session + ?Sized,
    IO: AsyncRead + AsyncWrite,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut job: Option<JobSource> = None;
    let mut line = String::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let disconnected = |session: &S, reason: String| BridgeEvent::Disconnected {
        last_acked_line: session.last_acked_job_line(),
        reason,
    };
    loop {
        // Feed the job while the session wants lines; a file read is quick.
        while let Some(source) = job.as_mut() {
            if !session.wants_job_line() {
                break;
            }
            line.clear();
            match source.read_line(&mut line).await {
                Ok(0) => {
                    session.end_job_input();
                    job = None;
                }
                Ok(_) => {
                    if let Err(e) = session.push_job_line(&line) {
                        let _ = events.send(BridgeEvent::JobSourceFailed(e.to_string()));
                        let _ = session.handle_command(now(), Command::Cancel);
                        job = None;
                    }
                }
                Err(e) => {
                    let _ = events.send(BridgeEvent::JobSourceFailed(e.to_string()));
                    let _ = session.handle_command(now(), Command::Cancel);
                    job = None;
                }
            }
        }
        while let Some(bytes) = session.poll_transmit(now()) {
            tracing::trace!(bytes = %String::from_utf8_lossy(&bytes).escape_debug(), "to firmware");
            if let Err(e) = write_all(&mut writer, &bytes).await {
                let _ = events.send(disconnected(session, e.to_string()));
                return;
            }
        }
        while let Some(event) = session.poll_event() {
            let _ = events.send(BridgeEvent::Session(event));
        }
        let deadline = session.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            request = requests.recv() => match request {
                None | Some(Request::Shutdown) => return,
                Some(Request::Command(command, reply)) => {
                    let _ = reply.send(session.handle_command(now(), command));
                }
                Some(Request::StartJob(options, JobSourceCell(source), reply)) => {
                    let result = session.handle_command(now(), Command::StartJob(options));
                    if result.is_ok() {
                        job = Some(source);
                    }
                    let _ = reply.send(result);
                }
                Some(Request::Stats(reply)) => {
                    let _ = reply.send(session.stats());
                }
            },
            read = reader.read(&mut buf) => match read {
                Ok(0) => {
                    let _ = events.send(disconnected(session, "end of stream (device gone)".into()));
                    return;
                }
                Ok(n) => {
                    tracing::trace!(bytes = %String::from_utf8_lossy(&buf[..n]).escape_debug(), "from firmware");
                    session.handle_input(now(), &buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = events.send(disconnected(session, e.to_string()));
                    return;
                }
            },
            () = sleep => session.handle_timeout(now()),
        }
    }
}

/// Why the firmware on a stream could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// Nothing recognisable answered.
    #[error(transparent)]
    Unrecognised(#[from] DetectError),
    /// The stream failed or ended.
    #[error("the link failed while identifying the firmware: {0}")]
    Io(#[from] io::Error),
}

/// Tell Marlin from GRBL on `stream` (see [`crate::session::detect`]), leaving the stream
/// ready for the session of that family: every probe has been answered by then.
pub async fn identify_family<IO>(
    stream: &mut IO,
    config: DetectConfig,
) -> Result<Family, IdentifyError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut detector = Detector::new(config, now());
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if let Some(outcome) = detector.outcome() {
            return Ok(outcome?);
        }
        if let Some(bytes) = detector.poll_transmit() {
            tracing::trace!(bytes = %String::from_utf8_lossy(&bytes).escape_debug(), "probe");
            write_all(stream, &bytes).await?;
        }
        let deadline = detector.poll_timeout();
        tokio::select! {
            read = stream.read(&mut buf) => match read? {
                0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of stream (device gone)").into()),
                n => detector.handle_input(now(), &buf[..n]),
            },
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            } => detector.handle_timeout(now()),
        }
    }
}

/// A serial port drains at its baud rate whatever the device does, so a write that cannot
/// finish in this time means the device or driver is gone.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> io::Result<()> {
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")))
}

#[cfg(test)]
mod tests;
