//! Resident memory of the agent process: idle with four machines, and while streaming a
//! large file. Prints its figures and the goals they are compared with (issue 5: at most
//! 8 MB idle, 16 MB streaming, independent of file size).
//!
//! The agent runs as its own process (the release binary). Its four machines are virtual
//! Marlin controllers on pseudo-terminals hosted by *this* process, so the agent's figures
//! are those of real serial machines: no simulator memory in them. The broker (embedded
//! rumqttd) and the artifact server also live here.
//!
//! `cargo bench -p munifab-agent --bench rss` (file size: `MUNIFAB_RSS_MB`, default 100).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use munifab_firmware_bridge::virtual_machine as vm;
use munifab_protocol::{Event, JobId, MachineStatus};
use munifab_tests::broker::TestBroker;
use support::*;

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let megabytes: usize = std::env::var("MUNIFAB_RSS_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let broker = TestBroker::embedded().await;
    let agent = agent_id();
    let http = ArtifactServer::start().await;
    let mut coord = Coordinator::connect(&broker, &agent).await;
    let data = temp_dir();

    let mut machines = String::new();
    let mut vms = Vec::new();
    for i in 0..4 {
        let link = data.join(format!("ttyM{i}"));
        vms.push(
            vm::spawn_on_pty(
                vm::VmConfig {
                    firmware: vm::FirmwareConfig::Marlin(vm::MarlinConfig {
                        speed: 0.0,
                        ..vm::MarlinConfig::default()
                    }),
                    baud: 0,
                    faults: vm::FaultConfig::default(),
                },
                Some(&link),
            )
            .expect("virtual machine"),
        );
        machines.push_str(
            &MARLIN_MACHINE
                .replace("id = \"mk3\"", &format!("id = \"m{i}\""))
                .replace("virtual:marlin", &link.display().to_string()),
        );
    }
    let cfg_path = data.join("agent.toml");
    std::fs::write(
        &cfg_path,
        config(&agent, &broker.url(), &http.base, &data, &machines),
    )
    .unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_munifab-agent"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("MUNIFAB_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the agent binary");
    let pid = child.id();
    let _agent = Agent(child);

    // Clear each machine as it comes up; wait until all four are ready.
    let mut ready = std::collections::HashSet::new();
    while ready.len() < 4 {
        let s = coord.state_where(|_| true).await;
        match s.state {
            MachineStatus::Idle => {
                coord.send(clear_cmd(s.machine.as_str())).await;
            }
            MachineStatus::Ready => {
                ready.insert(s.machine);
            }
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle, idle_peak) = rss_kib(pid);

    // A large file: ~30-byte extruding moves, all inside the bed.
    let path = data.join("big.gcode");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let header = b"M82\nG92 E0\nG1 Z0.3 F600\n";
    file.write_all(header).unwrap();
    let mut written = header.len();
    let mut e = 0.0f64;
    let mut i = 0u64;
    while written < megabytes * 1024 * 1024 {
        e += 0.01;
        let line = format!(
            "G1 X{:.1} Y{:.1} E{e:.3}\n",
            20 + i % 150,
            20 + (i * 7) % 150
        );
        file.write_all(line.as_bytes()).unwrap();
        written += line.len();
        i += 1;
    }
    drop(file);
    let bytes = std::fs::read(&path).unwrap();
    let artifact = http.add("big.gcode", &bytes);
    drop(bytes);

    coord
        .send(assign_cmd(
            JobId::random(),
            1,
            "m0",
            artifact,
            fdm_requirements(),
        ))
        .await;
    let started = Instant::now();
    let mut peak_streaming = 0;
    let mut samples = 0;
    loop {
        let e = tokio::time::timeout(Duration::from_millis(500), coord.next_event()).await;
        let (now, _) = rss_kib(pid);
        if let Ok(e) = &e
            && matches!(e.body, Event::Progress(_))
        {
            peak_streaming = peak_streaming.max(now);
            samples += 1;
        }
        if let Ok(e) = e
            && (e.body.is_terminal() || matches!(e.body, Event::Rejected(_)))
        {
            assert!(
                matches!(e.body, Event::Completed(_)),
                "the large job did not complete: {e:?}"
            );
            break;
        }
    }
    let (_, hwm) = rss_kib(pid);
    coord
        .state_where(|s| s.state == MachineStatus::NeedsAttention)
        .await;

    println!("agent RSS, release build, 4 machines on serial ptys");
    println!(
        "  idle:       {:6.1} MiB (peak so far {:.1} MiB)  goal <= 8 MiB: {}",
        mib(idle),
        mib(idle_peak),
        if idle <= 8 * 1024 { "met" } else { "NOT met" }
    );
    println!(
        "  streaming:  {:6.1} MiB max over {samples} progress samples while streaming {megabytes} MiB in {:.0} s  goal <= 16 MiB: {}",
        mib(peak_streaming),
        started.elapsed().as_secs_f64(),
        if peak_streaming <= 16 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  lifetime peak (VmHWM, includes download and preflight): {:.1} MiB",
        mib(hwm)
    );
    drop(vms);
    let _ = std::fs::remove_dir_all(data);
}
