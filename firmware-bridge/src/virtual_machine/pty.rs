//! A pseudo-terminal whose slave side a host opens like a USB serial port.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{PtyMaster, grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::Mode;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::runner::VmError;

/// How the pseudo-terminal behaves when hosts open and close it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtyOptions {
    /// Where to symlink the slave, if anywhere.
    pub link: Option<PathBuf>,
    /// Reset the machine whenever a host opens the port, as the DTR line resets an
    /// Arduino-style board; output sent while no host has the port open is lost. Without
    /// it the machine behaves like a native-USB board that never resets on open.
    pub reset_on_open: bool,
}

/// The machine's end of a pseudo-terminal, optionally reachable through a symlink.
///
/// Design note: without `reset_on_open` the link keeps its own descriptor on the slave, so
/// the line stays up while no host has the port open and the master never reads EIO. With
/// it, the slave is closed and the master's hang-up flag tells whether a host is there.
/// Dropping the link closes the master: a host still holding the slave then reads EOF/EIO,
/// exactly as when a USB serial adapter is pulled, and the symlink disappears like a
/// `/dev/serial/by-id` entry does.
#[derive(Debug)]
pub struct PtyLink {
    master: AsyncFd<PtyMaster>,
    slave: Option<OwnedFd>,
    slave_path: PathBuf,
    link: Option<PathBuf>,
}

/// Tells whether a host has the slave open (the master's hang-up flag) and whether one
/// opened it since the last look (inotify), so a quick close and reopen is not missed.
#[derive(Debug)]
pub(crate) struct HostPresence {
    master: OwnedFd,
    opens: Inotify,
}

impl HostPresence {
    /// True if the slave was opened since the last call.
    pub(crate) fn opened(&self) -> bool {
        // Non-blocking: no event reads as EAGAIN.
        self.opens
            .read_events()
            .is_ok_and(|events| !events.is_empty())
    }

    pub(crate) fn host_present(&self) -> bool {
        let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|events| events.contains(PollFlags::POLLHUP)),
            // Cannot tell: assume the host is there rather than drop its bytes.
            Err(_) => true,
        }
    }
}

impl PtyLink {
    /// Opens a pty in raw mode and symlinks its slave at `options.link` (an existing
    /// symlink there is replaced; any other file is an error). Must run inside a tokio
    /// runtime.
    pub fn open(options: &PtyOptions) -> Result<Self, VmError> {
        let link = options.link.as_deref();
        let pty = |source: Errno| VmError::Pty {
            source: source.into(),
        };
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).map_err(pty)?;
        grantpt(&master).map_err(pty)?;
        unlockpt(&master).map_err(pty)?;
        let slave_path = PathBuf::from(ptsname_r(&master).map_err(pty)?);
        let slave = nix::fcntl::open(&slave_path, OFlag::O_RDWR | OFlag::O_NOCTTY, Mode::empty())
            .map_err(pty)?;
        let mut termios = tcgetattr(&slave).map_err(pty)?;
        cfmakeraw(&mut termios);
        tcsetattr(&slave, SetArg::TCSANOW, &termios).map_err(pty)?;
        fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(pty)?;
        let master = register(master).map_err(|source| VmError::Pty { source })?;
        if let Some(link) = link {
            let occupied = |source| VmError::Link {
                path: link.to_owned(),
                source,
            };
            match std::fs::symlink_metadata(link) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    std::fs::remove_file(link).map_err(occupied)?
                }
                Ok(_) => {
                    return Err(occupied(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "not a symlink; refusing to replace it",
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(occupied(e)),
            }
            std::os::unix::fs::symlink(&slave_path, link).map_err(occupied)?;
        }
        Ok(PtyLink {
            master,
            slave: (!options.reset_on_open).then_some(slave),
            slave_path,
            link: link.map(Path::to_owned),
        })
    }

    /// A watcher of the host's presence, for links that reset on open.
    pub(crate) fn presence(&self) -> Result<Option<HostPresence>, VmError> {
        if self.slave.is_some() {
            return Ok(None);
        }
        let master = self
            .master
            .get_ref()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| VmError::Pty { source })?;
        let watch_error = |source: Errno| VmError::Pty {
            source: source.into(),
        };
        let opens =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(watch_error)?;
        opens
            .add_watch(&self.slave_path, AddWatchFlags::IN_OPEN)
            .map_err(watch_error)?;
        Ok(Some(HostPresence { master, opens }))
    }

    /// The slave device, e.g. `/dev/pts/7`.
    pub fn slave_path(&self) -> &Path {
        &self.slave_path
    }

    /// The symlink pointing at the slave, if one was asked for.
    pub fn link_path(&self) -> Option<&Path> {
        self.link.as_deref()
    }
}

/// Hands the master to tokio's reactor.
// The one unsafe block of the crate: tokio 1.54 made registration unsafe because a generic
// `AsRawFd` type could close or swap its descriptor behind the reactor's back.
#[allow(unsafe_code)]
fn register(master: PtyMaster) -> io::Result<AsyncFd<PtyMaster>> {
    // SAFETY: `PtyMaster` owns its descriptor, never closes or replaces it while alive, and
    // the `AsyncFd` owns the `PtyMaster`, so the descriptor stays open and the same for the
    // whole life of the registration.
    unsafe { AsyncFd::register(master) }.map_err(io::Error::from)
}

impl Drop for PtyLink {
    fn drop(&mut self) {
        if let Some(link) = &self.link
            && std::fs::read_link(link).is_ok_and(|target| target == self.slave_path)
        {
            // Best effort: a link we cannot remove is only a stale name.
            let _ = std::fs::remove_file(link);
        }
    }
}

impl AsyncRead for PtyLink {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // No slave descriptor left: the line is down, which reads as end of stream.
                Ok(Err(e)) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyLink {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.master.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), buf).map_err(io::Error::from))
            {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
