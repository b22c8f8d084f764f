//! Runs a [`VirtualMachine`] in one tokio task that owns its byte stream (a pty or an
//! in-memory duplex); everyone else talks to it through a [`VmHandle`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::pty::{HostPresence, PtyLink, PtyOptions};
use super::{Executed, Fault, VirtualMachine, VmConfig, VmConfigError, VmEvent, VmStats};

/// Stop reading from the host once this much is still on the emulated wire, as a kernel
/// tty buffer would push back.
const MAX_BACKLOG: usize = 4096;
/// Output nobody reads (no host has the port open) is dropped beyond this.
const MAX_UNREAD_OUTPUT: usize = 64 * 1024;
const READ_CHUNK: usize = 4096;
/// How often a link that resets on open looks for a host opening or closing the port.
const PRESENCE_CHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// Why a virtual machine could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] VmConfigError),
    /// The pseudo-terminal could not be opened or set up.
    #[error("cannot set up a pseudo-terminal: {source}")]
    Pty {
        /// The OS error.
        source: io::Error,
    },
    /// The symlink to the pty slave could not be created.
    #[error("cannot link the virtual port at {}: {source}", path.display())]
    Link {
        /// Where the link was asked for.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Reading or writing the stream failed.
    #[error("virtual machine stream failed: {0}")]
    Io(#[source] io::Error),
    /// The machine's task has ended, so it can no longer be asked anything.
    #[error("the virtual machine has stopped")]
    Stopped,
}

#[derive(Debug)]
enum Control {
    Record(oneshot::Sender<Vec<Executed>>),
    Stats(oneshot::Sender<VmStats>),
    Inject(Fault),
    Print(String),
    Unplug,
}

/// A running virtual machine. Dropping the handle unplugs the machine.
#[derive(Debug)]
pub struct VmHandle {
    control: mpsc::Sender<Control>,
    task: JoinHandle<Result<Vec<Executed>, VmError>>,
    slave_path: Option<PathBuf>,
    link_path: Option<PathBuf>,
}

impl VmHandle {
    /// Every command executed so far, in order.
    pub async fn record(&self) -> Result<Vec<Executed>, VmError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Record(reply))
            .await
            .map_err(|_| VmError::Stopped)?;
        answer.await.map_err(|_| VmError::Stopped)
    }

    /// Line and fault counters.
    pub async fn stats(&self) -> Result<VmStats, VmError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Stats(reply))
            .await
            .map_err(|_| VmError::Stopped)?;
        answer.await.map_err(|_| VmError::Stopped)
    }

    /// Injects a fault now.
    pub async fn inject(&self, fault: Fault) -> Result<(), VmError> {
        self.control
            .send(Control::Inject(fault))
            .await
            .map_err(|_| VmError::Stopped)
    }

    /// Makes the firmware print `line` (a host action command such as `//action:pause`, or
    /// any message a host must cope with).
    pub async fn print_line(&self, line: impl Into<String>) -> Result<(), VmError> {
        self.control
            .send(Control::Print(line.into()))
            .await
            .map_err(|_| VmError::Stopped)
    }

    /// Pulls the cable: the stream closes (the host reads EOF/EIO), the symlink goes away.
    /// Returns the final record.
    pub async fn unplug(self) -> Result<Vec<Executed>, VmError> {
        // A machine that already stopped has nothing to unplug; its result is still there.
        let _ = self.control.send(Control::Unplug).await;
        self.finished().await
    }

    /// Waits until the machine stops on its own (the host closed an in-memory stream, or a
    /// [`Fault::Disconnect`]); returns the final record.
    pub async fn finished(self) -> Result<Vec<Executed>, VmError> {
        match self.task.await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(VmError::Stopped),
        }
    }

    /// The pty slave a host opens, for machines on a pseudo-terminal.
    pub fn slave_path(&self) -> Option<&Path> {
        self.slave_path.as_deref()
    }

    /// The symlink to the pty slave, if one was asked for.
    pub fn link_path(&self) -> Option<&Path> {
        self.link_path.as_deref()
    }
}

/// Runs a machine on any byte stream; the host holds the other end. Must run inside a
/// tokio runtime.
pub fn spawn_on_stream<S>(config: VmConfig, stream: S) -> Result<VmHandle, VmError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    spawn(config, stream, None)
}

fn spawn<S>(
    config: VmConfig,
    stream: S,
    presence: Option<HostPresence>,
) -> Result<VmHandle, VmError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let machine = VirtualMachine::new(config, now())?;
    let (control, requests) = mpsc::channel(16);
    let task = tokio::spawn(run(machine, stream, requests, presence));
    Ok(VmHandle {
        control,
        task,
        slave_path: None,
        link_path: None,
    })
}

/// A machine on an in-memory duplex; the returned stream is the host's end of the cable.
pub fn spawn_in_memory(config: VmConfig) -> Result<(VmHandle, DuplexStream), VmError> {
    let (host, machine) = tokio::io::duplex(READ_CHUNK);
    Ok((spawn_on_stream(config, machine)?, host))
}

/// A machine on a fresh pseudo-terminal, its slave symlinked at `link` if given; it never
/// resets when a host opens the port (see [`spawn_on_pty_with`]).
pub fn spawn_on_pty(config: VmConfig, link: Option<&Path>) -> Result<VmHandle, VmError> {
    let options = PtyOptions {
        link: link.map(Path::to_owned),
        reset_on_open: false,
    };
    spawn_on_pty_with(config, &options)
}

/// A machine on a fresh pseudo-terminal set up as `options` say.
pub fn spawn_on_pty_with(config: VmConfig, options: &PtyOptions) -> Result<VmHandle, VmError> {
    // Validate before creating anything on disk.
    VirtualMachine::new(config.clone(), now())?;
    let pty = PtyLink::open(options)?;
    let presence = pty.presence()?;
    let slave_path = pty.slave_path().to_owned();
    let link_path = pty.link_path().map(Path::to_owned);
    let mut handle = spawn(config, pty, presence)?;
    handle.slave_path = Some(slave_path);
    handle.link_path = link_path;
    Ok(handle)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn run<S>(
    mut machine: VirtualMachine,
    stream: S,
    mut requests: mpsc::Receiver<Control>,
    presence: Option<HostPresence>,
) -> Result<Vec<Executed>, VmError>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut input = vec![0u8; READ_CHUNK];
    let mut output: Vec<u8> = Vec::new();
    // Without a presence watcher a host is always there (a held pty slave, a duplex); with
    // one, a host found at the first check has just opened the port.
    let mut host_present = presence.is_none();
    let mut presence_check = tokio::time::interval(PRESENCE_CHECK);
    presence_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        while let Some(bytes) = machine.poll_transmit() {
            output.extend_from_slice(&bytes);
        }
        if !host_present {
            // Nobody listens on the USB side: what the firmware prints is gone.
            output.clear();
        } else if output.len() > MAX_UNREAD_OUTPUT {
            output.drain(..output.len() - MAX_UNREAD_OUTPUT);
        }
        if let Some(VmEvent::Unplugged) = machine.poll_event() {
            break;
        }
        let deadline = machine.poll_timeout();
        let reading = host_present && machine.in_transit_to_machine() < MAX_BACKLOG;
        tokio::select! {
            read = reader.read(&mut input), if reading => match read {
                // With a watcher, end of stream only means the host closed the port.
                Ok(0) if presence.is_some() => host_present = false,
                Ok(0) => break,
                Ok(n) => machine.handle_host_bytes(now(), &input[..n]),
                Err(e) => return Err(VmError::Io(e)),
            },
            written = writer.write(&output), if host_present && !output.is_empty() => match written {
                Ok(0) => break,
                Ok(n) => {
                    output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(VmError::Io(e)),
            },
            () = sleep_until(deadline), if deadline.is_some() => machine.handle_timeout(now()),
            _ = presence_check.tick(), if presence.is_some() => {
                let opened = presence.as_ref().is_some_and(HostPresence::opened);
                let present = presence.as_ref().is_some_and(HostPresence::host_present);
                if present && (opened || !host_present) {
                    // Opening the port pulses DTR, which reboots an Arduino-style board.
                    machine.hardware_reset(now());
                    output.clear();
                }
                host_present = present;
            },
            request = requests.recv() => match request {
                None | Some(Control::Unplug) => break,
                Some(Control::Record(reply)) => {
                    let _ = reply.send(machine.record().to_vec());
                }
                Some(Control::Stats(reply)) => {
                    let _ = reply.send(machine.stats());
                }
                Some(Control::Inject(fault)) => machine.inject(now(), fault),
                Some(Control::Print(line)) => machine.print_line(now(), &line),
            },
        }
    }
    // Let go of both halves so the host sees the line drop.
    drop((reader, writer));
    Ok(machine.record().to_vec())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}
