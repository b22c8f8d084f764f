//! Offline resilience through every broker the test can have: the broker goes away in the
//! middle of a job (a TCP proxy between agent and broker drops every connection and refuses
//! new ones), and the agent itself restarts with events still spooled.

mod support;

use munifab_protocol::JobId;
use munifab_tests::broker::TestBroker;
use support::*;

#[tokio::test]
async fn a_job_survives_a_broker_outage_and_every_event_arrives_once_in_order() {
    logs();
    for broker in TestBroker::each().await {
        let agent = agent_id();
        let proxy = Proxy::start(broker_addr(&broker).await).await;
        let http = ArtifactServer::start().await;
        let mut coord = Coordinator::connect(&broker, &agent).await;
        let data = temp_dir();
        let running = RunningAgent::start(&config(
            &agent,
            &proxy.url,
            &http.base,
            &data,
            &paced_marlin(),
        ));
        machine_ready(&mut coord, "mk3").await;

        let artifact = http.add("long.gcode", &marlin_gcode(1500, 200.0));
        coord
            .send(assign_cmd(
                JobId::random(),
                3,
                "mk3",
                artifact,
                fdm_requirements(),
            ))
            .await;
        let mut events = coord.events_until("started").await;
        proxy.down();
        // The job runs to its end while the broker is unreachable.
        spooled(&data, "completed").await;
        proxy.up();
        events.extend(coord.events_until("completed").await);
        let names = assert_sequence(&events);
        assert!(
            names.iter().filter(|n| *n == "progress").count() > 1,
            "{broker}: {names:?}"
        );
        running.stop().await;
        coord.clean_retained(&["mk3"]).await;
        std::fs::remove_dir_all(data).unwrap();
    }
}

#[tokio::test]
async fn an_agent_restart_replays_the_events_of_a_job_that_ended_offline() {
    logs();
    for broker in TestBroker::each().await {
        let agent = agent_id();
        let proxy = Proxy::start(broker_addr(&broker).await).await;
        let http = ArtifactServer::start().await;
        let mut coord = Coordinator::connect(&broker, &agent).await;
        let data = temp_dir();
        let cfg = config(&agent, &proxy.url, &http.base, &data, &paced_marlin());
        let first = RunningAgent::start(&cfg);
        machine_ready(&mut coord, "mk3").await;

        let artifact = http.add("long.gcode", &marlin_gcode(1200, 200.0));
        coord
            .send(assign_cmd(
                JobId::random(),
                1,
                "mk3",
                artifact,
                fdm_requirements(),
            ))
            .await;
        let mut events = coord.events_until("started").await;
        proxy.down();
        spooled(&data, "completed").await;
        first.stop().await;

        proxy.up();
        let second = RunningAgent::start(&cfg);
        events.extend(coord.events_until("completed").await);
        let names = assert_sequence(&events);
        assert_eq!(names.last().unwrap(), "completed", "{broker}");
        second.stop().await;
        coord.clean_retained(&["mk3"]).await;
        std::fs::remove_dir_all(data).unwrap();
    }
}
