//! The demo's small world, fixed in data: two cooperatives sharing one pool of machines at
//! two fablabs, the jobs they submit, and each site's agent configuration.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// A cooperative and its weight in the shared pool.
#[derive(Debug, Clone, Copy)]
pub struct Coop {
    /// Id (slug).
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Weight in the pool.
    pub weight: u32,
}

/// The firmware a virtual machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// A Marlin 2 printer.
    Marlin,
    /// A GRBL 1.1 mill.
    Grbl,
}

/// A virtual machine at a site.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// Machine id within its agent.
    pub id: &'static str,
    /// Its firmware.
    pub firmware: Firmware,
    /// The machine profile (file `profiles/{profile}.toml`).
    pub profile: &'static str,
}

/// A fablab with its workshop PC (one agent) and machines.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// Site id (slug).
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Region id.
    pub region: &'static str,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// The agent running its machines.
    pub agent: &'static str,
    /// Its machines.
    pub machines: &'static [Machine],
}

/// A job submitted from a catalog design.
#[derive(Debug, Clone, Copy)]
pub struct DesignJob {
    /// The submitting cooperative.
    pub coop: &'static str,
    /// Design id in the `commons` source.
    pub design: &'static str,
    /// Machine profile of the G-code to use.
    pub profile: &'static str,
    /// Where the part is wanted.
    pub delivery_site: &'static str,
}

/// The catalog source name the designs are synced under.
pub const SOURCE: &str = "commons";
/// The one pool.
pub const POOL: &str = "valley";
const MARLIN_PROFILE: &str = "generic-marlin-220";
const GRBL_PROFILE: &str = "generic-grbl-300x200";

/// The two cooperatives: weights 2 and 1.
pub const COOPS: [Coop; 2] = [
    Coop {
        id: "bike-kitchen",
        name: "Bike Kitchen",
        weight: 2,
    },
    Coop {
        id: "toy-library",
        name: "Toy Library",
        weight: 1,
    },
];

/// Site A with two printers, site B with a printer and a mill.
pub const SITES: [Site; 2] = [
    Site {
        id: "lab-north",
        name: "Fablab North",
        region: "upper-valley",
        lat: 47.37,
        lon: 8.54,
        agent: "north-pc",
        machines: &[
            Machine {
                id: "mk-1",
                firmware: Firmware::Marlin,
                profile: MARLIN_PROFILE,
            },
            Machine {
                id: "mk-2",
                firmware: Firmware::Marlin,
                profile: MARLIN_PROFILE,
            },
        ],
    },
    Site {
        id: "lab-river",
        name: "Riverside Makerspace",
        region: "lower-valley",
        lat: 47.05,
        lon: 8.31,
        agent: "river-pc",
        machines: &[
            Machine {
                id: "mk-3",
                firmware: Firmware::Marlin,
                profile: MARLIN_PROFILE,
            },
            Machine {
                id: "router",
                firmware: Firmware::Grbl,
                profile: GRBL_PROFILE,
            },
        ],
    },
];

/// Jobs from catalog designs: FDM and CNC, from both cooperatives.
pub const DESIGN_JOBS: [DesignJob; 6] = [
    DesignJob {
        coop: "bike-kitchen",
        design: "bike-cable-clip",
        profile: MARLIN_PROFILE,
        delivery_site: "lab-river",
    },
    DesignJob {
        coop: "toy-library",
        design: "calibration-cube",
        profile: MARLIN_PROFILE,
        delivery_site: "lab-north",
    },
    DesignJob {
        coop: "bike-kitchen",
        design: "pocket-tray",
        profile: GRBL_PROFILE,
        delivery_site: "lab-river",
    },
    DesignJob {
        coop: "toy-library",
        design: "wall-bracket-m4",
        profile: MARLIN_PROFILE,
        delivery_site: "lab-north",
    },
    DesignJob {
        coop: "bike-kitchen",
        design: "wall-bracket",
        profile: MARLIN_PROFILE,
        delivery_site: "lab-river",
    },
    DesignJob {
        coop: "toy-library",
        design: "engraved-sign",
        profile: GRBL_PROFILE,
        delivery_site: "lab-north",
    },
];

/// A maker's own sliced file, uploaded as G-code: who uploads it, its name and bytes.
pub const UPLOAD: (&str, &str, &str) = (
    "toy-library",
    "spinning-top.gcode",
    include_str!("spinning-top.gcode"),
);

/// A file that must never reach a machine (too hot, beyond the bed), uploaded against the
/// printers' profile: the coordinator refuses it with its findings.
pub const UNSAFE_UPLOAD: (&str, &str, &str, &str) = (
    "bike-kitchen",
    "too-hot-too-far.gcode",
    MARLIN_PROFILE,
    include_str!("too-hot-too-far.gcode"),
);

/// Every machine as `agent/machine`, in site order.
pub fn machine_keys() -> Vec<String> {
    SITES
        .iter()
        .flat_map(|s| {
            s.machines
                .iter()
                .map(move |m| format!("{}/{}", s.agent, m.id))
        })
        .collect()
}

/// What an agent needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct AgentEnv<'a> {
    /// Where the broker listens for agents.
    pub broker: SocketAddr,
    /// The coordinator's base URL (artifacts).
    pub coordinator: &'a str,
    /// The agent's token.
    pub token: &'a str,
    /// The agent's data folder.
    pub data_dir: &'a Path,
    /// The folder of machine profiles.
    pub profiles_dir: &'a Path,
    /// Speed factor of the virtual machines.
    pub speed: f64,
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The `agent.toml` of `site`'s agent: what an operator would write, with virtual machines
/// in place of USB ports.
pub fn agent_toml(site: &Site, env: &AgentEnv<'_>) -> String {
    let mut t = String::new();
    let _ = write!(
        t,
        "agent_id = {agent}\nsite = {site}\ndata_dir = {data}\ntelemetry_interval_ms = 500\n\n\
         [broker]\nurl = {broker}\ntoken = {token}\nreconnect_min_ms = 200\nreconnect_max_ms = 2000\n\n\
         [coordinator]\nurl = {coordinator}\n\n\
         [shutdown]\nrunning_jobs = \"cancel\"\ntimeout_s = 5\n",
        agent = quoted(site.agent),
        site = quoted(site.id),
        data = quoted(&env.data_dir.display().to_string()),
        broker = quoted(&format!("mqtt://{}", env.broker)),
        token = quoted(env.token),
        coordinator = quoted(env.coordinator),
    );
    for m in site.machines {
        let (port, firmware, start, end, cancel) = match m.firmware {
            Firmware::Marlin => (
                "virtual:marlin",
                "marlin",
                r#"["G90"]"#,
                r#"["M104 S0", "M140 S0", "G91", "G1 Z10 F600", "G90", "M84"]"#,
                r#"["M104 S0", "M140 S0", "M107", "M84"]"#,
            ),
            Firmware::Grbl => (
                "virtual:grbl",
                "grbl",
                r#"["G21", "G90"]"#,
                r#"["M5", "G0 Z5"]"#,
                r#"["M5"]"#,
            ),
        };
        let profile = env.profiles_dir.join(format!("{}.toml", m.profile));
        let _ = write!(
            t,
            "\n[[machines]]\nid = {id}\nport = \"{port}\"\nbaud = 250000\nfirmware = \"{firmware}\"\n\
             profile = {profile}\nneeds_confirmation = true\n\
             [machines.virtual]\nspeed = {speed:?}\npaced = true\n\
             [machines.scripts]\nstart = {start}\nend = {end}\ncancel = {cancel}\n",
            id = quoted(m.id),
            profile = quoted(&profile.display().to_string()),
            speed = env.speed,
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use munifab_agent::config::{PortSpec, Settings};

    fn settings(site: &Site, speed: f64) -> Settings {
        let profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let text = agent_toml(
            site,
            &AgentEnv {
                broker: "127.0.0.1:41883".parse().unwrap(),
                coordinator: "http://127.0.0.1:48080",
                token: "mft_secret \"quoted\"",
                data_dir: Path::new("/tmp/demo agent"),
                profiles_dir: &profiles,
                speed,
            },
        );
        Settings::parse(&text, Path::new("/tmp/agent.toml"), &|_| None)
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn each_sites_agent_configuration_is_accepted_by_the_agent_as_written() {
        for site in &SITES {
            let s = settings(site, 12.5);
            assert_eq!(s.agent.as_str(), site.agent);
            assert_eq!(s.site.as_deref(), Some(site.id));
            assert_eq!(s.broker.port, 41883);
            assert_eq!(s.broker.token.expose(), "mft_secret \"quoted\"");
            assert_eq!(s.data_dir, Path::new("/tmp/demo agent"));
            let ids: Vec<&str> = s.machines.iter().map(|m| m.id.as_str()).collect();
            let want: Vec<&str> = site.machines.iter().map(|m| m.id).collect();
            assert_eq!(ids, want);
            for m in &s.machines {
                assert!(matches!(m.port, PortSpec::Virtual(_)));
                assert_eq!(m.virtual_options.speed, 12.5);
                assert!(m.needs_confirmation, "readiness stays with a person");
            }
        }
    }

    #[test]
    fn the_world_has_two_cooperatives_two_sites_and_a_printer_and_mill_mix() {
        assert_eq!(machine_keys().len(), 4);
        assert_eq!(SITES[0].machines.len(), 2);
        assert!(
            SITES[1]
                .machines
                .iter()
                .any(|m| m.firmware == Firmware::Grbl)
        );
        for coop in COOPS {
            assert!(DESIGN_JOBS.iter().any(|j| j.coop == coop.id));
        }
        assert!(DESIGN_JOBS.iter().any(|j| j.profile == GRBL_PROFILE));
    }
}
