//! The embedded master's Mesos v1 scheduler API, driven by a framework written here against the
//! wire format (protobuf and JSON, RecordIO event stream): subscribe, offers, decline, accept
//! with LAUNCH and LAUNCH_GROUP, invalid launches, stale offers, kill, acknowledge, reconcile,
//! authorisation of calls, teardown.

use std::time::Duration;

use berth_proto::{
    codec::ContentType,
    mesos::v1::{self as mesos, scheduler},
};
use berth_tests::Agent;
use futures::StreamExt;

use berth_tests::framework::{Framework, call, launch, runtime, task};

#[test]
fn scheduler_api_protobuf_framework_lifecycle() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    runtime().block_on(async {
        let begun = std::time::Instant::now();
        let mut fw = Framework::subscribe(agent.url(), ContentType::Protobuf, "proto-fw").await;

        // An offer carries the node's resources; a decline brings a new offer.
        let offer = fw.offer().await;
        let cpus = berth_proto::resources::scalar_sum(&offer.resources, "cpus");
        assert!(cpus > 0.0 && berth_proto::resources::scalar_sum(&offer.resources, "mem") > 0.0);
        fw.decline(&offer).await;
        let offer = fw.offer().await;

        eprintln!("{:?}: LAUNCH: one good task,", begun.elapsed());
        // LAUNCH: one good task, one asking for more than the offer.
        let agent_id = offer.agent_id.clone();
        let good = task("good", &agent_id, 0.1, 32.0, "echo from-good");
        let greedy = task("greedy", &agent_id, cpus + 100.0, 32.0, "true");
        fw.send(launch(&offer, vec![good, greedy])).await;
        let error = fw.update_of("greedy").await;
        assert_eq!(error.state(), mesos::TaskState::TaskError);
        assert_eq!(error.reason(), mesos::task_status::Reason::TaskInvalid);
        assert!(
            error.message().contains("more resources than offered"),
            "{:?}",
            error.message
        );
        let finished = fw.until_state("good", mesos::TaskState::TaskFinished).await;
        assert_eq!(finished.source(), mesos::task_status::Source::Executor);

        eprintln!("{:?}: The used offer is gone", begun.elapsed());
        // The used offer is gone: launching on it again drops the task.
        fw.send(launch(
            &offer,
            vec![task("stale", &agent_id, 0.1, 32.0, "true")],
        ))
        .await;
        let dropped = fw.update_of("stale").await;
        assert_eq!(dropped.state(), mesos::TaskState::TaskDropped);

        eprintln!("{:?}: A task id already used", begun.elapsed());
        // A task id already used is refused.
        let offer = fw.offer().await;
        fw.send(launch(
            &offer,
            vec![task("good", &agent_id, 0.1, 32.0, "true")],
        ))
        .await;
        let duplicate = fw.update_of("good").await;
        assert_eq!(duplicate.state(), mesos::TaskState::TaskError);
        assert!(
            duplicate.message().contains("already in use"),
            "{:?}",
            duplicate.message
        );

        eprintln!("{:?}: LAUNCH_GROUP on a fres", begun.elapsed());
        // LAUNCH_GROUP on a fresh offer, then KILL one of the group.
        let offer = fw.offer().await;
        let mut operation = mesos::offer::Operation {
            launch_group: Some(mesos::offer::operation::LaunchGroup {
                executor: mesos::ExecutorInfo {
                    executor_id: mesos::ExecutorId {
                        value: "group-exec".into(),
                    },
                    ..Default::default()
                },
                task_group: mesos::TaskGroupInfo {
                    tasks: vec![
                        task("g1", &agent_id, 0.1, 32.0, "sleep 300"),
                        task("g2", &agent_id, 0.1, 32.0, "exit 3"),
                    ],
                },
            }),
            ..Default::default()
        };
        operation.set_type(mesos::offer::operation::Type::LaunchGroup);
        let mut accept = call(scheduler::call::Type::Accept);
        accept.accept = Some(scheduler::call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![operation],
            filters: None,
        });
        fw.send(accept).await;
        let failed = fw.until_state("g2", mesos::TaskState::TaskFailed).await;
        assert!(
            failed.message().contains("status 3"),
            "{:?}",
            failed.message
        );
        fw.until_state("g1", mesos::TaskState::TaskRunning).await;
        let mut kill = call(scheduler::call::Type::Kill);
        kill.kill = Some(scheduler::call::Kill {
            task_id: mesos::TaskId { value: "g1".into() },
            agent_id: Some(agent_id.clone()),
            kill_policy: Some(mesos::KillPolicy {
                grace_period: Some(mesos::DurationInfo {
                    nanoseconds: 100_000_000,
                }),
            }),
        });
        fw.send(kill).await;
        fw.until_state("g1", mesos::TaskState::TaskKilled).await;

        eprintln!("{:?}: Explicit reconciliatio", begun.elapsed());
        // Explicit reconciliation: known tasks report their state, unknown ones TASK_LOST.
        let mut reconcile = call(scheduler::call::Type::Reconcile);
        reconcile.reconcile = Some(scheduler::call::Reconcile {
            tasks: vec![
                scheduler::call::reconcile::Task {
                    task_id: mesos::TaskId {
                        value: "good".into(),
                    },
                    agent_id: None,
                },
                scheduler::call::reconcile::Task {
                    task_id: mesos::TaskId {
                        value: "never-launched".into(),
                    },
                    agent_id: None,
                },
            ],
        });
        fw.send(reconcile).await;
        let good = fw.update_of("good").await;
        assert_eq!(good.state(), mesos::TaskState::TaskFinished);
        assert_eq!(good.reason(), mesos::task_status::Reason::Reconciliation);
        assert!(good.uuid.is_none(), "reconciliation updates carry no uuid");
        let unknown = fw.update_of("never-launched").await;
        assert_eq!(unknown.state(), mesos::TaskState::TaskLost);

        eprintln!("{:?}: Calls are bound to the", begun.elapsed());
        // Calls are bound to the subscription: wrong stream id, missing framework id, unknown framework.
        let mut revive = call(scheduler::call::Type::Revive);
        revive.framework_id = Some(fw.framework_id.clone());
        assert_eq!(fw.send_raw(&revive, Some("not-the-stream")).await.0, 400);
        assert_eq!(
            fw.send_raw(&call(scheduler::call::Type::Revive), Some(&fw.stream_id))
                .await
                .0,
            400
        );
        let mut stranger = call(scheduler::call::Type::Revive);
        stranger.framework_id = Some(mesos::FrameworkId {
            value: "no-such-framework".into(),
        });
        assert_eq!(fw.send_raw(&stranger, Some(&fw.stream_id)).await.0, 403);

        eprintln!("{:?}: TEARDOWN ends the fram", begun.elapsed());
        // TEARDOWN ends the framework: its event stream closes.
        fw.send(call(scheduler::call::Type::Teardown)).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match fw.events.next().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the event stream did not close after TEARDOWN"
        );
    });
    agent.assert_no_leftovers();
}

#[test]
fn scheduler_api_json_subscribe_and_malformed_calls() {
    let Some(mut agent) = Agent::start_or_skip() else {
        return;
    };
    runtime().block_on(async {
        let mut fw = Framework::subscribe(agent.url(), ContentType::Json, "json-fw").await;
        let offer = fw.offer().await;
        assert_eq!(offer.framework_id, fw.framework_id);
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1/scheduler", agent.url());
        // Required field missing (TaskID.value) inside an ACCEPT: 400 naming the field.
        let body = serde_json::json!({
            "type": "ACCEPT",
            "framework_id": {"value": fw.framework_id.value},
            "accept": {"offer_ids": [{"value": offer.id.value}], "operations": [
                {"type": "LAUNCH", "launch": {"task_infos": [
                    {"name": "x", "task_id": {}, "agent_id": {"value": offer.agent_id.value}}
                ]}}
            ]}
        });
        let response = http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Mesos-Stream-Id", &fw.stream_id)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let text = response.text().await.unwrap();
        assert!(
            text.contains("task_id.value"),
            "400 body should name the missing field: {text}"
        );
        // Garbage protobuf: 400.
        let response = http
            .post(&url)
            .header("Content-Type", "application/x-protobuf")
            .body(vec![0xff, 0xff, 0xff, 0x01])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        // Unsupported content type: 415.
        let response = http
            .post(&url)
            .header("Content-Type", "text/plain")
            .body("hi")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415);
        fw.send(call(scheduler::call::Type::Teardown)).await;
    });
    agent.assert_no_leftovers();
}
