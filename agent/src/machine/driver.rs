//! The machine task: opens the link and hands it to the firmware bridge's transport (one
//! task owning the port and driving the sans-IO host session), feeds it the job file, turns
//! the bridge's events into [`MachineEvent`]s, and reconnects when the link drops.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use munifab_firmware_bridge::session::grbl::{GrblConfig, GrblSession};
use munifab_firmware_bridge::session::marlin::{MarlinConfig, MarlinSession};
use munifab_firmware_bridge::session::{
    Command as SessionCommand, Event as SessionEvent, HostAction, JobOptions, JobOutcome,
    Telemetry as SessionTelemetry,
};
use munifab_firmware_bridge::transport::{
    self, Bridge, BridgeEvent, BridgeHandle, DtrPolicy, PortSettings,
};
use munifab_firmware_bridge::virtual_machine::{self as vm, VmHandle};
use munifab_protocol::{Flavour, JobSummary, Temperature, Vec3};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Control, MachineError, MachineEvent, Outcome, Snapshot};
use crate::backoff::Backoff;
use crate::config::{MachineSettings, PortSpec, Scripts, VirtualKind};

/// How often progress is read from the bridge while a job streams.
const PROGRESS_POLL: Duration = Duration::from_millis(250);

/// How a connection ended.
enum Exit {
    /// Close requested: the task ends.
    Closed,
    /// The link failed; reconnect.
    Lost(String),
}

pub(super) async fn run(
    settings: MachineSettings,
    mut control: mpsc::Receiver<Control>,
    events: mpsc::Sender<MachineEvent>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let reason = match open(&settings) {
            Ok((bridge, vm)) => {
                let mut conn = Connection::new(&settings, bridge.handle, &events);
                let exit = conn.drive(bridge.events, &mut control).await;
                conn.handle.shutdown().await;
                drop(vm);
                match exit {
                    Exit::Closed => return,
                    Exit::Lost(reason) => {
                        if conn.connected_once {
                            backoff.reset();
                        }
                        reason
                    }
                }
            }
            Err(e) => e.to_string(),
        };
        let _ = events
            .send(MachineEvent::Disconnected {
                reason: reason.clone(),
            })
            .await;
        let delay = backoff.next_delay(fastrand::f64());
        tracing::debug!(machine = %settings.id, %reason, retry_in = ?delay, "machine link down");
        let until = Instant::now() + delay;
        // Serve requests while waiting, so nobody hangs on a disconnected machine.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                c = control.recv() => match c {
                    None => return,
                    Some(Control::Close(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    // Not connected: the next attempt is already a fresh connection.
                    Some(Control::Reconnect(r)) => {
                        let _ = r.send(Ok(()));
                    }
                    Some(other) => refuse(other),
                },
            }
        }
    }
}

fn refuse(c: Control) {
    match c {
        Control::Start(_, _, r)
        | Control::Pause(r)
        | Control::Resume(r)
        | Control::Cancel(r)
        | Control::EmergencyStop(r)
        | Control::Reconnect(r) => {
            let _ = r.send(Err(MachineError::NotConnected));
        }
        Control::Close(done) => {
            let _ = done.send(());
        }
    }
}

/// Opens the machine's port (for a virtual machine, starts it on a pseudo-terminal first)
/// and starts the bridge's transport on it with the firmware's host session.
fn open(settings: &MachineSettings) -> Result<(Bridge, Option<VmHandle>), MachineError> {
    let err = |port: &str, e: &dyn std::fmt::Display| MachineError::Open {
        port: port.to_string(),
        message: e.to_string(),
    };
    let (path, vm) = match &settings.port {
        PortSpec::Serial(path) => (path.clone(), None),
        PortSpec::Virtual(kind) => {
            let opts = settings.virtual_options;
            let firmware = match kind {
                VirtualKind::Marlin => vm::FirmwareConfig::Marlin(vm::MarlinConfig {
                    speed: opts.speed,
                    ..vm::MarlinConfig::default()
                }),
                VirtualKind::Grbl => vm::FirmwareConfig::Grbl(vm::GrblConfig {
                    speed: opts.speed,
                    ..vm::GrblConfig::default()
                }),
            };
            let config = vm::VmConfig {
                firmware,
                baud: if opts.paced { settings.baud } else { 0 },
                faults: vm::FaultConfig::default(),
            };
            let name = format!("virtual:{kind:?}").to_lowercase();
            let handle = vm::spawn_on_pty(config, None).map_err(|e| err(&name, &e))?;
            let path = handle
                .slave_path()
                .map(PathBuf::from)
                .ok_or_else(|| err(&name, &"no pseudo-terminal"))?;
            (path, Some(handle))
        }
    };
    let stream = transport::open_serial(&PortSettings {
        path: path.clone(),
        baud: settings.baud,
        dtr: DtrPolicy::Raise,
        rts: None,
    })
    .map_err(|e| err(&path.display().to_string(), &e))?;
    let now = Instant::now().into_std();
    let bridge = match settings.firmware.flavour() {
        Flavour::Reprap => {
            let mut c = MarlinConfig::default();
            if !settings.scripts.cancel.is_empty() {
                c.end_script = settings.scripts.cancel.clone();
            }
            transport::spawn(MarlinSession::new(c, now), stream)
        }
        Flavour::Grbl => {
            let mut c = GrblConfig::default();
            if !settings.scripts.cancel.is_empty() {
                c.end_script = settings.scripts.cancel.clone();
            }
            transport::spawn(GrblSession::new(c, now), stream)
        }
    };
    Ok((bridge, vm))
}

/// Where the lines of the file end, for lines not yet acknowledged: turns the bridge's
/// acknowledged-line count into file lines and bytes.
#[derive(Debug, Default)]
struct LineIndex {
    /// (job line as the session counts it, file bytes up to and including it).
    ends: VecDeque<(u64, u64)>,
    /// Job lines handed to the session so far (start script included).
    lines: u64,
    /// Lines of the file itself.
    file_lines: u64,
    file_bytes: u64,
}

/// The job as the session reads it: start script, the file, end script. Reads the local
/// file synchronously (a buffered block at a time, local disk) and records where each file
/// line ends as the bridge consumes it.
struct JobReader {
    start: Cursor<Vec<u8>>,
    file: BufReader<File>,
    end: Cursor<Vec<u8>>,
    phase: u8,
    index: Arc<Mutex<LineIndex>>,
    /// A partial line consumed so far (lines may be consumed in pieces).
    partial: u64,
}

fn script(lines: &[String]) -> Cursor<Vec<u8>> {
    Cursor::new(
        lines
            .iter()
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect(),
    )
}

impl JobReader {
    fn current(&mut self) -> &mut dyn BufRead {
        match self.phase {
            0 => &mut self.start,
            1 => &mut self.file,
            _ => &mut self.end,
        }
    }
}

impl AsyncRead for JobReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = match Pin::new(&mut *this).poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => {
                let n = data.len().min(buf.remaining());
                buf.put_slice(&data[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        Pin::new(this).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for JobReader {
    fn poll_fill_buf(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            let empty = match this.current().fill_buf() {
                Ok(b) => b.is_empty(),
                Err(e) => return Poll::Ready(Err(e)),
            };
            if !empty || this.phase >= 2 {
                break;
            }
            this.phase += 1;
        }
        Poll::Ready(this.current().fill_buf())
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        let mut index = this.index.lock().expect("line index lock");
        let data: &[u8] = match this.phase {
            0 => &this.start.get_ref()[this.start.position() as usize..],
            1 => this.file.buffer(),
            _ => &this.end.get_ref()[this.end.position() as usize..],
        };
        for &b in &data[..amt.min(data.len())] {
            this.partial += 1;
            if b == b'\n' {
                index.lines += 1;
                if this.phase == 1 {
                    index.file_lines += 1;
                    index.file_bytes += this.partial;
                    let entry = (index.lines, index.file_bytes);
                    index.ends.push_back(entry);
                }
                this.partial = 0;
            }
        }
        drop(index);
        match this.phase {
            0 => this.start.consume(amt),
            1 => this.file.consume(amt),
            _ => this.end.consume(amt),
        }
    }
}

/// Progress of the running job.
struct Job {
    index: Arc<Mutex<LineIndex>>,
    start_lines: u64,
    total_bytes: u64,
    acked_bytes: u64,
    acked_file_line: u64,
    resends_baseline: u64,
    reported: u64,
    started: Instant,
    source_failed: Option<String>,
}

impl Job {
    /// Records that the session acknowledged `acked` job lines.
    fn acked(&mut self, acked: u64) {
        let mut index = self.index.lock().expect("line index lock");
        while let Some((line, bytes)) = index.ends.front().copied() {
            if line > acked {
                break;
            }
            self.acked_bytes = bytes;
            self.acked_file_line = line - self.start_lines;
            index.ends.pop_front();
        }
    }

    fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            100.0
        } else {
            (self.acked_bytes as f64 * 100.0 / self.total_bytes as f64).min(100.0)
        }
    }

    fn file_lines(&self) -> u64 {
        self.index.lock().expect("line index lock").file_lines
    }
}

struct Connection<'a> {
    settings: &'a MachineSettings,
    handle: BridgeHandle,
    events: &'a mpsc::Sender<MachineEvent>,
    job: Option<Job>,
    snapshot: Snapshot,
    connected_once: bool,
}

impl<'a> Connection<'a> {
    fn new(
        settings: &'a MachineSettings,
        handle: BridgeHandle,
        events: &'a mpsc::Sender<MachineEvent>,
    ) -> Self {
        Self {
            settings,
            handle,
            events,
            job: None,
            snapshot: Snapshot::default(),
            connected_once: false,
        }
    }

    async fn drive(
        &mut self,
        mut bridge: mpsc::UnboundedReceiver<BridgeEvent>,
        control: &mut mpsc::Receiver<Control>,
    ) -> Exit {
        let mut tick = tokio::time::interval(PROGRESS_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = bridge.recv() => match ev {
                    Some(BridgeEvent::Session(ev)) => {
                        if let Some(exit) = self.event(ev).await {
                            return exit;
                        }
                    }
                    Some(BridgeEvent::Disconnected { last_acked_line, reason }) => {
                        return self.lost(format!("serial link lost: {reason}"), last_acked_line).await;
                    }
                    Some(BridgeEvent::JobSourceFailed(reason)) => {
                        tracing::warn!(machine = %self.settings.id, %reason, "job file could not be streamed");
                        if let Some(job) = self.job.as_mut() {
                            job.source_failed = Some(reason);
                        }
                    }
                    None => return self.lost("bridge task stopped".into(), None).await,
                },
                _ = tick.tick(), if self.job.is_some() => self.progress().await,
                c = control.recv() => match c {
                    None => return Exit::Closed,
                    Some(Control::Close(done)) => {
                        let _ = done.send(());
                        return Exit::Closed;
                    }
                    Some(Control::Reconnect(r)) => {
                        let _ = r.send(Ok(()));
                        return self.lost("reconnect requested".into(), None).await;
                    }
                    Some(c) => self.control(c).await,
                },
            }
        }
    }

    /// Reads the acknowledged-line count and reports progress when it moved.
    async fn progress(&mut self) {
        let Ok(stats) = self.handle.stats().await else {
            return;
        };
        let Some(job) = self.job.as_mut() else {
            return;
        };
        // The session counts acknowledged lines per job (reset at each start).
        let acked = stats.job_lines_acked;
        if acked <= job.reported {
            return;
        }
        job.reported = acked;
        job.acked(acked);
        let (line, bytes, percent) = (job.acked_file_line, job.acked_bytes, job.percent());
        self.snapshot.line = Some(line);
        self.snapshot.percent = Some(percent);
        let _ = self
            .events
            .send(MachineEvent::Progress {
                line,
                bytes,
                percent,
            })
            .await;
    }

    async fn control(&mut self, c: Control) {
        let refused = |e: transport::BridgeError| match e {
            transport::BridgeError::Closed => MachineError::NotConnected,
            other => MachineError::Refused(other.to_string()),
        };
        match c {
            Control::Start(path, scripts, reply) => {
                let res = self.start(&path, &scripts).await.map_err(|e| match e {
                    StartError::File(e) => {
                        MachineError::Refused(format!("cannot open {}: {e}", path.display()))
                    }
                    StartError::Bridge(e) => refused(e),
                    StartError::Busy => MachineError::Refused("a job is already running".into()),
                });
                let _ = reply.send(res);
            }
            Control::Pause(r) => {
                let _ = r.send(
                    self.handle
                        .command(SessionCommand::Pause)
                        .await
                        .map_err(refused),
                );
            }
            Control::Resume(r) => {
                let _ = r.send(
                    self.handle
                        .command(SessionCommand::Resume)
                        .await
                        .map_err(refused),
                );
            }
            Control::Cancel(r) => {
                let _ = r.send(
                    self.handle
                        .command(SessionCommand::Cancel)
                        .await
                        .map_err(refused),
                );
            }
            Control::EmergencyStop(r) => {
                let res = self.handle.command(SessionCommand::EmergencyStop).await;
                let _ = r.send(res.map_err(refused));
            }
            Control::Reconnect(r) => {
                let _ = r.send(Ok(()));
            }
            Control::Close(done) => {
                let _ = done.send(());
            }
        }
    }

    async fn start(&mut self, path: &PathBuf, scripts: &Scripts) -> Result<(), StartError> {
        if self.job.is_some() {
            return Err(StartError::Busy);
        }
        let file = File::open(path).map_err(StartError::File)?;
        let total_bytes = file.metadata().map_err(StartError::File)?.len();
        let index = Arc::new(Mutex::new(LineIndex::default()));
        let reader = JobReader {
            start: script(&scripts.start),
            file: BufReader::with_capacity(16 * 1024, file),
            end: script(&scripts.end),
            phase: 0,
            index: index.clone(),
            partial: 0,
        };
        let stats = self.handle.stats().await.map_err(StartError::Bridge)?;
        self.handle
            .start_job(JobOptions::default(), Box::new(reader))
            .await
            .map_err(StartError::Bridge)?;
        self.job = Some(Job {
            index,
            start_lines: scripts.start.len() as u64,
            total_bytes,
            acked_bytes: 0,
            acked_file_line: 0,
            resends_baseline: stats.resends,
            reported: 0,
            started: Instant::now(),
            source_failed: None,
        });
        Ok(())
    }

    async fn event(&mut self, ev: SessionEvent) -> Option<Exit> {
        let id = &self.settings.id;
        match ev {
            SessionEvent::Connected(info) => {
                self.connected_once = true;
                let _ = self
                    .events
                    .send(MachineEvent::Connected {
                        firmware: info.name,
                    })
                    .await;
            }
            SessionEvent::Telemetry(t) => {
                self.telemetry(t);
                let _ = self
                    .events
                    .try_send(MachineEvent::Telemetry(self.snapshot.clone()));
            }
            SessionEvent::Message(m) => tracing::debug!(machine = %id, message = %m, "firmware"),
            SessionEvent::Line(l) => tracing::trace!(machine = %id, line = %l, "firmware"),
            SessionEvent::HostAction(a) => {
                tracing::info!(machine = %id, action = ?a, "firmware host action");
                let cmd = match a {
                    HostAction::Pause => Some(SessionCommand::Pause),
                    HostAction::Resume => Some(SessionCommand::Resume),
                    HostAction::Cancel => Some(SessionCommand::Cancel),
                    _ => None,
                };
                if let Some(cmd) = cmd
                    && self.job.is_some()
                {
                    let _ = self.handle.command(cmd).await;
                }
            }
            SessionEvent::Resend { line } => {
                tracing::debug!(machine = %id, line, "firmware asked for a resend")
            }
            SessionEvent::LineRejected {
                source_line,
                code,
                meaning,
            } => {
                tracing::warn!(machine = %id, source_line, code, meaning, "firmware rejected a line")
            }
            SessionEvent::Alarm { code, meaning } => {
                tracing::warn!(machine = %id, code, meaning, "firmware alarm")
            }
            SessionEvent::FirmwareReset => tracing::warn!(machine = %id, "firmware reset"),
            SessionEvent::Paused => {
                let _ = self.events.send(MachineEvent::Paused).await;
            }
            SessionEvent::Resumed => {
                let _ = self.events.send(MachineEvent::Resumed).await;
            }
            SessionEvent::JobFinished(outcome) => {
                // Settle the final acknowledged position before reporting the end.
                self.progress().await;
                let mut job = self.job.take()?;
                let summary = self.summary(&job).await;
                let failed = |reason: String, job: &Job| Outcome::Failed {
                    reason,
                    line: Some(job.acked_file_line),
                    summary: Some(summary.clone()),
                };
                let outcome = match outcome {
                    JobOutcome::Completed => {
                        job.acked_bytes = job.total_bytes;
                        Outcome::Completed(JobSummary {
                            bytes: job.total_bytes,
                            ..summary.clone()
                        })
                    }
                    JobOutcome::Cancelled => match job.source_failed.take() {
                        Some(reason) => failed(format!("job file: {reason}"), &job),
                        None => Outcome::Cancelled,
                    },
                    JobOutcome::Failed(reason) => failed(reason, &job),
                    JobOutcome::EmergencyStopped => failed("emergency stop".into(), &job),
                };
                let _ = self.events.send(MachineEvent::Finished(outcome)).await;
            }
            SessionEvent::Failed(e) => return Some(self.lost(e.to_string(), None).await),
        }
        None
    }

    fn telemetry(&mut self, t: SessionTelemetry) {
        match t {
            SessionTelemetry::Temperatures(hs) => {
                self.snapshot.temperatures = hs
                    .into_iter()
                    .map(|h| Temperature {
                        sensor: h.name,
                        actual: h.current,
                        target: h.target,
                    })
                    .collect();
            }
            SessionTelemetry::Position(p) => {
                self.snapshot.position = Some(Vec3 {
                    x: p.x.unwrap_or_default(),
                    y: p.y.unwrap_or_default(),
                    z: p.z.unwrap_or_default(),
                });
            }
            SessionTelemetry::Status(s) => {
                self.snapshot.firmware_state = Some(format!("{:?}", s.state));
                self.snapshot.feed_mm_min = s.feed.or(self.snapshot.feed_mm_min);
                self.snapshot.spindle_rpm = s.spindle.or(self.snapshot.spindle_rpm);
                if let Some(p) = s.wpos.as_ref().or(s.mpos.as_ref()) {
                    self.snapshot.position = Some(Vec3 {
                        x: p.first().copied().unwrap_or_default(),
                        y: p.get(1).copied().unwrap_or_default(),
                        z: p.get(2).copied().unwrap_or_default(),
                    });
                }
            }
        }
    }

    async fn summary(&self, job: &Job) -> JobSummary {
        let resends = match self.handle.stats().await {
            Ok(s) => s.resends.saturating_sub(job.resends_baseline),
            Err(_) => 0,
        };
        JobSummary {
            lines: job.file_lines(),
            bytes: job.acked_bytes,
            seconds: job.started.elapsed().as_secs_f64(),
            resends,
        }
    }

    /// The link is unusable: a running job fails at the last acknowledged line.
    async fn lost(&mut self, reason: String, last_acked: Option<u64>) -> Exit {
        if let Some(mut job) = self.job.take() {
            if let Some(acked) = last_acked {
                job.acked(acked);
            }
            let summary = JobSummary {
                lines: job.file_lines(),
                bytes: job.acked_bytes,
                seconds: job.started.elapsed().as_secs_f64(),
                resends: 0,
            };
            let _ = self
                .events
                .send(MachineEvent::Finished(Outcome::Failed {
                    reason: reason.clone(),
                    line: Some(job.acked_file_line),
                    summary: Some(summary),
                }))
                .await;
        }
        Exit::Lost(reason)
    }
}

enum StartError {
    File(std::io::Error),
    Bridge(transport::BridgeError),
    Busy,
}
