//! `munifab-coordinator`: serve, migrate, manage tokens.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use munifab_coordinator::auth::{Grant, Role};
use munifab_coordinator::config::Settings;
use munifab_coordinator::scheduler::{CoopId, MachineKey, PoolId, RegionId, SiteId};
use munifab_coordinator::store::{
    CooperativeRecord, LedgerCheck, NewToken, PoolRecord, QuotaRecord, SiteRecord, Store,
};
use munifab_coordinator::{clock, server};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "MuniFab coordinator: jobs, machines, dispatch over MQTT"
)]
struct Cli {
    /// Configuration file (TOML); every key can be overridden by MUNIFAB_* variables.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the coordinator (HTTP API, broker, dispatcher) until Ctrl-C or SIGTERM.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Cooperatives, sites, pools and quotas (changes are audited as `cli`).
    Coop {
        #[command(subcommand)]
        command: CoopCmd,
    },
    /// The design catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCmd,
    },
    /// The production ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCmd,
    },
    /// Everything in one process, nothing installed: a coordinator, two fablabs with real
    /// agents on virtual printers and a mill, sample jobs from two cooperatives, a summary.
    #[cfg(feature = "demo")]
    Demo {
        /// Speed factor of the virtual machines (moves, dwells, heating).
        #[arg(long, default_value_t = munifab_coordinator::demo::DEFAULT_SPEED)]
        speed: f64,
        /// After the summary, keep the API and broker up (URLs and an admin token are
        /// printed) until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
        /// The designs folder to publish as the catalog's git source.
        #[arg(long)]
        designs: Option<PathBuf>,
        /// The machine profiles folder.
        #[arg(long)]
        profiles: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CoopCmd {
    /// Create or rename a cooperative.
    Cooperative {
        /// Id (slug).
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Create or change a site (fablab).
    Site {
        /// Id (slug).
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Region id (slug).
        #[arg(long)]
        region: String,
        /// Latitude, degrees.
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        /// Longitude, degrees.
        #[arg(long, allow_hyphen_values = true)]
        lon: f64,
    },
    /// Create or replace a pool: its machines and weighted members.
    Pool {
        /// Id (slug).
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// A machine contributed, `agent/machine` (repeat).
        #[arg(long = "machine")]
        machines: Vec<String>,
        /// A member, `cooperative=weight` (repeat).
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Set a cooperative's quota of machine-hours per period.
    Quota {
        /// The cooperative.
        cooperative: String,
        /// Machine-hours per period.
        #[arg(long)]
        hours: u64,
        /// Period length in days.
        #[arg(long, default_value_t = 30)]
        period_days: u32,
    },
    /// Print the cooperative model (JSON).
    Show,
    /// Print the audit trail, newest first.
    Audit {
        /// Only this subject (`pool:valley`, `machine:lab-a/mk3`).
        #[arg(long)]
        subject: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCmd {
    /// Fetch every configured source into the catalog's mirrors and list what is served,
    /// per source (commit, designs) and every design left out with why. Exits with status
    /// 1 if a source failed.
    Sync,
}

#[derive(Debug, Subcommand)]
enum LedgerCmd {
    /// Recompute every entry's hash and link: prints `ok N entries` and the head, or the
    /// first broken entry (and exits with status 1).
    Verify,
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a token and print it (once; only its hash is stored).
    Create {
        /// admin, coop-admin, maker, operator or agent.
        #[arg(long)]
        role: String,
        /// Cooperative, site or agent id (none for admin).
        #[arg(long)]
        scope: Option<String>,
        /// Who holds it.
        #[arg(long, default_value = "")]
        label: String,
        /// For agent tokens: the agent's site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: String,
    },
    /// List tokens (never their secrets).
    List,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo talks to people on stdout; its logs stay quiet unless asked for.
    let quiet = is_demo(&cli.command);
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUNIFAB_LOG").unwrap_or_else(|_| {
        if quiet {
            "warn,rumqttd=off".into()
        } else {
            "info,rumqttd=warn".into()
        }
    });
    // Logs go to stderr: stdout carries what commands print (a new token, `coop show`,
    // `ledger verify`), and scripts capture it.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    #[cfg(feature = "demo")]
    if let Cmd::Demo {
        speed,
        keep_running,
        designs,
        profiles,
    } = cli.command
    {
        let repo = munifab_coordinator::demo::Options::repository();
        let opts = munifab_coordinator::demo::Options {
            speed,
            keep_running,
            designs: designs.unwrap_or_else(|| repo.join("designs")),
            profiles: profiles.unwrap_or_else(|| repo.join("profiles")),
        };
        return munifab_coordinator::demo::run(opts, wait_for_signal()).await;
    }
    let settings = Settings::load(cli.config.as_deref(), std::env::vars())
        .context("loading the configuration")?;
    let now = clock::system();
    match cli.command {
        Cmd::Serve => {
            let shutdown = CancellationToken::new();
            let server = server::start(settings, now, shutdown.clone())
                .await
                .context("starting the coordinator")?;
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
            server.wait().await;
        }
        Cmd::Migrate => {
            let store = server::open_store(&settings)
                .await
                .with_context(|| format!("migrating {}", settings.redacted_database_url()))?;
            store.close().await;
            println!("database is up to date");
        }
        Cmd::Token { command } => {
            let store = server::open_store(&settings)
                .await
                .with_context(|| format!("opening {}", settings.redacted_database_url()))?;
            match command {
                TokenCmd::Create {
                    role,
                    scope,
                    label,
                    site,
                } => {
                    let role: Role = role.parse()?;
                    let grant = Grant::new(role, scope.as_deref())?;
                    if let Grant::Agent(agent) = &grant {
                        store.register_agent(agent, site.as_deref(), now()).await?;
                    } else if site.is_some() {
                        anyhow::bail!("--site applies to agent tokens only");
                    }
                    let (record, secret) = store
                        .create_token(&NewToken { grant, label }, now())
                        .await
                        .context("creating the token")?;
                    eprintln!("token {} for {} (shown once):", record.id, record.grant);
                    println!("{secret}");
                }
                TokenCmd::Revoke { id } => {
                    let record = store.revoke_token(&id, now()).await?;
                    println!("revoked {} ({})", record.id, record.grant);
                }
                TokenCmd::List => {
                    for t in store.list_tokens().await? {
                        let state = if t.revoked_ms.is_some() {
                            "revoked"
                        } else {
                            "live"
                        };
                        println!("{}\t{}\t{}\t{}", t.id, t.grant, state, t.label);
                    }
                }
            }
            store.close().await;
        }
        Cmd::Coop { command } => {
            let store = server::open_store(&settings)
                .await
                .with_context(|| format!("opening {}", settings.redacted_database_url()))?;
            coop_command(&store, command, now()).await?;
            store.close().await;
        }
        Cmd::Catalog {
            command: CatalogCmd::Sync,
        } => {
            let catalog_settings = settings
                .catalog
                .clone()
                .context("the configuration has no [catalog] section")?;
            let t = now();
            let report = tokio::task::spawn_blocking(move || {
                let catalog = server::open_catalog(&catalog_settings, false, t)?;
                let at = time::OffsetDateTime::from_unix_timestamp(t.div_euclid(1000))
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                Ok::<_, server::ServeError>(catalog.sync(at))
            })
            .await?
            .context("opening the catalog")?;
            let mut failed = false;
            for s in &report.sources {
                let commit = s
                    .commit
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into());
                match &s.error {
                    None => println!("{}\t{commit}\t{} designs", s.name, s.designs),
                    Some(e) => {
                        failed = true;
                        println!("{}\t{commit}\tFAILED: {e}", s.name);
                    }
                }
            }
            for e in &report.errors {
                println!("error\t{}", e.message);
            }
            println!(
                "{} designs served, {} problems",
                report.designs,
                report.errors.len()
            );
            if failed {
                std::process::exit(1);
            }
        }
        #[cfg(feature = "demo")]
        Cmd::Demo { .. } => unreachable!("the demo returned above, before any configuration"),
        Cmd::Ledger {
            command: LedgerCmd::Verify,
        } => {
            let store = server::open_store(&settings)
                .await
                .with_context(|| format!("opening {}", settings.redacted_database_url()))?;
            let check = store.verify_ledger().await.context("reading the ledger")?;
            store.close().await;
            match check {
                LedgerCheck::Ok { entries, head } => {
                    println!("ok {entries} entries");
                    println!("head {head}");
                }
                LedgerCheck::Broken { seq, why } => {
                    println!("broken at entry {seq}: {why}");
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}

#[cfg(feature = "demo")]
fn is_demo(cmd: &Cmd) -> bool {
    matches!(cmd, Cmd::Demo { .. })
}

#[cfg(not(feature = "demo"))]
fn is_demo(_: &Cmd) -> bool {
    false
}

fn slug<T>(
    what: &str,
    s: &str,
    parse: impl Fn(String) -> Result<T, munifab_protocol::IdError>,
) -> anyhow::Result<T> {
    parse(s.to_string()).with_context(|| format!("{what} {s:?}"))
}

async fn coop_command(store: &Store, command: CoopCmd, now: i64) -> anyhow::Result<()> {
    const ACTOR: &str = "cli";
    match command {
        CoopCmd::Cooperative { id, name } => {
            slug("cooperative", &id, CoopId::new)?;
            store
                .put_cooperative(&CooperativeRecord { id, name }, ACTOR, now)
                .await?;
        }
        CoopCmd::Site {
            id,
            name,
            region,
            lat,
            lon,
        } => {
            slug("site", &id, SiteId::new)?;
            slug("region", &region, RegionId::new)?;
            anyhow::ensure!(
                (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon),
                "--lat must be within -90..=90 and --lon within -180..=180"
            );
            store
                .put_site(
                    &SiteRecord {
                        id,
                        name,
                        region,
                        lat,
                        lon,
                    },
                    ACTOR,
                    now,
                )
                .await?;
        }
        CoopCmd::Pool {
            id,
            name,
            machines,
            members,
        } => {
            slug("pool", &id, PoolId::new)?;
            for m in &machines {
                m.parse::<MachineKey>()?;
            }
            let mut weights = std::collections::BTreeMap::new();
            for m in &members {
                let (coop, weight) = m
                    .split_once('=')
                    .with_context(|| format!("--member {m:?} must be cooperative=weight"))?;
                slug("member cooperative", coop, CoopId::new)?;
                let weight: u32 = weight
                    .parse()
                    .with_context(|| format!("--member {m:?}: the weight is a whole number"))?;
                weights.insert(coop.to_string(), weight);
            }
            store
                .put_pool(
                    &PoolRecord {
                        id,
                        name,
                        machines,
                        members: weights,
                    },
                    ACTOR,
                    now,
                )
                .await?;
        }
        CoopCmd::Quota {
            cooperative,
            hours,
            period_days,
        } => {
            slug("cooperative", &cooperative, CoopId::new)?;
            anyhow::ensure!(period_days > 0, "--period-days must be at least 1");
            store
                .put_quota(
                    &QuotaRecord {
                        cooperative,
                        machine_hours: hours,
                        period_days,
                        period_start_ms: now,
                    },
                    ACTOR,
                    now,
                )
                .await?;
        }
        CoopCmd::Show => {
            let model = serde_json::json!({
                "cooperatives": store.list_cooperatives().await?,
                "sites": store.list_sites().await?,
                "pools": store.list_pools().await?,
                "quotas": store.list_quotas().await?,
            });
            println!("{}", serde_json::to_string_pretty(&model)?);
        }
        CoopCmd::Audit { subject } => {
            for a in store.list_audit(subject.as_deref(), 1000).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    a.at_ms, a.actor, a.action, a.subject, a.detail
                );
            }
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
