//! Every G-code file of the sample designs, taken from the catalog exactly as a job
//! submitted from the design gets it, passes the firmware bridge's analysis for its
//! machine profile and then runs on the matching virtual machine (Marlin or GRBL) over a
//! real pseudo-terminal opened as a serial port, as an agent would stream it. The
//! machine's record of executed commands must be the file's commands, line for line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use munifab_coordinator::catalog::{Catalog, DesignQuery, MachineProfile, ProfileId};
use munifab_firmware_bridge::gcode::{self, analyze_bytes};
use munifab_firmware_bridge::session::grbl::{GrblConfig, GrblSession};
use munifab_firmware_bridge::session::marlin::{MarlinConfig, MarlinSession};
use munifab_firmware_bridge::session::{Event, JobOptions, JobOutcome, Session, line};
use munifab_firmware_bridge::transport::{
    self, Bridge, BridgeEvent, DtrPolicy, PortSettings, open_serial,
};
use munifab_firmware_bridge::virtual_machine::{
    self as vm, FaultConfig, FirmwareConfig, VmConfig, normalize_grbl_line, spawn_on_pty,
};
use munifab_protocol::Firmware;

use crate::util::{Setup, assert_clean, at, workspace_root};

/// A bound so a broken build fails with a message instead of hanging CI; a healthy run
/// takes seconds (speed factor 0, unpaced wire).
const PATIENCE: Duration = Duration::from_secs(300);

/// Commands the host sends on its own while connecting, before the job: Marlin's line
/// number reset and firmware query, GRBL's build info query. Anything else ahead of the
/// job's lines fails the test.
const HANDSHAKE: &[&str] = &["M110 N0", "M115", "$I"];

/// What the Marlin session sends after the last job line: an `M105` whose `ok T:` proves
/// the firmware took every line before it (Marlin acknowledges a line when it is queued,
/// not when it runs).
const MARLIN_FENCE: &str = "M105";

/// One G-code file of a design, as the catalog pins it.
struct Job {
    name: String,
    profile: ProfileId,
    bytes: Vec<u8>,
}

fn sample_jobs(catalog: &Catalog) -> Vec<Job> {
    let mut jobs = Vec::new();
    for summary in catalog.search(&DesignQuery::default()).items {
        let design = catalog.design(&summary.key).expect("design").design;
        for g in &design.manifest.gcode {
            let pinned = catalog
                .resolve(&design.pinned_spec().parse().unwrap(), &g.profile)
                .unwrap_or_else(|e| panic!("{}: {e}", design.key));
            jobs.push(Job {
                name: pinned.path,
                profile: g.profile.clone(),
                bytes: pinned.bytes,
            });
        }
    }
    jobs
}

/// The firmware bridge's view of the shipped profiles (the same files the catalog and the
/// agents read).
fn bridge_profile(id: &ProfileId) -> gcode::MachineProfile {
    let path = workspace_root().join("profiles").join(format!("{id}.toml"));
    gcode::MachineProfile::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn link_path(name: &str) -> PathBuf {
    let flat = name.replace('/', "_");
    std::env::temp_dir().join(format!("munifab-catalog-{}-{flat}", std::process::id()))
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// What the firmware should execute for `text`: each line as the host cleans it, and,
/// for GRBL, as the controller's parser reduces it (no spaces, upper case).
fn expected_commands(text: &str, firmware: Firmware) -> Vec<String> {
    text.lines()
        .filter_map(line::clean)
        .map(|l| match firmware {
            Firmware::Grbl => normalize_grbl_line(l),
            _ => l.to_owned(),
        })
        .filter(|l| !l.is_empty())
        .collect()
}

async fn until(bridge: &mut Bridge, wanted: impl Fn(&BridgeEvent) -> bool) -> Vec<BridgeEvent> {
    let mut seen = Vec::new();
    while let Some(e) = bridge.events.recv().await {
        let done = wanted(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
    panic!("the bridge stopped before the wanted event; saw {seen:?}");
}

/// Stream `job` to a virtual machine of `firmware` on a pty and return the commands it
/// executed.
async fn stream<S: Session + Send + 'static>(
    job: &Job,
    firmware: FirmwareConfig,
    session: S,
) -> Vec<String> {
    let link = link_path(&job.name);
    let config = VmConfig {
        firmware,
        baud: 0,
        faults: FaultConfig::default(),
    };
    let machine = spawn_on_pty(config, Some(&link)).expect("a virtual machine on a pty");
    let port = open_serial(&PortSettings {
        path: link.clone(),
        baud: 115_200,
        dtr: DtrPolicy::Raise,
        rts: None,
    })
    .expect("the pty opens as a serial port");
    let mut bridge = transport::spawn(session, port);
    until(&mut bridge, |e| {
        matches!(e, BridgeEvent::Session(Event::Connected(_)))
    })
    .await;
    let source: transport::JobSource = Box::new(std::io::Cursor::new(job.bytes.clone()));
    bridge
        .handle
        .start_job(JobOptions::default(), source)
        .await
        .expect("the job starts");
    let seen = until(&mut bridge, |e| {
        matches!(e, BridgeEvent::Session(Event::JobFinished(_)))
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&BridgeEvent::Session(Event::JobFinished(
            JobOutcome::Completed
        ))),
        "{} did not complete; events: {:?}",
        job.name,
        seen.iter()
            .filter(|e| !matches!(e, BridgeEvent::Session(Event::Telemetry(_))))
            .collect::<Vec<_>>()
    );
    bridge.handle.shutdown().await;
    let record = machine.unplug().await.expect("the machine's record");
    assert!(!Path::new(&link).exists(), "the port link is removed");
    record.into_iter().map(|e| e.command).collect()
}

/// The job's part of the record: everything after the handshake, which must hold only
/// handshake commands.
fn job_part(record: &[String]) -> &[String] {
    let start = record
        .iter()
        .position(|c| !HANDSHAKE.contains(&c.as_str()))
        .unwrap_or(record.len());
    &record[start..]
}

fn assert_same_commands(name: &str, ran: &[String], want: &[String]) {
    if let Some(i) = (0..ran.len().min(want.len())).find(|&i| ran[i] != want[i]) {
        panic!(
            "{name}: command {} ran as {:?}, the file says {:?}",
            i + 1,
            ran[i],
            want[i]
        );
    }
    assert_eq!(
        ran.len(),
        want.len(),
        "{name}: {} commands ran, the file has {}; the record ends {:?}, the file {:?}",
        ran.len(),
        want.len(),
        &ran[ran.len().saturating_sub(3)..],
        &want[want.len().saturating_sub(3)..],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_gcode_file_passes_its_profile_and_runs_line_for_line_on_its_virtual_machine()
{
    let setup = Setup::new().overlay("commons", &workspace_root().join("designs"));
    let profiles =
        MachineProfile::load_dir(&workspace_root().join("profiles")).expect("shipped profiles");
    let catalog = Catalog::open(setup.config.clone())
        .expect("catalog opens")
        .with_profiles(profiles.values());
    assert_clean(&catalog.sync(at(0)));
    let jobs = sample_jobs(&catalog);
    assert!(jobs.len() >= 6, "only {} G-code files", jobs.len());

    let mut seen_firmware = Vec::new();
    for job in &jobs {
        let profile = bridge_profile(&job.profile);
        let analysis = analyze_bytes(&job.bytes, Some(&profile));
        let errors: Vec<String> = analysis.errors().map(|f| format!("{f:?}")).collect();
        assert!(
            errors.is_empty(),
            "{} fails the analysis for {}: {errors:#?}",
            job.name,
            job.profile
        );

        let firmware = profile.capabilities.firmware;
        let text = std::str::from_utf8(&job.bytes).expect("G-code is text");
        let mut want = expected_commands(text, firmware);
        assert!(!want.is_empty(), "{} has no commands", job.name);
        if firmware == Firmware::Marlin {
            want.push(MARLIN_FENCE.to_owned());
        }
        let run = async {
            match firmware {
                Firmware::Marlin => {
                    let machine = FirmwareConfig::Marlin(vm::MarlinConfig {
                        speed: 0.0,
                        ..vm::MarlinConfig::default()
                    });
                    let session = MarlinSession::new(
                        MarlinConfig {
                            // No temperature polls in the record: only the file's commands.
                            temperature_interval: None,
                            ..MarlinConfig::default()
                        },
                        now(),
                    );
                    stream(job, machine, session).await
                }
                Firmware::Grbl => {
                    let machine = FirmwareConfig::Grbl(vm::GrblConfig {
                        speed: 0.0,
                        ..vm::GrblConfig::default()
                    });
                    let session = GrblSession::new(GrblConfig::default(), now());
                    stream(job, machine, session).await
                }
                other => panic!("{}: no virtual machine for {other:?}", job.profile),
            }
        };
        let record = tokio::time::timeout(PATIENCE, run)
            .await
            .unwrap_or_else(|_| panic!("{} did not finish within {PATIENCE:?}", job.name));
        assert_same_commands(&job.name, job_part(&record), &want);
        seen_firmware.push(firmware);
    }
    assert!(
        seen_firmware.contains(&Firmware::Marlin) && seen_firmware.contains(&Firmware::Grbl),
        "both virtual machines ran: {seen_firmware:?}"
    );
}
