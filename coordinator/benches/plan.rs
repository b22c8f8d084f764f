//! Placement throughput of `scheduler::plan` on a generated fleet.
//!
//! `cargo bench -p munifab-coordinator --bench plan` prints the figures and compares them
//! with the goals (≥ 10,000 placements/s, a full fleet placed in < 2 s). It asserts
//! nothing: speed is measured here, never in tests.

use std::hint::black_box;
use std::time::{Duration as StdDuration, Instant};

use munifab_coordinator::scheduler::{
    CoopId, GeoPoint, MachineKey, MachineSnapshot, Policy, Pool, PoolId, PoolMember, QueuedJob,
    Quota, Readiness, RegionId, Site, SiteId, Snapshot, Usage, plan,
};
use munifab_protocol::{
    AgentId, Box3, Capabilities, Firmware, Flavour, JobId, MachineId, Process, Requirements, Vec3,
};
use time::{Duration, OffsetDateTime};

const MACHINES: usize = 10_000;
const JOBS: usize = 100_000;
const SITES: usize = 500;
const REGIONS: usize = 25;
const POOLS: usize = 10;
const COOPS: usize = 30;

/// splitmix64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn cube(x: f64, y: f64, z: f64) -> Box3 {
    Box3 {
        min: Vec3::default(),
        max: Vec3 { x, y, z },
    }
}

const FDM_MATERIALS: [&str; 5] = ["PLA", "PETG", "ABS", "TPU", "ASA"];
const CNC_MATERIALS: [&str; 4] = ["PLYWOOD", "MDF", "HDPE", "ALU"];
const LASER_MATERIALS: [&str; 3] = ["PLYWOOD", "ACRYLIC", "MDF"];

fn materials(rng: &mut Rng, from: &[&str], max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for _ in 0..1 + rng.below(max) {
        let m = rng.pick(from).to_string();
        if !out.contains(&m) {
            out.push(m);
        }
    }
    out
}

fn capabilities(rng: &mut Rng) -> Capabilities {
    match rng.below(100) {
        0..60 => {
            let v = *rng.pick(&[
                (180.0, 180.0, 180.0),
                (220.0, 220.0, 250.0),
                (250.0, 210.0, 210.0),
                (300.0, 300.0, 400.0),
                (350.0, 350.0, 350.0),
            ]);
            Capabilities {
                process: Process::Fdm,
                firmware: *rng.pick(&[Firmware::Marlin, Firmware::Prusa, Firmware::Reprapfirmware]),
                build_volume: cube(v.0, v.1, v.2),
                nozzle_diameter_mm: Some(*rng.pick(&[0.4, 0.4, 0.4, 0.4, 0.6, 0.25])),
                materials: materials(rng, &FDM_MATERIALS, 3),
                max_hotend_temp_c: Some(*rng.pick(&[260.0, 300.0])),
                max_bed_temp_c: Some(*rng.pick(&[100.0, 110.0])),
                spindle_max_rpm: None,
                tool_count: if rng.chance(10) { 2 } else { 1 },
            }
        }
        60..85 => {
            let v = *rng.pick(&[
                (300.0, 180.0, 45.0),
                (600.0, 400.0, 100.0),
                (1200.0, 600.0, 120.0),
            ]);
            Capabilities {
                process: Process::Cnc,
                firmware: *rng.pick(&[Firmware::Grbl, Firmware::Grblhal, Firmware::Fluidnc]),
                build_volume: cube(v.0, v.1, v.2),
                nozzle_diameter_mm: None,
                materials: materials(rng, &CNC_MATERIALS, 3),
                max_hotend_temp_c: None,
                max_bed_temp_c: None,
                spindle_max_rpm: Some(*rng.pick(&[12_000.0, 24_000.0])),
                tool_count: 1,
            }
        }
        _ => {
            let v = *rng.pick(&[(400.0, 300.0, 10.0), (600.0, 400.0, 20.0)]);
            Capabilities {
                process: Process::Laser,
                firmware: Firmware::Grbl,
                build_volume: cube(v.0, v.1, v.2),
                nozzle_diameter_mm: None,
                materials: materials(rng, &LASER_MATERIALS, 2),
                max_hotend_temp_c: None,
                max_bed_temp_c: None,
                spindle_max_rpm: Some(1000.0),
                tool_count: 1,
            }
        }
    }
}

fn requirements(rng: &mut Rng) -> Requirements {
    let size = |rng: &mut Rng, max: f64| 10.0 + rng.unit() * (max - 10.0);
    match rng.below(100) {
        0..60 => Requirements {
            process: Process::Fdm,
            flavour: Flavour::Reprap,
            bounds: Some(cube(size(rng, 320.0), size(rng, 320.0), size(rng, 300.0))),
            hotend_temp_c: Some(*rng.pick(&[200.0, 215.0, 240.0, 255.0, 280.0])),
            bed_temp_c: Some(*rng.pick(&[0.0, 60.0, 80.0, 105.0])),
            spindle_rpm: None,
            nozzle_diameter_mm: Some(*rng.pick(&[0.4, 0.4, 0.4, 0.6, 0.25])),
            material: Some(rng.pick(&FDM_MATERIALS).to_string()),
            tools: if rng.chance(5) { 2 } else { 1 },
        },
        60..85 => Requirements {
            process: Process::Cnc,
            flavour: Flavour::Grbl,
            bounds: Some(cube(size(rng, 1000.0), size(rng, 500.0), size(rng, 60.0))),
            hotend_temp_c: None,
            bed_temp_c: None,
            spindle_rpm: Some(*rng.pick(&[8_000.0, 12_000.0, 18_000.0])),
            nozzle_diameter_mm: None,
            material: Some(rng.pick(&CNC_MATERIALS).to_string()),
            tools: 1,
        },
        _ => Requirements {
            process: Process::Laser,
            flavour: Flavour::Grbl,
            bounds: Some(cube(size(rng, 550.0), size(rng, 380.0), 0.0)),
            hotend_temp_c: None,
            bed_temp_c: None,
            spindle_rpm: Some(*rng.pick(&[600.0, 1000.0])),
            nozzle_diameter_mm: None,
            material: rng
                .chance(90)
                .then(|| rng.pick(&LASER_MATERIALS).to_string()),
            tools: 1,
        },
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid")
}

fn generate(seed: u64) -> Snapshot {
    let mut rng = Rng(seed);
    let sites: Vec<Site> = (0..SITES)
        .map(|i| {
            let region = i % REGIONS;
            // Regions are clusters ~100 km across, spread over Europe.
            let (lat0, lon0) = (
                38.0 + (region / 5) as f64 * 4.0,
                -5.0 + (region % 5) as f64 * 7.0,
            );
            Site {
                id: SiteId::new(format!("site-{i:04}")).expect("valid"),
                region: RegionId::new(format!("region-{region:02}")).expect("valid"),
                location: GeoPoint {
                    lat_deg: lat0 + rng.unit(),
                    lon_deg: lon0 + rng.unit() * 1.5,
                },
            }
        })
        .collect();
    let machines: Vec<MachineSnapshot> = (0..MACHINES)
        .map(|i| {
            let capabilities = capabilities(&mut rng);
            let loaded_material = rng.chance(70).then(|| capabilities.materials[0].clone());
            let readiness = match (capabilities.process, rng.below(100)) {
                (_, 0..8) => Readiness::NeedsAttention,
                (Process::Cnc, 8..30) => Readiness::Ready,
                _ => Readiness::StockLoadedAndZeroed,
            };
            MachineSnapshot {
                key: MachineKey {
                    agent: AgentId::new(format!("pc-{:04}", i / 4)).expect("valid"),
                    machine: MachineId::new(format!("m{}", i % 4)).expect("valid"),
                },
                site: sites[i / (MACHINES / SITES)].id.clone(),
                online: rng.chance(95),
                readiness,
                capabilities,
                loaded_material,
                last_job_ended_at: rng
                    .chance(90)
                    .then(|| now() - Duration::minutes(rng.below(100_000) as i64)),
                busy: false,
            }
        })
        .collect();
    let coops: Vec<CoopId> = (0..COOPS)
        .map(|i| CoopId::new(format!("coop-{i:02}")).expect("valid"))
        .collect();
    let pools: Vec<Pool> = (0..POOLS)
        .map(|p| {
            // Each pool holds the machines of a band of regions, plus a few strays.
            let machines = machines
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    let region = (i / (MACHINES / SITES)) % REGIONS;
                    region * POOLS / REGIONS == p || (i * 7 + p) % 97 == 0
                })
                .map(|(_, m)| m.key.clone())
                .collect();
            let members = coops
                .iter()
                .enumerate()
                .filter(|(c, _)| c % POOLS == p || (c * 3 + p) % 7 == 0)
                .map(|(c, id)| PoolMember {
                    cooperative: id.clone(),
                    weight: 1 + (c % 4) as u32,
                })
                .collect();
            Pool {
                id: PoolId::new(format!("pool-{p:02}")).expect("valid"),
                machines,
                members,
            }
        })
        .collect();
    let jobs: Vec<QueuedJob> = (0..JOBS)
        .map(|i| {
            let requirements = requirements(&mut rng);
            let excluded_machines = if rng.chance(1) {
                vec![machines[rng.below(MACHINES)].key.clone()]
            } else {
                Vec::new()
            };
            QueuedJob {
                id: JobId(uuid_from(i as u128)),
                cooperative: rng.pick(&coops).clone(),
                requirements,
                priority: rng.below(4) as i32,
                submitted_at: now() - Duration::minutes(rng.below(3000) as i64),
                estimated_machine_seconds: 600 + rng.next() % 36_000,
                delivery_site: rng.pick(&sites).id.clone(),
                excluded_machines,
            }
        })
        .collect();
    let usage = coops
        .iter()
        .map(|c| Usage {
            cooperative: c.clone(),
            machine_seconds: rng.next() % 5_000_000,
        })
        .collect();
    let quotas = coops
        .iter()
        .step_by(3)
        .map(|c| Quota {
            cooperative: c.clone(),
            machine_hours_per_period: 2_000,
            used_machine_seconds: rng.next() % 5_000_000,
        })
        .collect();
    Snapshot {
        jobs,
        machines,
        sites,
        pools,
        usage,
        quotas,
        policy: Policy::default(),
    }
}

fn uuid_from(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux): unlike wall
/// time it does not grow while other processes hold the cores.
fn cpu_time() -> Option<StdDuration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(StdDuration::from_nanos(ns))
}

/// Best wall time and best CPU time over `runs` runs, and the last result.
fn time_it<T>(runs: usize, mut f: impl FnMut() -> T) -> (StdDuration, Option<StdDuration>, T) {
    let mut best = StdDuration::MAX;
    let mut best_cpu: Option<StdDuration> = None;
    let mut out = None;
    for _ in 0..runs {
        let cpu0 = cpu_time();
        let start = Instant::now();
        let r = black_box(f());
        best = best.min(start.elapsed());
        if let (Some(a), Some(b)) = (cpu0, cpu_time()) {
            let spent = b.saturating_sub(a);
            best_cpu = Some(best_cpu.map_or(spent, |c| c.min(spent)));
        }
        out = Some(r);
    }
    (best, best_cpu, out.expect("at least one run"))
}

fn cpu(d: Option<StdDuration>) -> String {
    d.map_or_else(|| "n/a".to_string(), |d| format!("{d:.2?}"))
}

fn main() {
    let t = Instant::now();
    let snapshot = generate(7);
    snapshot
        .validate()
        .expect("generated snapshot is consistent");
    let available = snapshot
        .machines
        .iter()
        .filter(|m| m.online && m.readiness != Readiness::NeedsAttention)
        .count();
    println!(
        "scheduler::plan benchmark: {} machines ({} online and confirmed) at {} sites in {} regions, {} pools, {} cooperatives, {} queued jobs (generated in {:.2?})",
        snapshot.machines.len(),
        available,
        SITES,
        REGIONS,
        POOLS,
        COOPS,
        snapshot.jobs.len(),
        t.elapsed()
    );

    // 1. An empty fleet and a full queue: place as much of the fleet as can be placed.
    let (took, took_cpu, assignments) = time_it(5, || plan(&snapshot, now()));
    let placed = assignments.len();
    let per_s = placed as f64 / took.as_secs_f64();
    let decisions_per_s = snapshot.jobs.len() as f64 / took.as_secs_f64();
    println!(
        "full fleet: {placed} placements ({:.1}% of the fleet; the rest fit no waiting job or are gated) in {took:.2?} wall, {} CPU (best of 5)",
        100.0 * placed as f64 / snapshot.machines.len() as f64,
        cpu(took_cpu)
    );
    println!(
        "  {per_s:.0} placements/s (goal >= 10000: {}), {decisions_per_s:.0} job decisions/s, full fleet in {:.3} s (goal < 2 s: {})",
        if per_s >= 10_000.0 { "met" } else { "MISSED" },
        took.as_secs_f64(),
        if took.as_secs_f64() < 2.0 {
            "met"
        } else {
            "MISSED"
        }
    );

    // 2. Steady state: the fleet is busy but for 1% of machines; a plan runs per release.
    let mut steady = snapshot.clone();
    for (i, m) in steady.machines.iter_mut().enumerate() {
        m.busy = i % 100 != 0;
    }
    let (took, took_cpu, assignments) = time_it(5, || plan(&steady, now()));
    println!(
        "steady state (100 free machines, {} queued): {} placements in {took:.2?} wall, {} CPU per plan run",
        steady.jobs.len(),
        assignments.len(),
        cpu(took_cpu)
    );

    // 3. A small site: 40 machines, 400 jobs, the common case for a single fablab.
    let mut small = snapshot.clone();
    small.machines.truncate(40);
    small.jobs.truncate(400);
    // Too short for the scheduler's CPU accounting (a few ms granularity): wall time only.
    let (took, _, assignments) = time_it(20, || plan(&small, now()));
    println!(
        "small (40 machines, 400 queued): {} placements in {took:.2?} wall per plan run",
        assignments.len()
    );
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average during the run: {}", load.trim());
    }
}
