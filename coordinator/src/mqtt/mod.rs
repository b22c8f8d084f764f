//! MQTT: the embedded broker with its front, the coordinator's client link, and
//! ingestion of what agents publish.

pub mod broker;
pub mod front;
pub mod ingest;
pub mod link;
