//! The end-to-end suite: MuniFab as separate processes built from this workspace —
//! `munifab-coordinator serve`, `munifab-agent run` per site, and `munifab-bridge simulate`
//! virtual machines on real pseudo-terminals — driven only through the HTTP API, MQTT, the
//! ptys and the command-line tools.
//!
//! Each scenario runs on the embedded broker with SQLite, and again on the broker and
//! PostgreSQL named by `MUNIFAB_TEST_MQTT_URL` / `MUNIFAB_TEST_DATABASE_URL` when they are
//! set. `MUNIFAB_E2E_ECHO=1` echoes every child's output for debugging.
//!
//! - `coordinator_core`: upload → assigned → completed; a rejection moves the job to the
//!   other machine; the coordinator killed mid-job and restarted; a forged topic refused.
//! - `whole_chain`: catalog from a git repository, two cooperatives, two sites, three
//!   printers and a mill; every machine's record equals the files it ran; the ledger verifies
//!   and adds up to the analyses.

mod coordinator_core;
mod whole_chain;
