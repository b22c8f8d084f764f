//! Ingestion checks that hold whatever the broker does: a message must be signed with the
//! key of the agent named in its topic.

mod common;

use common::each_db;
use common::fixtures::*;
use munifab_coordinator::auth::{Grant, Role};
use munifab_coordinator::mqtt::ingest::{Dropped, Ingested, ingest};
use munifab_coordinator::store::NewToken;
use munifab_protocol::{Message, SigningKey, StateBody, Topic};

#[tokio::test]
async fn a_message_signed_by_another_agent_or_unsigned_is_dropped() {
    for db in each_db().await {
        let s = &db.store;
        let mut secrets = Vec::new();
        for a in ["lab-a", "lab-b"] {
            let grant = Grant::new(Role::Agent, Some(a)).unwrap();
            secrets.push(
                s.create_token(
                    &NewToken {
                        grant,
                        label: a.into(),
                    },
                    1,
                )
                .await
                .unwrap()
                .1,
            );
        }
        let topic = Topic::MachineState(agent("lab-a"), machine("mk3"));
        let json = Message::stamped(StateBody::MachineState(machine_state(
            "mk3",
            munifab_protocol::MachineStatus::Ready,
        )))
        .to_json();
        let t = topic.to_string();

        let by_b = SigningKey::derive(&secrets[1]).sign(&t, &json);
        assert!(
            matches!(
                ingest(s, &t, &by_b, 3, 10).await,
                Err(Dropped::Signature { .. })
            ),
            "{}",
            db.name
        );
        assert!(matches!(
            ingest(s, &t, &json, 3, 10).await,
            Err(Dropped::Signature { .. })
        ));
        assert!(
            s.list_machines(None).await.unwrap().is_empty(),
            "nothing was recorded"
        );

        let unknown = Topic::MachineState(agent("lab-z"), machine("mk3")).to_string();
        assert!(matches!(
            ingest(s, &unknown, &by_b, 3, 10).await,
            Err(Dropped::UnknownAgent(_))
        ));
        // the machine in the payload must be the one in the topic
        let other = Topic::MachineState(agent("lab-a"), machine("mini")).to_string();
        let by_a = SigningKey::derive(&secrets[0]).sign(&other, &json);
        assert!(matches!(
            ingest(s, &other, &by_a, 3, 10).await,
            Err(Dropped::MachineMismatch)
        ));

        let by_a = SigningKey::derive(&secrets[0]).sign(&t, &json);
        assert_eq!(
            ingest(s, &t, &by_a, 3, 10).await.unwrap(),
            Ingested::MachineState
        );
        assert_eq!(s.list_machines(None).await.unwrap().len(), 1);
    }
}
