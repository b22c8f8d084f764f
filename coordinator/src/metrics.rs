//! Process metrics in Prometheus text format. Counters live here; job and machine counts
//! are read from the store at scrape time (they are database state, shared by replicas).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lifecycle::JobState;
use munifab_protocol::MachineStatus;

/// Upper bounds (ms) of the dispatch latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000];

/// Counters shared by the MQTT link, the dispatcher and `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    mqtt_in: AtomicU64,
    mqtt_out: AtomicU64,
    mqtt_dropped: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
}

impl Metrics {
    /// A message arrived from the broker.
    pub fn mqtt_in(&self) {
        self.mqtt_in.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was handed to the broker.
    pub fn mqtt_out(&self) {
        self.mqtt_out.fetch_add(1, Ordering::Relaxed);
    }

    /// An inbound message was dropped (bad topic, signature or payload).
    pub fn mqtt_dropped(&self) {
        self.mqtt_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// A job went from queued to its `assign` command published, in `ms`.
    pub fn dispatch_latency(&self, ms: u64) {
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            if ms <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Messages received so far.
    pub fn mqtt_in_total(&self) -> u64 {
        self.mqtt_in.load(Ordering::Relaxed)
    }

    /// Messages dropped so far.
    pub fn mqtt_dropped_total(&self) -> u64 {
        self.mqtt_dropped.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with job and machine counts from the store.
    pub fn render(&self, jobs: &[(JobState, u64)], machines: &[(MachineStatus, u64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP munifab_jobs Jobs by lifecycle state.");
        let _ = writeln!(out, "# TYPE munifab_jobs gauge");
        for state in JobState::ALL {
            let n = jobs
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "munifab_jobs{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP munifab_machines Machines by reported state.");
        let _ = writeln!(out, "# TYPE munifab_machines gauge");
        for (state, n) in machines {
            let name = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let _ = writeln!(out, "munifab_machines{{state=\"{name}\"}} {n}");
        }
        for (name, help, v) in [
            (
                "munifab_mqtt_messages_in_total",
                "MQTT messages received.",
                &self.mqtt_in,
            ),
            (
                "munifab_mqtt_messages_out_total",
                "MQTT messages published.",
                &self.mqtt_out,
            ),
            (
                "munifab_mqtt_messages_dropped_total",
                "Inbound MQTT messages dropped (topic, signature or payload refused).",
                &self.mqtt_dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        let name = "munifab_dispatch_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a job entering the queue to its assign command being published."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let n = self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {n}",
                *bound as f64 / 1000.0
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_every_job_state_is_listed() {
        let m = Metrics::default();
        m.dispatch_latency(3);
        m.dispatch_latency(40);
        m.mqtt_in();
        let text = m.render(&[(JobState::Queued, 2)], &[(MachineStatus::Ready, 1)]);
        assert!(text.contains("munifab_jobs{state=\"queued\"} 2"));
        assert!(text.contains("munifab_jobs{state=\"lost\"} 0"));
        assert!(text.contains("munifab_machines{state=\"ready\"} 1"));
        assert!(text.contains("munifab_dispatch_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("munifab_dispatch_latency_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("munifab_dispatch_latency_seconds_count 2"));
        assert!(text.contains("munifab_mqtt_messages_in_total 1"));
    }
}
