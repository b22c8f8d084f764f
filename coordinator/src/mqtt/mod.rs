//! MQTT: the embedded broker with its ACL front, the coordinator's client link, and
//! ingestion of what agents publish.

pub mod broker;
pub mod ingest;
pub mod link;
