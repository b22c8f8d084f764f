//! Protocol values tests need again and again.

#![allow(dead_code)]

use munifab_coordinator::store::NewJob;
use munifab_protocol::{
    AgentId, AgentStatus, AnalysisSummary, Artifact, Assign, Box3, Capabilities, Command, Event,
    Firmware, Flavour, JobId, JobRef, MachineId, MachineState, MachineStatus, Message, Presence,
    Process, Requirements, Vec3,
};

pub fn agent(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

pub fn machine(s: &str) -> MachineId {
    MachineId::new(s).unwrap()
}

pub fn printer_caps() -> Capabilities {
    Capabilities {
        process: Process::Fdm,
        firmware: Firmware::Marlin,
        build_volume: Box3 {
            min: Vec3::default(),
            max: Vec3 {
                x: 220.0,
                y: 220.0,
                z: 250.0,
            },
        },
        nozzle_diameter_mm: Some(0.4),
        materials: vec!["PLA".into()],
        max_hotend_temp_c: Some(260.0),
        max_bed_temp_c: Some(100.0),
        spindle_max_rpm: None,
        tool_count: 1,
    }
}

pub fn fdm_requirements() -> Requirements {
    Requirements {
        process: Process::Fdm,
        flavour: Flavour::Reprap,
        bounds: None,
        hotend_temp_c: Some(210.0),
        bed_temp_c: Some(60.0),
        spindle_rpm: None,
        nozzle_diameter_mm: None,
        material: None,
        tools: 1,
    }
}

pub fn new_job(coop: &str) -> NewJob {
    NewJob {
        id: JobId::random(),
        coop: coop.into(),
        name: "cube.gcode".into(),
        submitted_by: "test".into(),
        artifact: "ab".repeat(32),
        size: 123,
        requirements: fdm_requirements(),
        analysis: AnalysisSummary::default(),
        priority: 0,
        design: None,
        delivery_site: None,
    }
}

pub fn online(site: &str) -> AgentStatus {
    AgentStatus {
        state: Presence::Online,
        version: "test".into(),
        site: Some(site.into()),
        machines: vec![],
        last_will: false,
    }
}

pub fn offline() -> AgentStatus {
    AgentStatus::last_will("test", None)
}

pub fn machine_state(m: &str, state: MachineStatus) -> MachineState {
    MachineState {
        machine: machine(m),
        state,
        capabilities: printer_caps(),
        job: None,
        needs_confirmation: true,
        detail: None,
    }
}

pub fn job_ref(job: JobId, m: &str, epoch: u64, seq: u64) -> JobRef {
    JobRef {
        job,
        machine: machine(m),
        epoch,
        seq,
    }
}

pub fn event(body: Event) -> Message<Event> {
    Message::stamped(body)
}

pub fn assign_command(job: &munifab_coordinator::store::Job) -> Message<Command> {
    Message::stamped(Command::Assign(Assign {
        job: job.id,
        epoch: job.epoch,
        machine: job.machine.clone().unwrap(),
        artifact: Artifact {
            url: "http://x/a".into(),
            sha256: job.artifact.clone(),
            size: job.size,
        },
        requirements: job.requirements.clone(),
        analysis: job.analysis.clone(),
    }))
}
