//! The transport over an in-memory duplex with a virtual machine on the other end, on tokio's
//! paused clock: the machine's emulated time and ours move together.

use std::time::Duration;

use super::*;
use crate::session::grbl::{GrblConfig, GrblSession};
use crate::session::marlin::{MarlinConfig, MarlinSession};
use crate::session::{JobOutcome, SessionError};
use crate::virtual_machine::{self as vm, FaultConfig, FirmwareConfig, VmConfig, spawn_in_memory};

fn marlin_vm(speed: f64) -> VmConfig {
    VmConfig {
        firmware: FirmwareConfig::Marlin(vm::MarlinConfig {
            speed,
            ..vm::MarlinConfig::default()
        }),
        baud: 115_200,
        faults: FaultConfig::default(),
    }
}

fn job(lines: &[String]) -> JobSource {
    Box::new(std::io::Cursor::new(lines.join("\n").into_bytes()))
}

async fn until<F: Fn(&BridgeEvent) -> bool>(
    events: &mut mpsc::UnboundedReceiver<BridgeEvent>,
    wanted: F,
) -> Vec<BridgeEvent> {
    let mut seen = Vec::new();
    while let Some(e) = events.recv().await {
        let done = wanted(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
    panic!("events ended before the wanted one; saw {seen:?}");
}

fn connected(e: &BridgeEvent) -> bool {
    matches!(e, BridgeEvent::Session(Event::Connected(_)))
}

fn finished(e: &BridgeEvent) -> bool {
    matches!(e, BridgeEvent::Session(Event::JobFinished(_)))
}

#[tokio::test(start_paused = true)]
async fn a_job_streams_through_the_task_and_the_machine_runs_every_line_in_order() {
    let (machine, stream) = spawn_in_memory(marlin_vm(0.0)).unwrap();
    let mut bridge = spawn(MarlinSession::new(MarlinConfig::default(), now()), stream);
    until(&mut bridge.events, connected).await;
    let lines: Vec<String> = (0..300)
        .map(|i| format!("G1 X{} Y{} F3000", i % 50, i % 7))
        .collect();
    bridge
        .handle
        .start_job(JobOptions::default(), job(&lines))
        .await
        .unwrap();
    let seen = until(&mut bridge.events, finished).await;
    assert_eq!(
        seen.last(),
        Some(&BridgeEvent::Session(Event::JobFinished(
            JobOutcome::Completed
        )))
    );
    let stats = bridge.handle.stats().await.unwrap();
    assert_eq!(stats.job_lines_acked, 300);
    bridge.handle.shutdown().await;
    let record = machine.finished().await.unwrap();
    let ran: Vec<&str> = record
        .iter()
        .map(|e| e.command.as_str())
        .filter(|c| c.starts_with("G1"))
        .collect();
    assert_eq!(ran, lines);
}

#[tokio::test(start_paused = true)]
async fn a_cloned_handle_can_cancel_and_the_end_script_runs_after_the_last_fed_line() {
    let (machine, stream) = spawn_in_memory(marlin_vm(1.0)).unwrap();
    let mut bridge = spawn(MarlinSession::new(MarlinConfig::default(), now()), stream);
    until(&mut bridge.events, connected).await;
    let lines: Vec<String> = (0..200).map(|i| format!("G1 X{} F600", i % 100)).collect();
    bridge
        .handle
        .start_job(JobOptions::default(), job(&lines))
        .await
        .unwrap();
    let other = bridge.handle.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    other.command(Command::Cancel).await.unwrap();
    let seen = until(&mut bridge.events, finished).await;
    assert_eq!(
        seen.last(),
        Some(&BridgeEvent::Session(Event::JobFinished(
            JobOutcome::Cancelled
        )))
    );
    bridge.handle.shutdown().await;
    let record = machine.finished().await.unwrap();
    let commands: Vec<&str> = record.iter().map(|e| e.command.as_str()).collect();
    let moves = commands.iter().filter(|c| c.starts_with("G1")).count();
    assert!(
        moves > 0 && moves < 200,
        "cancel stopped the feed: {moves} moves ran"
    );
    assert_eq!(
        commands[commands.len() - 4..],
        ["M104 S0", "M140 S0", "M107", "M84"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_emergency_stop_overtakes_queued_lines_and_halts_the_machine() {
    let (machine, stream) = spawn_in_memory(VmConfig {
        firmware: FirmwareConfig::Marlin(vm::MarlinConfig {
            emergency_parser: true,
            speed: 1.0,
            ..vm::MarlinConfig::default()
        }),
        ..marlin_vm(1.0)
    })
    .unwrap();
    let mut bridge = spawn(MarlinSession::new(MarlinConfig::default(), now()), stream);
    until(&mut bridge.events, connected).await;
    let lines: Vec<String> = (0..100)
        .map(|i| format!("G1 X{} F300", i * 3 % 100))
        .collect();
    bridge
        .handle
        .start_job(JobOptions::default(), job(&lines))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge.handle.command(Command::EmergencyStop).await.unwrap();
    let seen = until(&mut bridge.events, finished).await;
    assert!(seen.contains(&BridgeEvent::Session(Event::JobFinished(
        JobOutcome::EmergencyStopped
    ))));
    let stopped_at = machine.record().await.unwrap().len();
    until(
        &mut bridge.events,
        |e| matches!(e, BridgeEvent::Session(Event::Message(m)) if m.contains("kill() called")),
    )
    .await;
    // Minutes of moves were queued; after the kill nothing more runs.
    tokio::time::sleep(Duration::from_secs(60)).await;
    bridge.handle.shutdown().await;
    let record = machine.finished().await.unwrap();
    assert_eq!(record.len(), stopped_at);
    assert!(
        record
            .iter()
            .filter(|e| e.command.starts_with("G1"))
            .count()
            < 20
    );
}

#[tokio::test(start_paused = true)]
async fn unplugging_mid_job_is_reported_with_the_last_acknowledged_line() {
    let (machine, stream) = spawn_in_memory(marlin_vm(1.0)).unwrap();
    let mut bridge = spawn(MarlinSession::new(MarlinConfig::default(), now()), stream);
    until(&mut bridge.events, connected).await;
    let lines: Vec<String> = (0..500).map(|i| format!("G1 X{} F1200", i % 100)).collect();
    bridge
        .handle
        .start_job(JobOptions::default(), job(&lines))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let record = machine.unplug().await.unwrap();
    let seen = until(&mut bridge.events, |e| {
        matches!(e, BridgeEvent::Disconnected { .. })
    })
    .await;
    let Some(BridgeEvent::Disconnected {
        last_acked_line, ..
    }) = seen.last()
    else {
        unreachable!()
    };
    let acked = last_acked_line.expect("some lines were acknowledged");
    let moves = record
        .iter()
        .filter(|e| e.command.starts_with("G1"))
        .count() as u64;
    assert!(
        acked >= 1 && acked <= moves,
        "acked {acked}, machine ran {moves}"
    );
    assert!(matches!(
        bridge.handle.stats().await,
        Err(BridgeError::Closed)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_machine_that_never_answers_gives_a_clear_handshake_error() {
    let (mut machine_end, stream) = tokio::io::duplex(64);
    // A device that reads everything and never says a word.
    tokio::spawn(async move {
        let mut sink = [0u8; 64];
        while machine_end.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let mut bridge = spawn(MarlinSession::new(MarlinConfig::default(), now()), stream);
    let seen = until(&mut bridge.events, |e| {
        matches!(e, BridgeEvent::Session(Event::Failed(_)))
    })
    .await;
    assert_eq!(
        seen.last(),
        Some(&BridgeEvent::Session(Event::Failed(
            SessionError::NoHandshake { attempts: 5 }
        )))
    );
}

#[tokio::test(start_paused = true)]
async fn grbl_streams_with_character_counting_through_the_same_task() {
    let (machine, stream) = spawn_in_memory(VmConfig {
        firmware: FirmwareConfig::Grbl(vm::GrblConfig {
            speed: 0.0,
            ..vm::GrblConfig::default()
        }),
        baud: 115_200,
        faults: FaultConfig::default(),
    })
    .unwrap();
    let mut bridge = spawn(GrblSession::new(GrblConfig::default(), now()), stream);
    until(&mut bridge.events, connected).await;
    let lines: Vec<String> = (0..200)
        .map(|i| format!("G1 X{} Y{} F500", i % 30, i % 9))
        .collect();
    bridge
        .handle
        .start_job(JobOptions::default(), job(&lines))
        .await
        .unwrap();
    let seen = until(&mut bridge.events, finished).await;
    assert_eq!(
        seen.last(),
        Some(&BridgeEvent::Session(Event::JobFinished(
            JobOutcome::Completed
        )))
    );
    bridge.handle.shutdown().await;
    let record = machine.finished().await.unwrap();
    let ran: Vec<String> = record
        .iter()
        .map(|e| e.command.clone())
        .filter(|c| c.starts_with("G1"))
        .collect();
    let want: Vec<String> = lines.iter().map(|l| vm::normalize_grbl_line(l)).collect();
    assert_eq!(ran, want);
}
