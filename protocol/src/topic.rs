//! MQTT topics of the v1 contract: builders, a parser, and subscription filters.
//!
//! ```text
//! munifab/v1/agents/{agent}/status                        retained, QoS 1
//! munifab/v1/agents/{agent}/machines/{machine}/state      retained, QoS 1
//! munifab/v1/agents/{agent}/machines/{machine}/telemetry  QoS 0
//! munifab/v1/agents/{agent}/events                        QoS 1
//! munifab/v1/agents/{agent}/commands                      QoS 1
//! ```

use std::fmt;

use crate::ids::{AgentId, IdError, MachineId};

/// Every v1 topic starts with this prefix.
pub const PREFIX: &str = "munifab/v1/agents";

/// MQTT quality of service used on a topic. (Our own enum: this crate does no IO and
/// does not depend on an MQTT client.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// Fire and forget; used for telemetry, where the next sample supersedes a lost one.
    AtMostOnce,
    /// Delivered at least once; receivers deduplicate by message id.
    AtLeastOnce,
}

/// The five kinds of topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Agent presence (online/offline, with offline as the last will).
    Status,
    /// Capabilities, state and current job of one machine.
    MachineState,
    /// Temperatures, position, progress of one machine.
    Telemetry,
    /// Job events from the agent.
    Events,
    /// Commands from the coordinator to the agent.
    Commands,
}

impl TopicKind {
    /// The QoS messages of this kind are published with.
    pub fn qos(self) -> Qos {
        match self {
            TopicKind::Telemetry => Qos::AtMostOnce,
            _ => Qos::AtLeastOnce,
        }
    }

    /// Whether messages of this kind are retained by the broker.
    pub fn retain(self) -> bool {
        matches!(self, TopicKind::Status | TopicKind::MachineState)
    }
}

/// A parsed v1 topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `munifab/v1/agents/{agent}/status`
    Status(AgentId),
    /// `munifab/v1/agents/{agent}/machines/{machine}/state`
    MachineState(AgentId, MachineId),
    /// `munifab/v1/agents/{agent}/machines/{machine}/telemetry`
    Telemetry(AgentId, MachineId),
    /// `munifab/v1/agents/{agent}/events`
    Events(AgentId),
    /// `munifab/v1/agents/{agent}/commands`
    Commands(AgentId),
}

/// Why a string is not a v1 topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic does not start with `munifab/v1/agents/`.
    #[error("topic does not start with {PREFIX}/")]
    Prefix,
    /// The levels after the agent id match no v1 topic.
    #[error("unknown topic shape after the agent id: {0:?}")]
    Shape(String),
    /// The agent level is not a valid id.
    #[error("invalid agent id in topic: {0}")]
    Agent(IdError),
    /// The machine level is not a valid id.
    #[error("invalid machine id in topic: {0}")]
    Machine(IdError),
}

impl Topic {
    /// Parses a topic name as received from a broker.
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(TopicError::Prefix)?;
        let mut levels = rest.split('/');
        let agent = AgentId::new(levels.next().unwrap_or_default()).map_err(TopicError::Agent)?;
        let tail: Vec<&str> = levels.collect();
        match tail.as_slice() {
            ["status"] => Ok(Topic::Status(agent)),
            ["events"] => Ok(Topic::Events(agent)),
            ["commands"] => Ok(Topic::Commands(agent)),
            ["machines", machine, kind @ ("state" | "telemetry")] => {
                let machine = MachineId::new(*machine).map_err(TopicError::Machine)?;
                Ok(if *kind == "state" {
                    Topic::MachineState(agent, machine)
                } else {
                    Topic::Telemetry(agent, machine)
                })
            }
            _ => Err(TopicError::Shape(tail.join("/").chars().take(80).collect())),
        }
    }

    /// The kind of this topic.
    pub fn kind(&self) -> TopicKind {
        match self {
            Topic::Status(_) => TopicKind::Status,
            Topic::MachineState(..) => TopicKind::MachineState,
            Topic::Telemetry(..) => TopicKind::Telemetry,
            Topic::Events(_) => TopicKind::Events,
            Topic::Commands(_) => TopicKind::Commands,
        }
    }

    /// The agent whose prefix this topic is under.
    pub fn agent(&self) -> &AgentId {
        match self {
            Topic::Status(a)
            | Topic::Events(a)
            | Topic::Commands(a)
            | Topic::MachineState(a, _)
            | Topic::Telemetry(a, _) => a,
        }
    }

    /// The machine, for per-machine topics.
    pub fn machine(&self) -> Option<&MachineId> {
        match self {
            Topic::MachineState(_, m) | Topic::Telemetry(_, m) => Some(m),
            _ => None,
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Status(a) => write!(f, "{PREFIX}/{a}/status"),
            Topic::MachineState(a, m) => write!(f, "{PREFIX}/{a}/machines/{m}/state"),
            Topic::Telemetry(a, m) => write!(f, "{PREFIX}/{a}/machines/{m}/telemetry"),
            Topic::Events(a) => write!(f, "{PREFIX}/{a}/events"),
            Topic::Commands(a) => write!(f, "{PREFIX}/{a}/commands"),
        }
    }
}

/// Subscription filters.
pub mod filter {
    use super::PREFIX;

    /// Everything every agent publishes (what a coordinator subscribes to):
    /// status, machine state, telemetry and events.
    pub fn coordinator() -> [String; 4] {
        [
            format!("{PREFIX}/+/status"),
            format!("{PREFIX}/+/machines/+/state"),
            format!("{PREFIX}/+/machines/+/telemetry"),
            format!("{PREFIX}/+/events"),
        ]
    }

    /// The same filters as a shared subscription, so several coordinator replicas split
    /// the load (MQTT 5 / Mosquitto / EMQX `$share/{group}/…`).
    pub fn coordinator_shared(group: &str) -> [String; 4] {
        coordinator().map(|f| format!("$share/{group}/{f}"))
    }

    /// Everything under one agent's prefix: what that agent may publish to
    /// (Mosquitto ACL: `pattern write munifab/v1/agents/%u/#`).
    pub fn agent_prefix(agent: &crate::AgentId) -> String {
        format!("{PREFIX}/{agent}/#")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> AgentId {
        AgentId::new(s).unwrap()
    }
    fn m(s: &str) -> MachineId {
        MachineId::new(s).unwrap()
    }

    #[test]
    fn every_topic_kind_round_trips_through_its_string() {
        let topics = [
            Topic::Status(a("lab-a")),
            Topic::MachineState(a("lab-a"), m("mk3")),
            Topic::Telemetry(a("lab-a"), m("mk3")),
            Topic::Events(a("lab-a")),
            Topic::Commands(a("lab-a")),
        ];
        for t in topics {
            assert_eq!(Topic::parse(&t.to_string()), Ok(t.clone()));
        }
    }

    #[test]
    fn qos_and_retain_follow_the_contract() {
        assert_eq!(TopicKind::Telemetry.qos(), Qos::AtMostOnce);
        assert_eq!(TopicKind::Events.qos(), Qos::AtLeastOnce);
        assert!(TopicKind::Status.retain() && TopicKind::MachineState.retain());
        assert!(
            !TopicKind::Events.retain()
                && !TopicKind::Commands.retain()
                && !TopicKind::Telemetry.retain()
        );
    }

    #[test]
    fn malformed_topics_are_typed_errors() {
        assert_eq!(
            Topic::parse("munifab/v2/agents/a/status"),
            Err(TopicError::Prefix)
        );
        assert_eq!(Topic::parse("munifab/v1/agents"), Err(TopicError::Prefix));
        assert!(matches!(
            Topic::parse("munifab/v1/agents//status"),
            Err(TopicError::Agent(IdError::Empty))
        ));
        assert!(matches!(
            Topic::parse("munifab/v1/agents/+/status"),
            Err(TopicError::Agent(_))
        ));
        assert!(matches!(
            Topic::parse("munifab/v1/agents/a/statuses"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            Topic::parse("munifab/v1/agents/a/status/x"),
            Err(TopicError::Shape(_))
        ));
        assert!(matches!(
            Topic::parse("munifab/v1/agents/a/machines/#/state"),
            Err(TopicError::Machine(_))
        ));
        assert!(matches!(
            Topic::parse("munifab/v1/agents/a/machines/m"),
            Err(TopicError::Shape(_))
        ));
        let huge = format!("munifab/v1/agents/{}/status", "a".repeat(10_000));
        assert!(matches!(
            Topic::parse(&huge),
            Err(TopicError::Agent(IdError::TooLong { .. }))
        ));
    }

    #[test]
    fn shared_filters_keep_the_plain_filter_after_the_group() {
        let shared = filter::coordinator_shared("coord");
        assert_eq!(shared[0], "$share/coord/munifab/v1/agents/+/status");
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_strings_never_panics(s in "\\PC{0,200}") {
            let _ = Topic::parse(&s);
        }
    }
}
