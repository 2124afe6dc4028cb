//! The agent prints `hookrelay-agent listening on ADDR` only once it can serve (queue and cached config open):
//! probes and scripts wait for that line. An agent whose cache key does not open its cached config exits 1 without
//! ever printing it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hookrelay_tests::process::{AGENT_BIN, binary};
use hookrelay_tests::{DEADLINE, Fixture, api, spawn_agent, spawn_control};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_cache_key_exits_without_saying_it_listens() {
    let control = spawn_control().await;
    let mut agent = spawn_agent(&control).await;
    let fixture = Fixture::new(control.admin().await).await;
    let mut emitter = agent.emitter().await;
    // A config in force is a config cached, sealed under the key in the data dir.
    api::emit_until_routed(&mut emitter, &fixture.owner, &fixture.event_type, 0).await;
    let status = agent.terminate().await;
    assert!(status.success(), "{status}");

    let data_dir = agent.data_dir();
    let other_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    std::fs::write(data_dir.join("cache.key"), other_key).expect("replace the cache key");
    let mut child = Command::new(binary(AGENT_BIN))
        .args(["--listen", "127.0.0.1:0", "--control-url", &control.url(), "--node-name", agent.node_name()])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the agent");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent with a wrong cache key still runs after {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains("listening on"), "printed its listening line, then failed: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("cache"), "the error names the cache: {stderr}");
}
