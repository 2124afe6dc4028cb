//! Several control replicas: an agent given two control URLs follows one of them; after kill -9 of that one it is
//! connected to the other within 5 s, emits go on being delivered throughout, and their reports reach the survivor.
//!
//! In the first test the two controls are independent sled controls that start from one copy of the same database
//! (owner, event type and endpoint alike, ids and signing secret included); in the second they share one PostgreSQL
//! database, as replicated control does, with two agents and a config change made on the survivor.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hookrelay_common::proto::v1::DeliveryStatus;
use hookrelay_common::proto::v1::admin_service_client::AdminServiceClient;
use hookrelay_common::sealed::MasterKey;
use hookrelay_tests::api::{agent_info, deliveries_of_owner, emit_request, emit_until_routed, succeeded_event_ids};
use hookrelay_tests::{
    AgentOpts, Control, ControlOpts, DEADLINE, EndpointSpec, Fixture, Receiver, eventually, spawn_agent_with,
    spawn_control, spawn_control_with, unique,
};
use tonic::transport::Channel;

/// The longest the agent may take to follow the stream on another replica.
const FAILOVER: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_moves_to_the_surviving_replica_and_reports_reach_it() {
    let receiver = Receiver::start().await;
    let mut controls = [spawn_control().await, spawn_control().await];
    let mut fixture = Fixture::new(controls[0].admin().await).await;
    fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[50, 50, 50])).await;
    same_database(&mut controls).await;

    let urls = format!("{},{}", controls[0].url(), controls[1].url());
    let agent = spawn_agent_with(AgentOpts::new(urls)).await;
    let node = agent.node_name().to_owned();
    let mut admins = [controls[0].admin().await, controls[1].admin().await];
    let mut emitter = agent.emitter().await;
    emit_until_routed(&mut emitter, &fixture.owner, &fixture.event_type, 1).await;
    let first = eventually("one replica lists the agent as connected", DEADLINE, async || {
        let connected = [connected(&mut admins[0], &node).await, connected(&mut admins[1], &node).await];
        match connected {
            [true, false] => Ok(0),
            [false, true] => Ok(1),
            other => Err(format!("connected on each replica: {other:?}")),
        }
    })
    .await;
    let survivor = 1 - first;

    // Steady emits from before the kill until well after the move.
    let stop = Arc::new(AtomicBool::new(false));
    let emits = tokio::spawn({
        let (stop, mut emitter) = (stop.clone(), emitter.clone());
        let (owner, event_type) = (fixture.owner.clone(), fixture.event_type.clone());
        async move {
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = unique("failover");
                let request = emit_request(&owner, &event_type, &id, &serde_json::json!({"n": acked.len()}));
                let answer = emitter.emit(request).await.unwrap_or_else(|status| panic!("Emit {id}: {status:?}"));
                assert_eq!(answer.get_ref().deliveries, 1, "{:?}", answer.get_ref());
                acked.push((id, Instant::now()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        }
    });
    assert_eventually_delivered(&receiver, 10).await;

    controls[first].kill9();
    let killed_at = Instant::now();
    let moved_after = loop {
        if connected(&mut admins[survivor], &node).await {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < FAILOVER,
            "the agent did not reach the other replica within {FAILOVER:?}\n{}\n{}",
            agent.stderr_report(30),
            controls[survivor].stderr_report(20)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("the agent was connected to the surviving replica {moved_after:?} after kill -9 of the first");

    let before = receiver.succeeded_ids().len();
    assert_eventually_delivered(&receiver, before + 20).await;
    stop.store(true, Ordering::Relaxed);
    let acked = emits.await.expect("the emitting task");

    let all: BTreeSet<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    eventually("every acknowledged emit is delivered", DEADLINE, async || {
        let missing: Vec<_> = all.difference(&receiver.succeeded_ids()).cloned().collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("not delivered: {missing:?}")) }
    })
    .await;
    // Emits acknowledged after the kill can only have been reported to the survivor.
    let after_kill: BTreeSet<String> =
        acked.iter().filter(|(_, at)| *at > killed_at).map(|(id, _)| id.clone()).collect();
    assert!(after_kill.len() >= 20, "{} emits after the kill", after_kill.len());
    eventually("the survivor lists the deliveries of emits after the kill as succeeded", DEADLINE, async || {
        let succeeded =
            succeeded_event_ids(&mut admins[survivor], &fixture.owner).await.map_err(|s| format!("{s:?}"))?;
        let missing: Vec<_> = after_kill.difference(&succeeded).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("{} not succeeded yet: {missing:?}", missing.len())) }
    })
    .await;
}

/// Whether `ListAgents` of one replica shows the agent `node` connected; an unreachable replica says no.
async fn connected(admin: &mut AdminServiceClient<Channel>, node: &str) -> bool {
    matches!(agent_info(admin, node).await, Ok(Some(agent)) if agent.connected)
}

async fn assert_eventually_delivered(receiver: &Receiver, count: usize) {
    eventually(&format!("{count} events are delivered"), DEADLINE, async || {
        let delivered = receiver.succeeded_ids().len();
        if delivered >= count { Ok(()) } else { Err(format!("{delivered} delivered; {}", receiver.summary())) }
    })
    .await;
}

/// Stops both controls, gives the second a copy of the first one's database and starts both again.
async fn same_database(controls: &mut [Control; 2]) {
    for control in controls.iter_mut() {
        let status = control.terminate().await;
        assert!(status.success(), "control exits 0 on SIGTERM, got {status}\n{}", control.stderr_report(20));
    }
    let (source, target) = (controls[0].data_dir(), controls[1].data_dir());
    std::fs::remove_dir_all(&target).expect("remove the second control's data");
    copy_dir(&source, &target);
    for control in controls.iter_mut() {
        control.restart().await;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|error| panic!("create {}: {error}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|error| panic!("read {}: {error}", from.display())) {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|error| panic!("copy to {}: {error}", target.display()));
        }
    }
}

/// Two control replicas on one PostgreSQL database, two agents given both: kill -9 of one replica during steady
/// emits moves its agents to the other within 5 s, every acknowledged event is delivered and recorded once in the
/// log, and a config change made on the survivor reaches both agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_survive_a_kill_and_fan_changes_out() {
    let Some(cluster) = hookrelay_tests::postgres::postgres() else { return };
    let database = cluster.fresh_database();
    let keys = tempfile::tempdir().unwrap();
    let key = hookrelay_tests::write_file(keys.path(), "master.key", &MasterKey::generate().expose_base64());
    let opts = || ControlOpts {
        extra_args: vec![
            "--database-url".into(),
            database.clone(),
            "--master-key-file".into(),
            key.display().to_string(),
        ],
        ..ControlOpts::default()
    };
    let mut controls = [spawn_control_with(opts()).await, spawn_control_with(opts()).await];
    let receiver = Receiver::start().await;
    let mut fixture = Fixture::new(controls[0].admin().await).await;
    let (endpoint, _) = fixture.create_endpoint(EndpointSpec::new(receiver.url()).schedule_ms(&[50, 50, 50])).await;

    let urls = format!("{},{}", controls[0].url(), controls[1].url());
    let agents = [spawn_agent_with(AgentOpts::new(urls.clone())).await, spawn_agent_with(AgentOpts::new(urls)).await];
    let nodes = [agents[0].node_name().to_owned(), agents[1].node_name().to_owned()];
    let mut admins = [controls[0].admin().await, controls[1].admin().await];
    let mut emitters = [agents[0].emitter().await, agents[1].emitter().await];
    for emitter in &mut emitters {
        emit_until_routed(emitter, &fixture.owner, &fixture.event_type, 1).await;
    }
    // The replica the first agent follows is killed; the other agent may be on either.
    let doomed = eventually("a replica lists the first agent as connected", DEADLINE, async || {
        let connected = [connected(&mut admins[0], &nodes[0]).await, connected(&mut admins[1], &nodes[0]).await];
        connected.iter().position(|on| *on).ok_or_else(|| format!("connected on each replica: {connected:?}"))
    })
    .await;
    let survivor = 1 - doomed;

    let stop = Arc::new(AtomicBool::new(false));
    let emits: Vec<_> = emitters
        .iter()
        .map(|emitter| {
            let (stop, mut emitter) = (stop.clone(), emitter.clone());
            let (owner, event_type) = (fixture.owner.clone(), fixture.event_type.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = unique("replicas");
                    let request = emit_request(&owner, &event_type, &id, &serde_json::json!({"n": acked.len()}));
                    let answer = emitter.emit(request).await.unwrap_or_else(|status| panic!("Emit {id}: {status:?}"));
                    // One endpoint, then two once the change made on the survivor arrives.
                    assert!(answer.get_ref().deliveries >= 1, "{:?}", answer.get_ref());
                    acked.push(id);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                acked
            })
        })
        .collect();
    assert_eventually_delivered(&receiver, 10).await;

    controls[doomed].kill9();
    let killed_at = Instant::now();
    loop {
        let moved =
            [connected(&mut admins[survivor], &nodes[0]).await, connected(&mut admins[survivor], &nodes[1]).await];
        if moved == [true, true] {
            eprintln!("both agents were connected to the surviving replica {:?} after the kill", killed_at.elapsed());
            break;
        }
        assert!(
            killed_at.elapsed() < FAILOVER,
            "the agents did not all reach the surviving replica within {FAILOVER:?}: {moved:?}\n{}",
            controls[survivor].stderr_report(20)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A change made on the survivor reaches both agents: a second endpoint doubles every event's deliveries.
    let second = Receiver::start().await;
    fixture.admin = admins[survivor].clone();
    fixture.create_endpoint(EndpointSpec::new(second.url())).await;
    for emitter in &mut emitters {
        emit_until_routed(emitter, &fixture.owner, &fixture.event_type, 2).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for emitting in emits {
        acked.extend(emitting.await.expect("an emitting task"));
    }

    eventually("every acknowledged emit is delivered", DEADLINE, async || {
        let missing: Vec<_> = acked.difference(&receiver.succeeded_ids()).take(5).cloned().collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("not delivered, e.g. {missing:?}")) }
    })
    .await;
    eventually("the log records each acknowledged emit's delivery once, as succeeded", DEADLINE, async || {
        let listed = deliveries_of_owner(&mut admins[survivor], &fixture.owner).await.map_err(|s| format!("{s:?}"))?;
        let mut recorded = BTreeSet::new();
        let mut succeeded = 0;
        for delivery in listed.iter().filter(|d| d.endpoint_id == endpoint.id && acked.contains(&d.event_id)) {
            if !recorded.insert(delivery.event_id.clone()) {
                return Err(format!("event {} recorded twice", delivery.event_id));
            }
            succeeded += usize::from(delivery.status() == DeliveryStatus::Succeeded);
        }
        if recorded.len() == acked.len() && succeeded == acked.len() {
            Ok(())
        } else {
            Err(format!("{} of {} recorded, {succeeded} succeeded", recorded.len(), acked.len()))
        }
    })
    .await;
}
