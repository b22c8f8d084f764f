//! Opening real serial ports: settings, DTR/RTS handling and stable `/dev/serial/by-id` names.

use std::io;
use std::path::{Path, PathBuf};

use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

/// What to do with the DTR line once the port is open.
///
/// Opening a port raises DTR before we can intervene, which resets Arduino-style boards
/// (a capacitor couples DTR to RESET); dropping it afterwards does not undo that pulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtrPolicy {
    /// Keep DTR raised (the usual state; the board has reset on open).
    #[default]
    Raise,
    /// Lower DTR after opening (some native-USB boards want it low).
    Lower,
}

/// How to open a port. Plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    /// Device path; prefer `/dev/serial/by-id/…`, which survives re-enumeration.
    pub path: PathBuf,
    /// Baud rate (8N1, no flow control, raw).
    pub baud: u32,
    /// DTR after open.
    pub dtr: DtrPolicy,
    /// RTS after open, when set.
    pub rts: Option<bool>,
}

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The operating system refused (missing device, permissions: join `dialout`).
    #[error("cannot open serial port {}: {source}", path.display())]
    Open {
        /// The port asked for.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// Setting a modem line failed.
    #[error("cannot set {line} on {}: {source}", path.display())]
    Line {
        /// `DTR` or `RTS`.
        line: &'static str,
        /// The port.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// Open a serial port raw, 8N1, without flow control, exclusively.
pub fn open_serial(settings: &PortSettings) -> Result<SerialStream, OpenError> {
    let path = settings.path.to_string_lossy().into_owned();
    let mut port = tokio_serial::new(path, settings.baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| OpenError::Open {
            path: settings.path.clone(),
            source: e.into(),
        })?;
    // Another program writing to the same printer would corrupt both streams.
    port.set_exclusive(true).map_err(|e| OpenError::Open {
        path: settings.path.clone(),
        source: e.into(),
    })?;
    let line_error = |line, e: tokio_serial::Error| OpenError::Line {
        line,
        path: settings.path.clone(),
        source: e.into(),
    };
    if settings.dtr == DtrPolicy::Lower {
        port.write_data_terminal_ready(false)
            .map_err(|e| line_error("DTR", e))?;
    }
    if let Some(rts) = settings.rts {
        port.write_request_to_send(rts)
            .map_err(|e| line_error("RTS", e))?;
    }
    Ok(port)
}

/// A serial device with its stable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPortInfo {
    /// The `/dev/serial/by-id/…` link.
    pub by_id: PathBuf,
    /// The device it points to now (`/dev/ttyACM0`…).
    pub device: PathBuf,
}

/// Serial devices under `dir` (normally `/dev/serial/by-id`), sorted by name. A missing
/// directory means no USB serial device is plugged in.
pub fn list_by_id(dir: &Path) -> io::Result<Vec<SerialPortInfo>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ports = Vec::new();
    for entry in entries {
        let by_id = entry?.path();
        let device = std::fs::canonicalize(&by_id).unwrap_or_else(|_| by_id.clone());
        ports.push(SerialPortInfo { by_id, device });
    }
    ports.sort_by(|a, b| a.by_id.cmp(&b.by_id));
    Ok(ports)
}

/// The stable name for `path`: its `/dev/serial/by-id` link when one points to the same
/// device, otherwise `path` itself.
pub fn resolve_port(path: &Path, by_id_dir: &Path) -> PathBuf {
    let target = std::fs::canonicalize(path).ok();
    list_by_id(by_id_dir)
        .ok()
        .and_then(|ports| {
            ports
                .into_iter()
                .find(|p| Some(&p.device) == target.as_ref())
        })
        .map_or_else(|| path.to_path_buf(), |p| p.by_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_id_links_are_listed_sorted_with_their_devices_and_resolved_back() {
        let dir = std::env::temp_dir().join(format!("munifab-by-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dev_a = dir.join("ttyACM0");
        let dev_b = dir.join("ttyUSB0");
        std::fs::write(&dev_a, "").unwrap();
        std::fs::write(&dev_b, "").unwrap();
        let ids = dir.join("by-id");
        std::fs::create_dir_all(&ids).unwrap();
        std::os::unix::fs::symlink(&dev_b, ids.join("usb-FTDI_FT232R-if00-port0")).unwrap();
        std::os::unix::fs::symlink(&dev_a, ids.join("usb-Prusa_MK3-if00")).unwrap();
        let ports = list_by_id(&ids).unwrap();
        assert_eq!(ports.len(), 2);
        assert!(ports[0].by_id.ends_with("usb-FTDI_FT232R-if00-port0"));
        assert_eq!(ports[1].device, std::fs::canonicalize(&dev_a).unwrap());
        assert!(resolve_port(&dev_a, &ids).ends_with("usb-Prusa_MK3-if00"));
        let unknown = dir.join("nothing");
        assert_eq!(resolve_port(&unknown, &ids), unknown);
        assert!(list_by_id(&dir.join("missing")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
