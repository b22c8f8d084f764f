//! Every JSON example in docs/protocol.md decodes with this crate, on the topic it is shown
//! for, and every message type of the contract has at least one example.

use std::collections::BTreeSet;

use munifab_protocol::message::{Command, Event, Family, StateBody, StatusBody, TelemetryBody};
use munifab_protocol::{Inbound, Topic};

const DOC: &str = include_str!("../../docs/protocol.md");

/// (topic, json) for each ```json block, with the topic taken from the nearest preceding
/// line that names one in backticks.
fn examples() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut topic: Option<String> = None;
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Topic `") {
            topic = Some(rest.split('`').next().unwrap().to_string());
        }
        if line.trim() == "```json" {
            let json: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let t = topic
                .take()
                .expect("every json example is preceded by its Topic line");
            out.push((t, json.join("\n")));
        }
    }
    out
}

#[test]
fn every_json_example_decodes_on_its_topic_without_unknown_types() {
    let examples = examples();
    assert!(
        examples.len() >= 20,
        "found only {} examples",
        examples.len()
    );
    let mut seen = BTreeSet::new();
    for (topic, json) in &examples {
        let topic = Topic::parse(topic).unwrap_or_else(|e| panic!("{topic}: {e}"));
        let msg =
            Inbound::decode(&topic, json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"));
        let name = msg.type_name().to_string();
        let known = [
            StatusBody::TYPES,
            StateBody::TYPES,
            TelemetryBody::TYPES,
            Event::TYPES,
            Command::TYPES,
        ]
        .iter()
        .any(|types| types.contains(&name.as_str()));
        assert!(known, "example of unknown type {name}");
        // re-encoding and decoding gives the same message
        let again = match &msg {
            Inbound::Event(m) => Inbound::decode(&topic, &m.to_json()),
            Inbound::Command(m) => Inbound::decode(&topic, &m.to_json()),
            Inbound::Status(m) => Inbound::decode(&topic, &m.to_json()),
            Inbound::State(m) => Inbound::decode(&topic, &m.to_json()),
            Inbound::Telemetry(m) => Inbound::decode(&topic, &m.to_json()),
        }
        .unwrap();
        assert_eq!(again, msg);
        seen.insert(name);
    }
    for types in [
        StatusBody::TYPES,
        StateBody::TYPES,
        TelemetryBody::TYPES,
        Event::TYPES,
        Command::TYPES,
    ] {
        for t in types {
            assert!(seen.contains(*t), "docs/protocol.md has no example of {t}");
        }
    }
}
