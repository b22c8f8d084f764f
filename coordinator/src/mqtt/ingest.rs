//! What to do with one message an agent published: check topic and signature, decode, and
//! apply it to the store. Anything that fails a check is dropped, never trusted.

use munifab_protocol::{
    AgentId, AuthError, DecodeError, Inbound, Presence, StateBody, StatusBody, Topic, TopicError,
    TopicKind,
};

use crate::store::{EventOutcome, Store, StoreError};

/// What an accepted message did.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// The agent says it is online: its pending commands must be (re)sent.
    AgentOnline(AgentId),
    /// The agent is offline (its last will, or a clean goodbye).
    AgentOffline(AgentId),
    /// A machine's state was recorded (it may have become ready).
    MachineState,
    /// A job event was applied (or recognised as duplicate, stale, …).
    Event(EventOutcome),
    /// Accepted but changes nothing here (telemetry, unknown types).
    Nothing,
}

/// Why a message was dropped.
#[derive(Debug, thiserror::Error)]
pub enum Dropped {
    /// Not a v1 topic.
    #[error("bad topic: {0}")]
    Topic(#[from] TopicError),
    /// A topic the coordinator does not ingest (commands).
    #[error("topic {0} is not an agent-published topic")]
    NotInbound(String),
    /// The agent has no live token, so nothing it says can be verified.
    #[error("agent {0} has no live token")]
    UnknownAgent(AgentId),
    /// The signature is missing or does not match the agent named in the topic.
    #[error("signature refused for agent {agent}: {source}")]
    Signature {
        /// The agent in the topic.
        agent: AgentId,
        /// What was wrong.
        source: AuthError,
    },
    /// The payload is not a valid v1 message.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// The message names a machine other than its topic's.
    #[error("machine in payload does not match the topic")]
    MachineMismatch,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Ingests one message published on `topic`.
pub async fn ingest(
    store: &Store,
    topic: &str,
    payload: &[u8],
    max_rejections: u32,
    now: i64,
) -> Result<Ingested, Dropped> {
    let parsed = Topic::parse(topic)?;
    if parsed.kind() == TopicKind::Commands {
        return Err(Dropped::NotInbound(topic.to_string()));
    }
    let agent = parsed.agent().clone();
    let keys = store.agent_signing_keys(&agent).await?;
    if keys.is_empty() {
        return Err(Dropped::UnknownAgent(agent));
    }
    let mut verdict = Err(AuthError::BadSignature);
    for key in &keys {
        verdict = key.verify(topic, payload);
        if verdict.is_ok() {
            break;
        }
    }
    verdict.map_err(|source| Dropped::Signature {
        agent: agent.clone(),
        source,
    })?;
    Ok(match Inbound::decode(&parsed, payload)? {
        Inbound::Status(m) => match m.body {
            StatusBody::AgentStatus(status) => {
                store.set_agent_status(&agent, &status, now).await?;
                match status.state {
                    Presence::Online => Ingested::AgentOnline(agent),
                    Presence::Offline => Ingested::AgentOffline(agent),
                }
            }
            StatusBody::Unknown { .. } => Ingested::Nothing,
        },
        Inbound::State(m) => match m.body {
            StateBody::MachineState(state) => {
                if Some(&state.machine) != parsed.machine() {
                    return Err(Dropped::MachineMismatch);
                }
                store.set_machine_state(&agent, &state, now).await?;
                Ingested::MachineState
            }
            StateBody::Unknown { .. } => Ingested::Nothing,
        },
        Inbound::Event(m) => {
            Ingested::Event(store.apply_event(&agent, &m, max_rejections, now).await?)
        }
        Inbound::Telemetry(_) | Inbound::Command(_) => Ingested::Nothing,
    })
}
