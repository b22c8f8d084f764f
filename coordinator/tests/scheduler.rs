//! The scheduler's rules, invariants (property tests) and long-run behaviour (simulation in
//! virtual time).

use std::collections::{BTreeMap, HashMap, HashSet};

use munifab_coordinator::scheduler::{
    Assignment, CoopId, GeoPoint, MachineKey, MachineSnapshot, Policy, Pool, PoolMember, QueuedJob,
    Quota, Readiness, RegionId, Site, SiteId, Snapshot, Usage, WaitReason, explain, plan,
};
use munifab_protocol::{
    AgentId, Box3, Capabilities, Firmware, Flavour, JobId, MachineId, Process, Requirements, Vec3,
};
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

// ---------------------------------------------------------------- helpers

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn coop(s: &str) -> CoopId {
    CoopId::new(s).unwrap()
}

fn site_id(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn key(agent: &str, machine: &str) -> MachineKey {
    MachineKey {
        agent: AgentId::new(agent).unwrap(),
        machine: MachineId::new(machine).unwrap(),
    }
}

fn site(id: &str, region: &str, lat: f64, lon: f64) -> Site {
    Site {
        id: site_id(id),
        region: RegionId::new(region).unwrap(),
        location: GeoPoint {
            lat_deg: lat,
            lon_deg: lon,
        },
    }
}

fn cube(x: f64, y: f64, z: f64) -> Box3 {
    Box3 {
        min: Vec3::default(),
        max: Vec3 { x, y, z },
    }
}

fn printer_caps(materials: &[&str]) -> Capabilities {
    Capabilities {
        process: Process::Fdm,
        firmware: Firmware::Marlin,
        build_volume: cube(220.0, 220.0, 250.0),
        nozzle_diameter_mm: Some(0.4),
        materials: materials.iter().map(|m| m.to_string()).collect(),
        max_hotend_temp_c: Some(260.0),
        max_bed_temp_c: Some(100.0),
        spindle_max_rpm: None,
        tool_count: 1,
    }
}

fn router_caps() -> Capabilities {
    Capabilities {
        process: Process::Cnc,
        firmware: Firmware::Grbl,
        build_volume: cube(600.0, 400.0, 100.0),
        nozzle_diameter_mm: None,
        materials: vec!["PLYWOOD".into()],
        max_hotend_temp_c: None,
        max_bed_temp_c: None,
        spindle_max_rpm: Some(24000.0),
        tool_count: 1,
    }
}

fn pla_req() -> Requirements {
    Requirements {
        process: Process::Fdm,
        flavour: Flavour::Reprap,
        bounds: Some(cube(50.0, 50.0, 20.0)),
        hotend_temp_c: Some(210.0),
        bed_temp_c: Some(60.0),
        spindle_rpm: None,
        nozzle_diameter_mm: Some(0.4),
        material: Some("PLA".into()),
        tools: 1,
    }
}

fn cnc_req() -> Requirements {
    Requirements {
        process: Process::Cnc,
        flavour: Flavour::Grbl,
        bounds: Some(cube(300.0, 200.0, 12.0)),
        hotend_temp_c: None,
        bed_temp_c: None,
        spindle_rpm: Some(18000.0),
        nozzle_diameter_mm: None,
        material: Some("PLYWOOD".into()),
        tools: 1,
    }
}

fn machine(agent: &str, id: &str, site: &str, caps: Capabilities) -> MachineSnapshot {
    MachineSnapshot {
        key: key(agent, id),
        site: site_id(site),
        online: true,
        readiness: Readiness::StockLoadedAndZeroed,
        capabilities: caps,
        loaded_material: None,
        last_job_ended_at: None,
        busy: false,
    }
}

fn job(n: u128, coop_: &str, req: Requirements, delivery: &str) -> QueuedJob {
    QueuedJob {
        id: JobId(Uuid::from_u128(n)),
        cooperative: coop(coop_),
        requirements: req,
        priority: 0,
        submitted_at: t0(),
        estimated_machine_seconds: 3600,
        delivery_site: site_id(delivery),
        excluded_machines: Vec::new(),
    }
}

fn pool(id: &str, machines: &[&MachineSnapshot], members: &[(&str, u32)]) -> Pool {
    Pool {
        id: munifab_coordinator::scheduler::PoolId::new(id).unwrap(),
        machines: machines.iter().map(|m| m.key.clone()).collect(),
        members: members
            .iter()
            .map(|(c, w)| PoolMember {
                cooperative: coop(c),
                weight: *w,
            })
            .collect(),
    }
}

/// One site, one pool holding every machine, shared by `coops` with weight 1.
fn simple(machines: Vec<MachineSnapshot>, jobs: Vec<QueuedJob>, coops: &[&str]) -> Snapshot {
    let members: Vec<(&str, u32)> = coops.iter().map(|c| (*c, 1)).collect();
    let refs: Vec<&MachineSnapshot> = machines.iter().collect();
    let pools = vec![pool("shared", &refs, &members)];
    Snapshot {
        jobs,
        sites: vec![site("lab-a", "north", 52.0, 13.0)],
        machines,
        pools,
        ..Snapshot::default()
    }
}

fn placed(assignments: &[Assignment]) -> Vec<(u128, String)> {
    assignments
        .iter()
        .map(|a| (a.job.0.as_u128(), a.machine.machine.to_string()))
        .collect()
}

// ---------------------------------------------------------------- rules

#[test]
fn a_fitting_job_goes_to_a_free_confirmed_machine() {
    let snap = simple(
        vec![machine("pc", "p1", "lab-a", printer_caps(&["PLA"]))],
        vec![job(1, "c1", pla_req(), "lab-a")],
        &["c1"],
    );
    snap.validate().unwrap();
    let out = plan(&snap, t0());
    assert_eq!(placed(&out), vec![(1, "p1".to_string())]);
    assert_eq!(out[0].pool.as_str(), "shared");
    assert_eq!(out[0].site.as_str(), "lab-a");
}

#[test]
fn a_machine_that_needs_attention_is_never_assigned() {
    let mut m = machine("pc", "p1", "lab-a", printer_caps(&["PLA"]));
    m.readiness = Readiness::NeedsAttention;
    let snap = simple(vec![m], vec![job(1, "c1", pla_req(), "lab-a")], &["c1"]);
    assert_eq!(plan(&snap, t0()), vec![]);
}

#[test]
fn a_cnc_job_needs_stock_loaded_and_zeroed_not_just_a_cleared_bed() {
    let mut m = machine("pc", "r1", "lab-a", router_caps());
    m.readiness = Readiness::Ready;
    let mut snap = simple(vec![m], vec![job(1, "c1", cnc_req(), "lab-a")], &["c1"]);
    assert_eq!(plan(&snap, t0()), vec![]);
    snap.machines[0].readiness = Readiness::StockLoadedAndZeroed;
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "r1".to_string())]);
}

#[test]
fn offline_and_busy_machines_are_never_assigned() {
    let mut off = machine("pc", "p1", "lab-a", printer_caps(&["PLA"]));
    off.online = false;
    let mut busy = machine("pc", "p2", "lab-a", printer_caps(&["PLA"]));
    busy.busy = true;
    let snap = simple(
        vec![off, busy],
        vec![job(1, "c1", pla_req(), "lab-a")],
        &["c1"],
    );
    assert_eq!(plan(&snap, t0()), vec![]);
}

#[test]
fn a_machine_that_does_not_fit_is_never_assigned() {
    let mut req = pla_req();
    req.material = Some("PETG".into());
    let snap = simple(
        vec![machine("pc", "p1", "lab-a", printer_caps(&["PLA"]))],
        vec![job(1, "c1", req, "lab-a")],
        &["c1"],
    );
    assert_eq!(plan(&snap, t0()), vec![]);
}

#[test]
fn a_cooperative_outside_every_pool_holding_the_machine_gets_nothing() {
    let snap = simple(
        vec![machine("pc", "p1", "lab-a", printer_caps(&["PLA"]))],
        vec![job(1, "outsider", pla_req(), "lab-a")],
        &["c1"],
    );
    assert_eq!(plan(&snap, t0()), vec![]);
}

#[test]
fn a_machine_that_rejected_the_job_is_not_offered_it_again() {
    let mut j = job(1, "c1", pla_req(), "lab-a");
    j.excluded_machines = vec![key("pc", "p1")];
    let snap = simple(
        vec![
            machine("pc", "p1", "lab-a", printer_caps(&["PLA"])),
            machine("pc", "p2", "lab-a", printer_caps(&["PLA"])),
        ],
        vec![j],
        &["c1"],
    );
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "p2".to_string())]);
}

#[test]
fn a_job_whose_estimate_exceeds_the_quota_left_waits() {
    let mut snap = simple(
        vec![
            machine("pc", "p1", "lab-a", printer_caps(&["PLA"])),
            machine("pc", "p2", "lab-a", printer_caps(&["PLA"])),
        ],
        vec![
            job(1, "c1", pla_req(), "lab-a"),
            job(2, "c1", pla_req(), "lab-a"),
        ],
        &["c1"],
    );
    // 2 h budget, 0.5 h used: room for one 1 h job, not two (the plan charges as it goes).
    snap.quotas = vec![Quota {
        cooperative: coop("c1"),
        machine_hours_per_period: 2,
        used_machine_seconds: 1800,
    }];
    assert_eq!(plan(&snap, t0()).len(), 1);
    snap.quotas[0].used_machine_seconds = 0;
    assert_eq!(plan(&snap, t0()).len(), 2);
}

#[test]
fn the_delivery_site_wins_then_its_region_then_the_nearest_site() {
    // Delivery at "home" (region north). "far-same-region" is 300 km away in region north,
    // "near-other-region" 20 km away in region south, "nearer-other" 10 km away in south.
    let sites = vec![
        site("home", "north", 52.0, 13.0),
        site("far-same-region", "north", 54.7, 13.0),
        site("near-other-region", "south", 51.82, 13.0),
        site("nearer-other", "south", 51.91, 13.0),
    ];
    let ms = vec![
        machine("a", "far", "far-same-region", printer_caps(&["PLA"])),
        machine("b", "near", "near-other-region", printer_caps(&["PLA"])),
        machine("c", "nearer", "nearer-other", printer_caps(&["PLA"])),
        machine("d", "home", "home", printer_caps(&["PLA"])),
    ];
    let refs: Vec<&MachineSnapshot> = ms.iter().collect();
    let mut snap = Snapshot {
        jobs: vec![job(1, "c1", pla_req(), "home")],
        machines: ms.clone(),
        sites,
        pools: vec![pool("p", &refs, &[("c1", 1)])],
        ..Snapshot::default()
    };
    snap.validate().unwrap();
    let pick = |snap: &Snapshot| plan(snap, t0())[0].machine.machine.to_string();
    assert_eq!(pick(&snap), "home");
    snap.machines.retain(|m| m.key.machine.as_str() != "home");
    assert_eq!(pick(&snap), "far");
    snap.machines.retain(|m| m.key.machine.as_str() != "far");
    assert_eq!(pick(&snap), "nearer");
    snap.machines.retain(|m| m.key.machine.as_str() != "nearer");
    assert_eq!(pick(&snap), "near");
}

#[test]
fn at_one_site_the_loaded_material_wins_then_the_longest_idle_machine() {
    let mut loaded = machine("pc", "p-loaded", "lab-a", printer_caps(&["PLA", "PETG"]));
    loaded.loaded_material = Some("pla".into());
    loaded.last_job_ended_at = Some(t0());
    let mut idle_long = machine("pc", "p-idle", "lab-a", printer_caps(&["PLA", "PETG"]));
    idle_long.loaded_material = Some("PETG".into());
    idle_long.last_job_ended_at = Some(t0() - Duration::days(3));
    let mut recent = machine("pc", "p-recent", "lab-a", printer_caps(&["PLA", "PETG"]));
    recent.loaded_material = Some("PETG".into());
    recent.last_job_ended_at = Some(t0() - Duration::hours(1));
    let snap = simple(
        vec![recent.clone(), idle_long.clone(), loaded.clone()],
        vec![job(1, "c1", pla_req(), "lab-a")],
        &["c1"],
    );
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "p-loaded".into())]);
    let snap = simple(
        vec![recent, idle_long],
        vec![job(1, "c1", pla_req(), "lab-a")],
        &["c1"],
    );
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "p-idle".into())]);
}

#[test]
fn the_cooperative_with_less_share_used_goes_first() {
    let mut snap = simple(
        vec![machine("pc", "p1", "lab-a", printer_caps(&["PLA"]))],
        vec![
            job(1, "aa", pla_req(), "lab-a"),
            job(2, "bb", pla_req(), "lab-a"),
        ],
        &["aa", "bb"],
    );
    snap.usage = vec![
        Usage {
            cooperative: coop("aa"),
            machine_seconds: 7200,
        },
        Usage {
            cooperative: coop("bb"),
            machine_seconds: 3600,
        },
    ];
    assert_eq!(placed(&plan(&snap, t0())), vec![(2, "p1".into())]);
    // With twice the weight, "aa" has used the same share as "bb": the id breaks the tie.
    snap.pools[0].members[0].weight = 2;
    snap.usage[1].machine_seconds = 3601;
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "p1".into())]);
}

#[test]
fn within_a_cooperative_priority_goes_first_then_age() {
    let mut old_low = job(1, "c1", pla_req(), "lab-a");
    old_low.submitted_at = t0() - Duration::hours(5);
    let mut young_high = job(2, "c1", pla_req(), "lab-a");
    young_high.priority = 5;
    let mut old_high = job(3, "c1", pla_req(), "lab-a");
    old_high.priority = 5;
    old_high.submitted_at = t0() - Duration::hours(1);
    let snap = simple(
        vec![
            machine("pc", "p1", "lab-a", printer_caps(&["PLA"])),
            machine("pc", "p2", "lab-a", printer_caps(&["PLA"])),
        ],
        vec![old_low, young_high, old_high],
        &["c1"],
    );
    let order: Vec<u128> = plan(&snap, t0())
        .iter()
        .map(|a| a.job.0.as_u128())
        .collect();
    assert_eq!(order, vec![3, 2]);
}

#[test]
fn a_job_waiting_past_the_starvation_limit_overtakes_priority_and_share() {
    let mut starving = job(1, "aa", pla_req(), "lab-a");
    starving.submitted_at = t0() - Duration::hours(49);
    let mut urgent = job(2, "bb", pla_req(), "lab-a");
    urgent.priority = 100;
    let mut snap = simple(
        vec![machine("pc", "p1", "lab-a", printer_caps(&["PLA"]))],
        vec![starving, urgent],
        &["aa", "bb"],
    );
    snap.usage = vec![Usage {
        cooperative: coop("aa"),
        machine_seconds: 1_000_000,
    }];
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "p1".into())]);
    snap.policy = Policy {
        starvation_after: Duration::hours(50),
    };
    assert_eq!(placed(&plan(&snap, t0())), vec![(2, "p1".into())]);
}

#[test]
fn unknown_sites_do_not_crash_the_plan_and_validate_names_them() {
    let mut snap = simple(
        vec![
            machine("pc", "p1", "nowhere", printer_caps(&["PLA"])),
            machine("pc", "p2", "lab-a", printer_caps(&["PLA"])),
        ],
        vec![job(1, "c1", pla_req(), "elsewhere")],
        &["c1"],
    );
    let err = snap.validate().unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
    assert_eq!(placed(&plan(&snap, t0())), vec![(1, "p2".into())]);
    snap.machines.remove(0);
    let err = snap.validate().unwrap_err();
    assert!(err.to_string().contains("elsewhere"), "{err}");
}

// ---------------------------------------------------------------- property tests

/// An independent, slow statement of eligibility (quota aside).
fn eligible(snap: &Snapshot, j: &QueuedJob, m: &MachineSnapshot) -> bool {
    m.online
        && !m.busy
        && m.readiness.admits(j.requirements.process)
        && snap.sites.iter().any(|s| s.id == m.site)
        && j.requirements.unmet_by(&m.capabilities).is_empty()
        && !j.excluded_machines.contains(&m.key)
        && snap.pools.iter().any(|p| {
            p.machines.contains(&m.key)
                && p.members.iter().any(|mm| mm.cooperative == j.cooperative)
        })
}

fn quota_limit(snap: &Snapshot, c: &CoopId) -> Option<u64> {
    snap.quotas
        .iter()
        .filter(|q| &q.cooperative == c)
        .map(|q| {
            q.limit_machine_seconds()
                .saturating_sub(q.used_machine_seconds)
        })
        .min()
}

/// The machine-choice key, restated.
fn choice_key(snap: &Snapshot, j: &QueuedJob, m: &MachineSnapshot) -> (bool, bool, f64, bool) {
    let home = snap.sites.iter().find(|s| s.id == j.delivery_site).unwrap();
    let there = snap.sites.iter().find(|s| s.id == m.site).unwrap();
    let loaded = match (&j.requirements.material, &m.loaded_material) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => false,
    };
    (
        there.id != home.id,
        there.region != home.region,
        home.location.distance_km(there.location),
        !loaded,
    )
}

prop_compose! {
    fn arb_machine(i: usize)(
        site in 0..4usize,
        kind in 0..3u8,
        online in proptest::bool::weighted(0.85),
        busy in proptest::bool::weighted(0.15),
        readiness in prop_oneof![
            Just(Readiness::NeedsAttention),
            Just(Readiness::Ready),
            Just(Readiness::StockLoadedAndZeroed)
        ],
        loaded in proptest::option::of(prop_oneof![Just("PLA"), Just("PETG")]),
        used in proptest::option::of(0..100i64),
        size in prop_oneof![Just(180.0), Just(250.0)],
    ) -> MachineSnapshot {
        let caps = match kind {
            0 => { let mut c = printer_caps(&["PLA"]); c.build_volume = cube(size, size, size); c }
            1 => { let mut c = printer_caps(&["PLA", "PETG"]); c.build_volume = cube(size, size, size); c }
            _ => router_caps(),
        };
        let mut m = machine(&format!("agent{}", i % 3), &format!("m{i:02}"), &format!("s{site}"), caps);
        m.online = online;
        m.busy = busy;
        m.readiness = readiness;
        m.loaded_material = loaded.map(String::from);
        m.last_job_ended_at = used.map(|h| t0() - Duration::hours(h));
        m
    }
}

prop_compose! {
    fn arb_job(i: usize)(
        c in 0..3usize,
        kind in 0..4u8,
        size in prop_oneof![Just(100.0), Just(200.0)],
        priority in 0..3i32,
        age_h in 0..60i64,
        est in 600..20_000u64,
        delivery in 0..4usize,
        excluded in proptest::option::of(0..12usize),
    ) -> QueuedJob {
        let mut req = match kind {
            0 => pla_req(),
            1 => { let mut r = pla_req(); r.material = Some("petg".into()); r }
            2 => { let mut r = pla_req(); r.material = None; r }
            _ => cnc_req(),
        };
        if req.process == Process::Fdm {
            req.bounds = Some(cube(size, size, 10.0));
        }
        let mut j = job(i as u128 + 1, &format!("c{c}"), req, &format!("s{delivery}"));
        j.priority = priority;
        j.submitted_at = t0() - Duration::hours(age_h);
        j.estimated_machine_seconds = est;
        j.excluded_machines = excluded.map(|e| vec![key(&format!("agent{}", e % 3), &format!("m{e:02}"))]).unwrap_or_default();
        j
    }
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let machines = (0..12usize).prop_flat_map(|n| (0..n).map(arb_machine).collect::<Vec<_>>());
    let jobs = (0..20usize).prop_flat_map(|n| (0..n).map(arb_job).collect::<Vec<_>>());
    // Pool membership: bit i of `pa` puts machine i in pool "pa" (else in "pb").
    (
        machines,
        jobs,
        any::<u16>(),
        0..4u32,
        0..4u32,
        proptest::option::of(0..20_000u64),
        0..30_000u64,
    )
        .prop_map(|(machines, jobs, pa, w0, w1, quota_left, usage)| {
            let (in_a, in_b): (Vec<_>, Vec<_>) = machines
                .iter()
                .enumerate()
                .partition(|(i, _)| pa & (1 << i) != 0);
            let in_a: Vec<&MachineSnapshot> = in_a.into_iter().map(|(_, m)| m).collect();
            let in_b: Vec<&MachineSnapshot> = in_b.into_iter().map(|(_, m)| m).collect();
            let pools = vec![
                pool("pa", &in_a, &[("c0", w0), ("c1", 1)]),
                pool("pb", &in_b, &[("c1", w1), ("c2", 2)]),
            ];
            Snapshot {
                sites: vec![
                    site("s0", "north", 52.0, 13.0),
                    site("s1", "north", 52.5, 13.4),
                    site("s2", "south", 48.1, 11.6),
                    site("s3", "south", 48.4, 10.9),
                ],
                pools,
                quotas: quota_left
                    .map(|q| Quota {
                        cooperative: coop("c1"),
                        machine_hours_per_period: 5,
                        used_machine_seconds: 18_000 - q.min(18_000),
                    })
                    .into_iter()
                    .collect(),
                usage: vec![Usage {
                    cooperative: coop("c0"),
                    machine_seconds: usage,
                }],
                machines,
                jobs,
                policy: Policy::default(),
            }
        })
}

fn reversed(snap: &Snapshot) -> Snapshot {
    let mut r = snap.clone();
    r.jobs.reverse();
    r.machines.reverse();
    r.sites.reverse();
    r.pools.reverse();
    for p in &mut r.pools {
        p.machines.reverse();
        p.members.reverse();
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_plan_is_the_same_for_the_same_snapshot_in_any_order(snap in arb_snapshot()) {
        let a = plan(&snap, t0());
        prop_assert_eq!(&a, &plan(&snap, t0()));
        prop_assert_eq!(&a, &plan(&reversed(&snap), t0()));
    }

    #[test]
    fn an_unconfirmed_machine_is_never_assigned(snap in arb_snapshot()) {
        let unconfirmed: HashSet<&MachineKey> = snap
            .machines
            .iter()
            .filter(|m| m.readiness == Readiness::NeedsAttention)
            .map(|m| &m.key)
            .collect();
        for a in plan(&snap, t0()) {
            prop_assert!(!unconfirmed.contains(&a.machine), "{} needs attention", a.machine);
            let m = snap.machines.iter().find(|m| m.key == a.machine).unwrap();
            let j = snap.jobs.iter().find(|j| j.id == a.job).unwrap();
            if j.requirements.process == Process::Cnc {
                prop_assert_eq!(m.readiness, Readiness::StockLoadedAndZeroed);
            }
        }
    }

    #[test]
    fn explain_agrees_with_plan(snap in arb_snapshot()) {
        // A job the plan places was ready to start; a job explained as blocked is never placed.
        let placed: HashSet<JobId> = plan(&snap, t0()).iter().map(|a| a.job).collect();
        for j in &snap.jobs {
            let e = explain(&snap, j.id).unwrap();
            prop_assert_eq!(e.fitting, e.available + e.busy + e.offline + e.awaiting_operator + e.rejected);
            if placed.contains(&j.id) {
                prop_assert_eq!(e.reason, WaitReason::ReadyToStart, "{:?}", e);
            }
        }
    }

    #[test]
    fn no_machine_gets_two_jobs_and_no_job_two_machines(snap in arb_snapshot()) {
        let a = plan(&snap, t0());
        let machines: HashSet<_> = a.iter().map(|x| &x.machine).collect();
        let jobs: HashSet<_> = a.iter().map(|x| x.job).collect();
        prop_assert_eq!(machines.len(), a.len());
        prop_assert_eq!(jobs.len(), a.len());
    }

    #[test]
    fn every_assignment_is_eligible_and_within_quota(snap in arb_snapshot()) {
        let a = plan(&snap, t0());
        let mut charged: HashMap<CoopId, u64> = HashMap::new();
        for x in &a {
            let j = snap.jobs.iter().find(|j| j.id == x.job).unwrap();
            let m = snap.machines.iter().find(|m| m.key == x.machine).unwrap();
            prop_assert!(eligible(&snap, j, m), "{j:?} on {m:?}");
            prop_assert!(m.readiness != Readiness::NeedsAttention);
            let p = snap.pools.iter().find(|p| p.id == x.pool).unwrap();
            prop_assert!(p.machines.contains(&m.key));
            prop_assert!(p.members.iter().any(|mm| mm.cooperative == j.cooperative));
            *charged.entry(j.cooperative.clone()).or_default() += j.estimated_machine_seconds;
        }
        for (c, total) in charged {
            if let Some(limit) = quota_limit(&snap, &c) {
                prop_assert!(total <= limit, "{c} charged {total} > {limit}");
            }
        }
    }

    #[test]
    fn no_waiting_job_is_left_with_an_eligible_free_machine(snap in arb_snapshot()) {
        let a = plan(&snap, t0());
        let used_machines: HashSet<_> = a.iter().map(|x| &x.machine).collect();
        let placed_jobs: HashSet<_> = a.iter().map(|x| x.job).collect();
        let mut charged: HashMap<&CoopId, u64> = HashMap::new();
        for x in &a {
            *charged.entry(&x.cooperative).or_default() += x.estimated_machine_seconds;
        }
        for j in snap.jobs.iter().filter(|j| !placed_jobs.contains(&j.id)) {
            let room = quota_limit(&snap, &j.cooperative)
                .map(|l| l.saturating_sub(charged.get(&j.cooperative).copied().unwrap_or(0)));
            if room.is_some_and(|r| j.estimated_machine_seconds > r) {
                continue;
            }
            for m in snap.machines.iter().filter(|m| !used_machines.contains(&m.key)) {
                prop_assert!(!eligible(&snap, j, m), "job {} waits while {} is free", j.id, m.key);
            }
        }
    }

    #[test]
    fn a_cooperative_s_jobs_go_in_priority_then_age_order(snap in arb_snapshot()) {
        // Two jobs of one cooperative that need the same thing: if the one behind in the
        // order got a machine, the one ahead (no bigger an estimate) got one too.
        let a = plan(&snap, t0());
        let placed: HashSet<JobId> = a.iter().map(|x| x.job).collect();
        let limit = snap.policy.starvation_after;
        let rank = |j: &QueuedJob| {
            let starving = t0() - j.submitted_at >= limit;
            if starving {
                (0, 0, j.submitted_at, j.id)
            } else {
                (1, -j.priority, j.submitted_at, j.id)
            }
        };
        for ahead in &snap.jobs {
            for behind in &snap.jobs {
                let alike = ahead.cooperative == behind.cooperative
                    && ahead.requirements == behind.requirements
                    && ahead.delivery_site == behind.delivery_site
                    && ahead.excluded_machines.is_empty()
                    && behind.excluded_machines.is_empty()
                    && ahead.estimated_machine_seconds <= behind.estimated_machine_seconds;
                if alike && rank(ahead) < rank(behind) && placed.contains(&behind.id) {
                    prop_assert!(placed.contains(&ahead.id), "{} waits, {} went", ahead.id, behind.id);
                }
            }
        }
    }

    #[test]
    fn no_better_machine_is_passed_over(snap in arb_snapshot()) {
        let a = plan(&snap, t0());
        let used_machines: HashSet<_> = a.iter().map(|x| &x.machine).collect();
        for x in &a {
            let j = snap.jobs.iter().find(|j| j.id == x.job).unwrap();
            let m = snap.machines.iter().find(|m| m.key == x.machine).unwrap();
            let mine = choice_key(&snap, j, m);
            for other in snap.machines.iter().filter(|o| !used_machines.contains(&o.key) && eligible(&snap, j, o)) {
                let theirs = choice_key(&snap, j, other);
                let better = match (theirs.0, theirs.1).cmp(&(mine.0, mine.1)) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal if (theirs.2 - mine.2).abs() > 1e-9 => theirs.2 < mine.2,
                    std::cmp::Ordering::Equal => {
                        (theirs.3, other.last_job_ended_at) < (mine.3, m.last_job_ended_at)
                    }
                };
                prop_assert!(!better, "{} chose {} over free {}", j.id, m.key, other.key);
            }
        }
    }
}

// ---------------------------------------------------------------- simulation

/// (pool, number of machines, members with weights).
type PoolSpec<'a> = (&'a str, usize, &'a [(&'a str, u32)]);

/// A fleet in virtual time: jobs end at their estimate, the bed is confirmed at once, and
/// `plan` runs at every job end. Usage is charged at assignment and forgotten after `window`.
struct Sim {
    snap: Snapshot,
    now: OffsetDateTime,
    /// (end time, machine index, job).
    running: Vec<(OffsetDateTime, usize, QueuedJob)>,
    charges: Vec<(OffsetDateTime, CoopId, u64)>,
    window: Duration,
    served: BTreeMap<CoopId, u64>,
    started: HashMap<JobId, OffsetDateTime>,
    next_id: u128,
    rng: u64,
}

impl Sim {
    fn new(machines: usize, members: &[(&str, u32)], window: Duration) -> Self {
        Self::with_pools(&[("shared", machines, members)], window)
    }

    /// Pools of identical PLA printers at one site.
    fn with_pools(pools: &[PoolSpec<'_>], window: Duration) -> Self {
        let mut ms: Vec<MachineSnapshot> = Vec::new();
        let mut snap_pools = Vec::new();
        for (name, count, members) in pools {
            let first = ms.len();
            for i in first..first + count {
                ms.push(machine(
                    &format!("pc{}", i / 10),
                    &format!("m{i:03}"),
                    "lab-a",
                    printer_caps(&["PLA"]),
                ));
            }
            let refs: Vec<&MachineSnapshot> = ms[first..].iter().collect();
            snap_pools.push(pool(name, &refs, members));
        }
        Self {
            snap: Snapshot {
                sites: vec![site("lab-a", "north", 52.0, 13.0)],
                machines: ms,
                pools: snap_pools,
                ..Snapshot::default()
            },
            now: t0(),
            running: Vec::new(),
            charges: Vec::new(),
            window,
            served: BTreeMap::new(),
            started: HashMap::new(),
            next_id: 1,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn random(&mut self) -> u64 {
        // splitmix64: a fixed sequence, so the run is reproducible.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn submit(&mut self, c: &str, priority: i32) -> JobId {
        let est = 1800 + self.random() % (4 * 3600);
        let mut j = job(self.next_id, c, pla_req(), "lab-a");
        self.next_id += 1;
        j.submitted_at = self.now;
        j.priority = priority;
        j.estimated_machine_seconds = est;
        let id = j.id;
        self.snap.jobs.push(j);
        id
    }

    fn step(&mut self) {
        let horizon = self.now - self.window;
        self.charges.retain(|(t, _, _)| *t > horizon);
        let mut usage: BTreeMap<CoopId, u64> = BTreeMap::new();
        for (_, c, s) in &self.charges {
            *usage.entry(c.clone()).or_default() += s;
        }
        self.snap.usage = usage
            .into_iter()
            .map(|(cooperative, machine_seconds)| Usage {
                cooperative,
                machine_seconds,
            })
            .collect();
        for a in plan(&self.snap, self.now) {
            let mi = self
                .snap
                .machines
                .iter()
                .position(|m| m.key == a.machine)
                .unwrap();
            assert!(!self.snap.machines[mi].busy, "double booking");
            assert_ne!(self.snap.machines[mi].readiness, Readiness::NeedsAttention);
            self.snap.machines[mi].busy = true;
            self.snap.machines[mi].readiness = Readiness::NeedsAttention;
            let ji = self.snap.jobs.iter().position(|j| j.id == a.job).unwrap();
            let j = self.snap.jobs.swap_remove(ji);
            let end = self.now + Duration::seconds(j.estimated_machine_seconds as i64);
            self.charges
                .push((self.now, j.cooperative.clone(), j.estimated_machine_seconds));
            self.started.insert(j.id, self.now);
            self.running.push((end, mi, j));
        }
        // Advance to the next job end; the operator clears the bed immediately.
        let (i, _) = self
            .running
            .iter()
            .enumerate()
            .min_by_key(|(_, (end, mi, _))| (*end, *mi))
            .expect("something runs");
        let (end, mi, j) = self.running.swap_remove(i);
        self.now = end;
        *self.served.entry(j.cooperative.clone()).or_default() += j.estimated_machine_seconds;
        let m = &mut self.snap.machines[mi];
        m.busy = false;
        m.readiness = Readiness::Ready;
        m.last_job_ended_at = Some(end);
    }

    fn queued(&self, c: &str) -> usize {
        self.snap
            .jobs
            .iter()
            .filter(|j| j.cooperative.as_str() == c)
            .count()
    }
}

#[test]
fn two_cooperatives_weighted_two_to_one_get_machine_hours_two_to_one() {
    let mut sim = Sim::new(24, &[("big", 2), ("small", 1)], Duration::days(7));
    let end = t0() + Duration::days(60);
    while sim.now < end {
        // Both submit without pause: their queues never run dry.
        for c in ["big", "small"] {
            while sim.queued(c) < 30 {
                sim.submit(c, 0);
            }
        }
        sim.step();
    }
    let big = sim.served[&coop("big")] as f64;
    let small = sim.served[&coop("small")] as f64;
    let ratio = big / small;
    assert!(
        (ratio - 2.0).abs() <= 0.1,
        "machine-hours big {:.0} h, small {:.0} h: ratio {ratio:.3}, want 2 ± 5%",
        big / 3600.0,
        small / 3600.0
    );
    // And the fleet was kept busy: at least 95% of the machine time was used.
    let capacity = 24.0 * 60.0 * 86_400.0;
    assert!(
        (big + small) / capacity > 0.95,
        "utilisation {}",
        (big + small) / capacity
    );
}

#[test]
fn a_cooperative_in_two_pools_gets_its_combined_entitlement() {
    // "commons" (10 printers): "solo" and "duo" weight 1 each. "duo-own" (10 printers): only
    // "duo". Entitlements: solo 5 machines, duo 5 + 10 = 15, so 1:3 of the machine-hours,
    // although both compete equally inside "commons".
    let mut sim = Sim::with_pools(
        &[
            ("commons", 10, &[("solo", 1), ("duo", 1)]),
            ("duo-own", 10, &[("duo", 1)]),
        ],
        Duration::days(7),
    );
    let end = t0() + Duration::days(40);
    while sim.now < end {
        for c in ["solo", "duo"] {
            while sim.queued(c) < 25 {
                sim.submit(c, 0);
            }
        }
        sim.step();
    }
    let solo = sim.served[&coop("solo")] as f64;
    let duo = sim.served[&coop("duo")] as f64;
    let ratio = duo / solo;
    assert!(
        (ratio - 3.0).abs() <= 0.15,
        "machine-hours duo {:.0} h, solo {:.0} h: ratio {ratio:.3}, want 3 ± 5%",
        duo / 3600.0,
        solo / 3600.0
    );
}

#[test]
fn a_low_priority_job_under_a_stream_of_urgent_work_starts_within_the_starvation_bound() {
    let limit = Duration::hours(12);
    let longest_job = Duration::hours(5);
    let run = |policy: Policy| {
        let mut sim = Sim::new(2, &[("solo", 1)], Duration::days(7));
        sim.snap.policy = policy;
        let low = sim.submit("solo", 0);
        let end = t0() + Duration::days(10);
        while sim.now < end && !sim.started.contains_key(&low) {
            while sim.queued("solo") < 5 {
                sim.submit("solo", 10);
            }
            sim.step();
        }
        sim.started.get(&low).copied()
    };
    let started = run(Policy {
        starvation_after: limit,
    })
    .expect("the low-priority job never started");
    assert!(
        started <= t0() + limit + longest_job,
        "started after {}",
        started - t0()
    );
    // Without the guard it would have starved for the whole run: the test can fail.
    assert_eq!(
        run(Policy {
            starvation_after: Duration::days(365)
        }),
        None
    );
}

#[test]
fn a_snapshot_round_trips_through_json_with_rfc3339_times() {
    let mut m = machine("pc", "p1", "lab-a", printer_caps(&["PLA"]));
    m.last_job_ended_at = Some(t0());
    let snap = simple(vec![m], vec![job(1, "c1", pla_req(), "lab-a")], &["c1"]);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["jobs"][0]["submitted_at"], "2027-01-15T08:00:00Z");
    assert_eq!(json["policy"]["starvation_after_secs"], 172_800);
    let back: Snapshot = serde_json::from_value(json).unwrap();
    assert_eq!(back, snap);
}

/// The worked example of `docs/cooperatives.md`, step by step.
#[test]
fn the_worked_example_of_the_cooperatives_guide_plans_as_documented() {
    let sites = vec![
        site("lab-north", "upper-valley", 46.948, 7.447),
        site("lab-east", "upper-valley", 46.990, 7.600),
        site("lab-south", "lower-valley", 46.758, 7.628),
    ];
    let mut busy_petg = machine("south-pc", "mk4-c", "lab-south", printer_caps(&["PETG"]));
    busy_petg.busy = true;
    let mut router = machine("east-pc", "router-1", "lab-east", router_caps());
    router.readiness = Readiness::NeedsAttention;
    let valley = vec![
        machine(
            "north-pc",
            "mk4-a",
            "lab-north",
            printer_caps(&["PLA", "PETG"]),
        ),
        machine("north-pc", "mk4-b", "lab-north", printer_caps(&["PLA"])),
        machine(
            "east-pc",
            "xl-1",
            "lab-east",
            printer_caps(&["PLA", "PETG"]),
        ),
        router,
        busy_petg,
        machine("south-pc", "mk4-d", "lab-south", printer_caps(&["PLA"])),
    ];
    let mut valley_machines = valley.clone();
    valley_machines[0].busy = true; // mk4-a is printing
    let school = vec![
        machine("school-pc", "school-1", "lab-south", printer_caps(&["PLA"])),
        machine("school-pc", "school-2", "lab-south", printer_caps(&["PLA"])),
    ];
    let mut school_machines = school.clone();
    school_machines[1].readiness = Readiness::NeedsAttention;
    let hours = |h: u64| h * 3600;
    let mk = |n: u128, c: &str, material: &str, h: u64, prio: i32, to: &str| {
        let mut req = pla_req();
        req.material = Some(material.into());
        let mut j = job(n, c, req, to);
        j.estimated_machine_seconds = hours(h);
        j.priority = prio;
        j
    };
    let snap = Snapshot {
        jobs: vec![
            mk(1, "bike-kitchen", "PLA", 3, 0, "lab-north"), // B1
            mk(2, "bike-kitchen", "PETG", 5, 0, "lab-north"), // B2
            mk(3, "toy-library", "PLA", 4, 0, "lab-south"),  // T1
            mk(4, "toy-library", "PLA", 2, 1, "lab-north"),  // T2
            mk(5, "school-makers", "PLA", 1, 0, "lab-south"), // S1
        ],
        machines: valley_machines.into_iter().chain(school_machines).collect(),
        sites,
        pools: vec![
            pool(
                "valley",
                &valley.iter().collect::<Vec<_>>(),
                &[("bike-kitchen", 2), ("toy-library", 1)],
            ),
            pool(
                "school",
                &school.iter().collect::<Vec<_>>(),
                &[("school-makers", 1), ("toy-library", 1)],
            ),
        ],
        usage: vec![
            Usage {
                cooperative: coop("bike-kitchen"),
                machine_seconds: hours(300),
            },
            Usage {
                cooperative: coop("toy-library"),
                machine_seconds: hours(120),
            },
            Usage {
                cooperative: coop("school-makers"),
                machine_seconds: hours(10),
            },
        ],
        quotas: vec![Quota {
            cooperative: coop("toy-library"),
            machine_hours_per_period: 200,
            used_machine_seconds: hours(195),
        }],
        policy: Policy::default(),
    };
    snap.validate().unwrap();
    let out = plan(&snap, t0());
    let got: Vec<(u128, &str, &str)> = out
        .iter()
        .map(|a| {
            (
                a.job.0.as_u128(),
                a.machine.machine.as_str(),
                a.pool.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (5, "school-1", "school"), // S1: school-makers has used the least of its share
            (4, "mk4-b", "valley"),    // T2: toy-library next, its priority-1 job first
            (1, "xl-1", "valley"),     // B1: T1 would break toy's quota; lab-north is full
        ]
    );
}

#[test]
fn a_machine_address_reads_back_from_its_agent_slash_machine_form() {
    let k = key("north-pc", "mk4-a");
    assert_eq!(k.to_string(), "north-pc/mk4-a");
    assert_eq!("north-pc/mk4-a".parse::<MachineKey>(), Ok(k));
    let err = "north-pc".parse::<MachineKey>().unwrap_err();
    assert!(err.to_string().contains("agent/machine"), "{err}");
    let err = "north-pc/mk4/a".parse::<MachineKey>().unwrap_err();
    assert!(err.to_string().contains("machine in"), "{err}");
    assert!("Pc/m1".parse::<MachineKey>().is_err());
}

#[test]
fn explain_names_the_first_thing_a_waiting_job_lacks() {
    let mut petg = pla_req();
    petg.material = Some("PETG".into());
    let mut snap = simple(
        vec![
            machine("pc", "p1", "lab-a", printer_caps(&["PLA"])),
            machine("pc", "p2", "lab-a", printer_caps(&["PLA", "PETG"])),
        ],
        vec![
            job(1, "c1", petg, "lab-a"),
            job(2, "outsider", pla_req(), "lab-a"),
        ],
        &["c1"],
    );
    let why = |snap: &Snapshot, n: u128| explain(snap, JobId(Uuid::from_u128(n))).unwrap();
    assert_eq!(why(&snap, 2).reason, WaitReason::NoPool);
    assert_eq!(why(&snap, 1).reason, WaitReason::ReadyToStart);
    assert_eq!(why(&snap, 1).available, 1);

    snap.machines[1].readiness = Readiness::NeedsAttention;
    let e = why(&snap, 1);
    assert_eq!(e.reason, WaitReason::MachinesUnavailable);
    assert_eq!(e.awaiting_operator, 1);

    snap.quotas = vec![Quota {
        cooperative: coop("c1"),
        machine_hours_per_period: 1,
        used_machine_seconds: 1,
    }];
    assert_eq!(why(&snap, 1).reason, WaitReason::QuotaExhausted);

    snap.machines.remove(1);
    let e = why(&snap, 1);
    assert_eq!(e.reason, WaitReason::NoMachineFits);
    let (closest, unmet) = e.closest_misfit.unwrap();
    assert_eq!(closest, key("pc", "p1"));
    assert_eq!(unmet.len(), 1);
    assert!(unmet[0].to_string().contains("needs PETG"), "{}", unmet[0]);
    assert!(explain(&snap, JobId(Uuid::from_u128(99))).is_none());
}
