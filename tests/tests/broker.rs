//! A message built with the protocol crate crosses every real broker the test can have
//! (embedded rumqttd always, Mosquitto when `MUNIFAB_TEST_MQTT_URL` is set) and arrives
//! decoded, with its retained flag honoured.

use std::time::Duration;

use munifab_protocol::{AgentId, AgentStatus, Inbound, Message, Presence, StatusBody, Topic};
use munifab_tests::broker::TestBroker;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn options(broker: &TestBroker, client: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client, broker.host(), broker.port());
    o.set_keep_alive(Duration::from_secs(5));
    o
}

#[tokio::test]
async fn a_retained_status_arrives_decoded_at_a_later_subscriber_through_each_broker() {
    for broker in TestBroker::each().await {
        // A unique agent id per run, so a retained message left on a shared Mosquitto by an
        // earlier run cannot satisfy this one.
        let agent = AgentId::new(format!(
            "t-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
        .unwrap();
        let topic = Topic::Status(agent.clone());
        let sent = Message::stamped(StatusBody::AgentStatus(AgentStatus {
            state: Presence::Online,
            version: "test".into(),
            site: Some("lab".into()),
            machines: vec![],
            last_will: false,
        }));

        // publish retained, and wait for the broker's acknowledgement
        let (publisher, mut pub_loop) =
            AsyncClient::new(options(&broker, &format!("{agent}-pub")), 10);
        publisher
            .publish(topic.to_string(), QoS::AtLeastOnce, true, sent.to_json())
            .await
            .unwrap();
        loop {
            match pub_loop
                .poll()
                .await
                .unwrap_or_else(|e| panic!("{broker}: {e}"))
            {
                Event::Incoming(Packet::PubAck(_)) => break,
                _ => continue,
            }
        }

        // a subscriber that connects afterwards gets the retained message, decoded
        let (subscriber, mut sub_loop) =
            AsyncClient::new(options(&broker, &format!("{agent}-sub")), 10);
        subscriber
            .subscribe(topic.to_string(), QoS::AtLeastOnce)
            .await
            .unwrap();
        let received = loop {
            match sub_loop
                .poll()
                .await
                .unwrap_or_else(|e| panic!("{broker}: {e}"))
            {
                Event::Incoming(Packet::Publish(p)) => break p,
                _ => continue,
            }
        };
        assert!(received.retain, "{broker}: retained flag lost");
        let parsed = Topic::parse(&received.topic).unwrap();
        assert_eq!(parsed, topic);
        match Inbound::decode(&parsed, &received.payload).unwrap() {
            Inbound::Status(msg) => assert_eq!(msg, sent, "{broker}"),
            other => panic!("{broker}: decoded as {other:?}"),
        }

        // clean up the retained message on shared brokers
        publisher
            .publish(topic.to_string(), QoS::AtLeastOnce, true, Vec::new())
            .await
            .unwrap();
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = pub_loop.poll().await.unwrap() {
                break;
            }
        }
    }
}
