//! The placement algorithm behind [`plan`].
//!
//! Shape: index the free, confirmed machines once into buckets, one per cooperative and
//! kind of job (process, G-code flavour, material), so a job only ever looks at machines
//! its cooperative may use and that run its process and material. Each bucket is split per
//! site, each per-site list pre-sorted by the machine tie-breaks (material loaded, least
//! recently used, address), and the bucket keeps the list of its sites that still have a
//! free machine. For each job, in fair-share order, those sites are ranked for the job's
//! delivery site (same site, same region, distance by chord length on the unit sphere,
//! which orders exactly as great-circle distance without trigonometry) and the first
//! eligible machine is taken. A taken machine is counted out of every bucket it sits in,
//! so a bucket with nothing free is skipped in O(1); once the fleet is full each remaining
//! job costs an array lookup.

use std::borrow::Cow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use munifab_protocol::{Flavour, JobId, Process, Requirements};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ids::{CoopId, PoolId, RegionId, SiteId};
use super::snapshot::{GeoPoint, MachineKey, MachineSnapshot, Snapshot};

/// One decision: start `job` on `machine`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job to dispatch.
    pub job: JobId,
    /// Its cooperative (charged with the estimate).
    pub cooperative: CoopId,
    /// The machine chosen.
    pub machine: MachineKey,
    /// The machine's site.
    pub site: SiteId,
    /// The pool through which the cooperative uses the machine (the one where it has the
    /// highest weight, then the smallest id); this is the pool the ledger entry names.
    pub pool: PoolId,
    /// The estimate charged to fair share and quota.
    pub estimated_machine_seconds: u64,
}

/// Decides which queued jobs start on which free machines now.
///
/// Pure and deterministic: the same snapshot (in any order of its lists) and `now` give the
/// same assignments in the same order. `now` only ages jobs; the clock is the caller's.
///
/// # Rules
///
/// A machine is **eligible** for a job when it is online, not busy, confirmed by an
/// operator ([`Readiness::admits`](super::Readiness::admits): CNC needs stock loaded and
/// zeroed), its capabilities fit ([`Requirements::unmet_by`](munifab_protocol::Requirements::unmet_by)
/// is empty), a pool holding it lists the job's cooperative, the cooperative's quota still
/// covers the job's estimate, and its agent has not rejected the job before. No machine gets
/// two jobs; a job that finds no eligible free machine stays queued. The plan is maximal:
/// when it returns, no queued job has an eligible machine left free.
///
/// **Job order**: first the starving jobs (waited at least
/// [`Policy::starvation_after`](super::Policy::starvation_after)), oldest first. Then
/// repeatedly the cooperative with the smallest *share used* = machine-seconds in the
/// window (plus what this plan already gave it) ÷ its entitlement, where the entitlement is
/// Σ over its pools of weight ÷ total weight of the pool × machines in the pool (so a
/// cooperative with weight 2 in a pool shared with one of weight 1 is entitled to two thirds
/// of it). That cooperative's next job goes, by priority (high first), then age (old
/// first), then id. Each placement raises the share used, so the turn passes on.
///
/// **Machine choice** among eligible machines: the job's delivery site, then its region,
/// then the nearest site by great-circle distance, then a machine with the job's material
/// already loaded, then the machine idle the longest (never used first), then the smallest
/// machine address.
///
/// # Why no job starves
///
/// Take a queued job J whose cooperative keeps quota for it and for which some machine in
/// the fleet is eligible whenever it is free and confirmed. The store runs `plan` on every
/// change that frees a machine. Before J has waited `starvation_after`, fair share alone
/// already serves its cooperative: a cooperative that receives nothing sees its share used
/// fall as the window slides while the others' rise, so its turn comes. Within the
/// cooperative, a stream of higher-priority work could keep J waiting, so once J has
/// waited `starvation_after` it leaves the fair-share order and joins the starving phase,
/// which runs before every other job and is ordered by submission time. Only the jobs
/// submitted before J can be ahead of it there, and they are finitely many; every time a
/// machine that can run J becomes free, J or one of those older jobs takes it and leaves the
/// queue. So J starts after at most (older starving jobs + 1) such releases: its wait is
/// bounded. The price is that a cooperative flooding the queue beyond its share can have its
/// oldest jobs served out of share order; `starvation_after` (48 h by default) sets where
/// that trade is made. `tests/scheduler.rs` checks both halves by simulation.
pub fn plan(snapshot: &Snapshot, now: OffsetDateTime) -> Vec<Assignment> {
    let mut planner = Planner::new(snapshot);
    let order = planner.job_order(now);
    let mut out = Vec::new();
    // Starving jobs first, oldest first.
    for &j in &order.starving {
        if let Some(a) = planner.try_place(j) {
            out.push(a);
        }
    }
    // Then weighted fair share between cooperatives, re-ranked after every job.
    let mut heap: BinaryHeap<Turn> = order
        .per_coop
        .iter()
        .enumerate()
        .filter(|(_, jobs)| !jobs.is_empty())
        .map(|(c, _)| planner.turn(c as u32))
        .collect();
    let mut cursor = vec![0usize; order.per_coop.len()];
    while let Some(Turn { coop, .. }) = heap.pop() {
        let c = coop as usize;
        let j = order.per_coop[c][cursor[c]];
        cursor[c] += 1;
        if let Some(a) = planner.try_place(j) {
            out.push(a);
        }
        if cursor[c] < order.per_coop[c].len() {
            heap.push(planner.turn(coop));
        }
    }
    out
}

/// A cooperative's place in the fair-share heap (the smallest share used pops first).
#[derive(Debug, Clone, Copy)]
struct Turn {
    share_used: f64,
    used: u64,
    coop: u32,
}

impl Turn {
    fn rank(&self, other: &Self) -> Ordering {
        self.share_used
            .total_cmp(&other.share_used)
            .then(self.used.cmp(&other.used))
            .then(self.coop.cmp(&other.coop))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.rank(other) == Ordering::Equal
    }
}
impl Eq for Turn {}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Turn {
    // BinaryHeap is a max-heap; the smallest rank must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank(self)
    }
}

/// Indices into `snapshot.jobs`, in the order they will be considered.
#[derive(Debug)]
struct JobOrder {
    starving: Vec<usize>,
    per_coop: Vec<Vec<usize>>,
}

/// What a job looks up once: its cooperative, its bucket, its delivery site.
#[derive(Debug, Clone, Copy)]
struct Prep {
    coop: u32,
    bucket: Option<u32>,
    delivery: Option<u32>,
}

/// The machines one cooperative may use for one kind of job: (cooperative, material id or
/// `None` for jobs that name no material, process, flavour). Integer keys: hashing them is
/// cheap, and the map grows with the buckets that exist, not with every combination.
type BucketKey = (u32, Option<u32>, Process, Flavour);

#[derive(Debug)]
struct Bucket {
    free: u32,
    /// Sites holding the bucket's machines, sorted by (region, site).
    sites: Vec<BucketSite>,
    /// Slots of `sites` that still have a free machine.
    active: Vec<u32>,
}

#[derive(Debug)]
struct BucketSite {
    region: u32,
    site: u32,
    free: u32,
    /// Position in `Bucket::active` while `free > 0`.
    active_at: u32,
    /// (candidate, pool through which the bucket's cooperative uses it), best first.
    machines: Vec<(u32, u32)>,
}

/// A free, confirmed, online machine at a known site.
#[derive(Debug)]
struct Candidate<'a> {
    machine: &'a MachineSnapshot,
    site: u32,
    /// (bucket, slot in that bucket's `sites`) for every bucket holding this machine.
    buckets: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, Copy)]
struct SiteGeo {
    region: u32,
    /// Position on the unit sphere: the chord between two points grows with their
    /// great-circle distance, so it orders sites the same way.
    unit: [f64; 3],
}

impl SiteGeo {
    fn new(region: u32, p: GeoPoint) -> Self {
        let (lat, lon) = (p.lat_deg.to_radians(), p.lon_deg.to_radians());
        Self {
            region,
            unit: [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()],
        }
    }

    fn chord2(&self, other: &SiteGeo) -> f64 {
        let d = [
            self.unit[0] - other.unit[0],
            self.unit[1] - other.unit[1],
            self.unit[2] - other.unit[2],
        ];
        d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    }
}

/// A site's rank for one job: tier 0 the delivery site, 1 its region, 2 elsewhere (3 when
/// the delivery site is unknown), then distance, then site index (= id order).
#[derive(Debug, Clone, Copy)]
struct SiteRank {
    tier: u8,
    chord2: f64,
    site: u32,
    slot: u32,
}

impl SiteRank {
    fn cmp(&self, other: &Self) -> Ordering {
        self.tier
            .cmp(&other.tier)
            .then(self.chord2.total_cmp(&other.chord2))
            .then(self.site.cmp(&other.site))
    }
}

#[derive(Debug)]
struct Planner<'a> {
    snapshot: &'a Snapshot,
    geo: Vec<SiteGeo>,
    pools: Vec<&'a PoolId>,
    coops: Vec<&'a CoopId>,
    entitlement: Vec<f64>,
    used: Vec<u64>,
    quota_left: Vec<Option<u64>>,
    candidates: Vec<Candidate<'a>>,
    candidate_index: HashMap<&'a MachineKey, u32>,
    taken: Vec<bool>,
    buckets: Vec<Bucket>,
    prep: Vec<Prep>,
    scratch: Vec<SiteRank>,
}

/// Materials compare case-insensitively; borrow when already upper case (the norm).
fn upper(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        Cow::Owned(s.to_ascii_uppercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Index of `key` in a sorted, deduplicated list. Binary search rather than hashing: the
/// per-job lookups are the hot path, and strings from makers cannot degrade it.
fn position<T: Ord + ?Sized, U: std::borrow::Borrow<T>>(sorted: &[U], key: &T) -> Option<u32> {
    sorted
        .binary_search_by(|x| x.borrow().cmp(key))
        .ok()
        .map(|i| i as u32)
}

impl<'a> Planner<'a> {
    fn new(snapshot: &'a Snapshot) -> Self {
        let mut sites: Vec<_> = snapshot.sites.iter().collect();
        sites.sort_by(|a, b| a.id.cmp(&b.id));
        sites.dedup_by(|a, b| a.id == b.id);
        let site_ids: Vec<&SiteId> = sites.iter().map(|s| &s.id).collect();
        let mut regions: Vec<&RegionId> = sites.iter().map(|s| &s.region).collect();
        regions.sort();
        regions.dedup();
        let geo: Vec<SiteGeo> = sites
            .iter()
            .map(|s| {
                let region = position(&regions, &s.region).expect("collected above");
                SiteGeo::new(region, s.location)
            })
            .collect();

        let mut coops: Vec<&CoopId> = snapshot
            .jobs
            .iter()
            .map(|j| &j.cooperative)
            .chain(
                snapshot
                    .pools
                    .iter()
                    .flat_map(|p| p.members.iter().map(|m| &m.cooperative)),
            )
            .chain(snapshot.usage.iter().map(|u| &u.cooperative))
            .chain(snapshot.quotas.iter().map(|q| &q.cooperative))
            .collect();
        coops.sort_unstable();
        coops.dedup();
        let coop_of = |c: &CoopId| position(&coops, c).expect("collected above");

        let mut used = vec![0u64; coops.len()];
        for u in &snapshot.usage {
            let c = coop_of(&u.cooperative) as usize;
            used[c] = used[c].saturating_add(u.machine_seconds);
        }
        let mut quota_left: Vec<Option<u64>> = vec![None; coops.len()];
        for q in &snapshot.quotas {
            let c = coop_of(&q.cooperative) as usize;
            let left = q
                .limit_machine_seconds()
                .saturating_sub(q.used_machine_seconds);
            // Two quotas for one cooperative: the tighter one holds.
            quota_left[c] = Some(quota_left[c].map_or(left, |l| l.min(left)));
        }

        // Candidates, sorted by (region, site, address): buckets then list their sites in
        // region order without a lookup, and within a site index order is address order,
        // the last tie-break.
        let mut candidates: Vec<Candidate<'a>> = snapshot
            .machines
            .iter()
            .filter(|m| m.online && !m.busy && m.readiness != super::Readiness::NeedsAttention)
            .filter_map(|m| {
                Some(Candidate {
                    machine: m,
                    site: position(&site_ids, &m.site)?,
                    buckets: Vec::new(),
                })
            })
            .collect();
        // A machine listed twice (an invalid snapshot) is considered once, never booked twice.
        candidates.sort_by(|a, b| a.machine.key.cmp(&b.machine.key));
        candidates.dedup_by(|a, b| a.machine.key == b.machine.key);
        candidates.sort_by_key(|c| (geo[c.site as usize].region, c.site));
        let candidate_index: HashMap<&MachineKey, u32> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (&c.machine.key, i as u32))
            .collect();

        // Pools: who may use which candidate, and what each cooperative is entitled to.
        let mut pool_refs: Vec<_> = snapshot.pools.iter().collect();
        pool_refs.sort_by(|a, b| a.id.cmp(&b.id));
        let mut entitlement = vec![0f64; coops.len()];
        let mut grants: Vec<Vec<(u32, Reverse<u32>, u32)>> = vec![Vec::new(); candidates.len()];
        for (p, pool) in pool_refs.iter().enumerate() {
            let mut members: Vec<&MachineKey> = pool.machines.iter().collect();
            members.sort_unstable();
            members.dedup();
            let size = members.len() as f64;
            let total: u64 = pool.members.iter().map(|m| u64::from(m.weight)).sum();
            let held: Vec<u32> = members
                .iter()
                .filter_map(|key| candidate_index.get(key).copied())
                .collect();
            for member in &pool.members {
                let c = coop_of(&member.cooperative);
                if total > 0 {
                    entitlement[c as usize] += f64::from(member.weight) / total as f64 * size;
                }
                for &m in &held {
                    grants[m as usize].push((c, Reverse(member.weight), p as u32));
                }
            }
        }

        // Buckets: one per (cooperative, process, flavour, material) present in the fleet.
        let mut materials: Vec<String> = candidates
            .iter()
            .flat_map(|c| c.machine.capabilities.materials.iter())
            .map(|m| upper(m).into_owned())
            .collect();
        materials.sort_unstable();
        materials.dedup();
        let mut table: HashMap<BucketKey, u32> = HashMap::new();
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut bucket_material: Vec<Option<u32>> = Vec::new();
        for (i, (cand, mut grant)) in candidates.iter_mut().zip(grants).enumerate() {
            // A cooperative reaching the machine through several pools uses the one where
            // it weighs most (then the first by id).
            grant.sort();
            grant.dedup_by_key(|(c, _, _)| *c);
            let caps = &cand.machine.capabilities;
            let flavour = caps.firmware.flavour();
            let region = geo[cand.site as usize].region;
            let mut kinds: Vec<Option<u32>> = caps
                .materials
                .iter()
                .map(|m| position(&materials, upper(m).as_ref()))
                .collect();
            kinds.push(None);
            kinds.sort_unstable();
            kinds.dedup();
            for &(coop, _, pool) in &grant {
                for &material in &kinds {
                    let b = *table
                        .entry((coop, material, caps.process, flavour))
                        .or_insert_with(|| {
                            buckets.push(Bucket {
                                free: 0,
                                sites: Vec::new(),
                                active: Vec::new(),
                            });
                            bucket_material.push(material);
                            (buckets.len() - 1) as u32
                        });
                    let bucket = &mut buckets[b as usize];
                    if bucket.sites.last().is_none_or(|s| s.site != cand.site) {
                        bucket.active.push(bucket.sites.len() as u32);
                        bucket.sites.push(BucketSite {
                            region,
                            site: cand.site,
                            free: 0,
                            active_at: (bucket.active.len() - 1) as u32,
                            machines: Vec::new(),
                        });
                    }
                    let slot = bucket.sites.len() - 1;
                    bucket.free += 1;
                    bucket.sites[slot].free += 1;
                    bucket.sites[slot].machines.push((i as u32, pool));
                    cand.buckets.push((b, slot as u32));
                }
            }
        }
        let loaded: Vec<Option<u32>> = candidates
            .iter()
            .map(|c| {
                c.machine
                    .loaded_material
                    .as_deref()
                    .and_then(|m| position(&materials, upper(m).as_ref()))
            })
            .collect();
        for (bucket, material) in buckets.iter_mut().zip(&bucket_material) {
            for site in &mut bucket.sites {
                site.machines.sort_by_key(|&(i, _)| {
                    let m = candidates[i as usize].machine;
                    let loaded_here = material.is_some() && loaded[i as usize] == *material;
                    (!loaded_here, m.last_job_ended_at, i)
                });
            }
        }

        let prep = snapshot
            .jobs
            .iter()
            .map(|job| {
                let coop = coop_of(&job.cooperative);
                let req = &job.requirements;
                let material = match &req.material {
                    None => Some(None),
                    Some(m) => position(&materials, upper(m).as_ref()).map(Some),
                };
                let bucket = material.and_then(|material| {
                    table
                        .get(&(coop, material, req.process, req.flavour))
                        .copied()
                });
                Prep {
                    coop,
                    bucket,
                    delivery: position(&site_ids, &job.delivery_site),
                }
            })
            .collect();

        let taken = vec![false; candidates.len()];
        Self {
            snapshot,
            geo,
            pools: pool_refs.iter().map(|p| &p.id).collect(),
            coops,
            entitlement,
            used,
            quota_left,
            candidates,
            candidate_index,
            taken,
            buckets,
            prep,
            scratch: Vec::new(),
        }
    }

    fn turn(&self, coop: u32) -> Turn {
        let c = coop as usize;
        let used = self.used[c];
        let share_used = if self.entitlement[c] > 0.0 {
            used as f64 / self.entitlement[c]
        } else {
            f64::INFINITY
        };
        Turn {
            share_used,
            used,
            coop,
        }
    }

    fn job_order(&self, now: OffsetDateTime) -> JobOrder {
        let jobs = &self.snapshot.jobs;
        let mut starving = Vec::new();
        let mut per_coop = vec![Vec::new(); self.coops.len()];
        for (i, job) in jobs.iter().enumerate() {
            if now - job.submitted_at >= self.snapshot.policy.starvation_after {
                starving.push(i);
            } else {
                per_coop[self.prep[i].coop as usize].push(i);
            }
        }
        // Plain integers compare much faster than dates and uuids in a 100k-job sort.
        let age: Vec<(i128, u128)> = jobs
            .iter()
            .map(|j| (j.submitted_at.unix_timestamp_nanos(), j.id.0.as_u128()))
            .collect();
        starving.sort_unstable_by_key(|&i| age[i]);
        for list in &mut per_coop {
            list.sort_unstable_by_key(|&i| (Reverse(jobs[i].priority), age[i]));
        }
        JobOrder { starving, per_coop }
    }

    /// The first eligible machine at the best-ranked site of `ranked`.
    fn pick(
        &self,
        b: usize,
        ranked: &mut [SiteRank],
        req: &Requirements,
        excluded: &[u32],
    ) -> Option<(u32, u32)> {
        for k in 0..ranked.len() {
            // Usually the best site has a fitting machine: select the minimum for the first
            // few tries, and sort the rest only when a job is hard to place.
            match k {
                0..3 => {
                    let best = (k..ranked.len())
                        .min_by(|&x, &y| ranked[x].cmp(&ranked[y]))
                        .expect("k is in range");
                    ranked.swap(k, best);
                }
                3 => ranked[3..].sort_unstable_by(SiteRank::cmp),
                _ => {}
            }
            let site = &self.buckets[b].sites[ranked[k].slot as usize];
            let found = site.machines.iter().copied().find(|&(m, _)| {
                let machine = self.candidates[m as usize].machine;
                !self.taken[m as usize]
                    && machine.readiness.admits(req.process)
                    && !excluded.contains(&m)
                    && req.unmet_by(&machine.capabilities).is_empty()
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    fn try_place(&mut self, j: usize) -> Option<Assignment> {
        let job = &self.snapshot.jobs[j];
        let Prep {
            coop,
            bucket,
            delivery,
        } = self.prep[j];
        let c = coop as usize;
        if let Some(left) = self.quota_left[c]
            && job.estimated_machine_seconds > left
        {
            return None;
        }
        let b = bucket? as usize;
        if self.buckets[b].free == 0 {
            return None;
        }
        let req = &job.requirements;
        let excluded: Vec<u32> = job
            .excluded_machines
            .iter()
            .filter_map(|k| self.candidate_index.get(k).copied())
            .collect();
        let mut ranked = std::mem::take(&mut self.scratch);
        let bucket = &self.buckets[b];
        let home = delivery.map(|d| (d, self.geo[d as usize]));
        // First the delivery site's region (the delivery site itself ranks first in it):
        // the bucket's sites are sorted by region, so this is a short slice.
        let mut chosen = None;
        if let Some((d, h)) = home {
            let lo = bucket.sites.partition_point(|s| s.region < h.region);
            let hi = bucket.sites.partition_point(|s| s.region <= h.region);
            ranked.clear();
            ranked.extend(
                (lo..hi)
                    .filter(|&slot| bucket.sites[slot].free > 0)
                    .map(|slot| {
                        let site = bucket.sites[slot].site;
                        SiteRank {
                            tier: if site == d { 0 } else { 1 },
                            chord2: h.chord2(&self.geo[site as usize]),
                            site,
                            slot: slot as u32,
                        }
                    }),
            );
            chosen = self.pick(b, &mut ranked, req, &excluded);
        }
        // Then every other site with a free machine, nearest first.
        if chosen.is_none() {
            ranked.clear();
            ranked.extend(bucket.active.iter().filter_map(|&slot| {
                let site = &bucket.sites[slot as usize];
                match home {
                    None => Some(SiteRank {
                        tier: 3,
                        chord2: 0.0,
                        site: site.site,
                        slot,
                    }),
                    Some((_, h)) if site.region == h.region => None,
                    Some((_, h)) => Some(SiteRank {
                        tier: 2,
                        chord2: h.chord2(&self.geo[site.site as usize]),
                        site: site.site,
                        slot,
                    }),
                }
            }));
            chosen = self.pick(b, &mut ranked, req, &excluded);
        }
        self.scratch = ranked;
        let (m, pool) = chosen?;
        self.take(m);
        self.used[c] = self.used[c].saturating_add(job.estimated_machine_seconds);
        if let Some(left) = &mut self.quota_left[c] {
            *left -= job.estimated_machine_seconds;
        }
        let machine = self.candidates[m as usize].machine;
        Some(Assignment {
            job: job.id,
            cooperative: job.cooperative.clone(),
            machine: machine.key.clone(),
            site: machine.site.clone(),
            pool: self.pools[pool as usize].clone(),
            estimated_machine_seconds: job.estimated_machine_seconds,
        })
    }

    /// Marks candidate `m` taken and counts it out of every bucket it sits in.
    fn take(&mut self, m: u32) {
        self.taken[m as usize] = true;
        for &(b, slot) in &self.candidates[m as usize].buckets {
            let bucket = &mut self.buckets[b as usize];
            bucket.free -= 1;
            let site = &mut bucket.sites[slot as usize];
            site.free -= 1;
            if site.free == 0 {
                let at = site.active_at as usize;
                bucket.active.swap_remove(at);
                if let Some(&moved) = bucket.active.get(at) {
                    bucket.sites[moved as usize].active_at = at as u32;
                }
            }
        }
    }
}
