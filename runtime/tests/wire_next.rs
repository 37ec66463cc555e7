//! A node of the next cluster protocol joins a cluster of this one, and both serve.
//!
//! n1 and n2 run in this process (this build, protocol 2); n3 is `examples/wire_next.rs`
//! built with the `wire-next` feature (protocol 3, one envelope field more), a separate
//! process that `.ci/run` builds before the tests. The pair settles on protocol 2; asks from
//! n1 reach registers that n3 owns, and n3's asks reach registers that n1 and n2 own.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use runtime::NodeBuilder;
use runtime::builtin::{Register, RegisterCommand};
use runtime::config::{ClusterConfig, ConfigOverrides};

const ASKS: usize = 30;

fn next_node_binary() -> PathBuf {
    // target/debug/deps/wire_next-<hash> → target/debug/examples/wire_next
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in target/<profile>/deps");
    let binary = profile.join("examples").join("wire_next");
    assert!(
        binary.exists(),
        "the next-protocol node is not built: run `cargo build -p runtime --example wire_next --features wire-next` (.ci/run does) and test again"
    );
    binary
}

fn config(directory: &std::path::Path, ports: &[u16]) -> String {
    let mut text = format!(
        "[cluster]\nname = \"mixed\"\ncookie = \"mixed-cookie\"\ndata_dir = \"{}\"\nheartbeat_interval_ms = 100\nfailure_timeout_ms = 2000\nmember_table = false\n[storage]\nurl = \"file://{}\"\nfsync = false\n",
        directory.join("data").display(),
        directory.join("objects").display(),
    );
    for (index, id) in ["n1", "n2", "n3"].iter().enumerate() {
        text.push_str(&format!(
            "[[node]]\nid = \"{id}\"\ncluster_addr = \"127.0.0.1:{}\"\nhttp_addr = \"127.0.0.1:{}\"\n",
            ports[2 * index],
            ports[2 * index + 1]
        ));
    }
    text
}

/// Kills the child if the test fails before closing its input.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_protocol_node_serves_beside_this_one() {
    let binary = next_node_binary();
    let directory = tempfile::tempdir().expect("tempdir");
    let ports = runtime::config::free_loopback_ports(6).expect("ports");
    let text = config(directory.path(), &ports);
    let path = directory.path().join("cluster.toml");
    std::fs::write(&path, &text).expect("config file");
    let start = |id: &'static str| {
        let text = text.clone();
        async move {
            let config = ClusterConfig::from_toml(&text, "mixed test", ConfigOverrides::default())
                .expect("config");
            NodeBuilder::new(config, id)
                .expect("builder")
                .start()
                .await
                .expect("node starts")
        }
    };
    let n1 = start("n1").await;
    let n2 = start("n2").await;
    let mut next = Child(
        Command::new(&binary)
            .arg(&path)
            .arg("n3")
            .arg(ASKS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the next-protocol node starts"),
    );
    let stdout = next.0.stdout.take().expect("stdout");
    // The child's report, read on a blocking thread; it ends with `done` or at its exit.
    let report = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("child output");
            let done = line == "done";
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });

    let runtime = n1.runtime();
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            let view = runtime.view();
            view.is_up("n2") && view.is_up("n3")
        })
        .await,
        "n1 sees n2 and the next-protocol n3 up"
    );
    let n3 = runtime
        .view()
        .member("n3")
        .cloned()
        .expect("n3 is a member");
    assert_eq!(n3.protocol, 2, "n1 and n3 speak the lower protocol");

    // This build asks; some registers live on n3.
    let mut served_by_next = 0;
    for index in 0..ASKS {
        let reply = runtime
            .entity::<Register>(format!("current-{index}"))
            .ask_with(RegisterCommand::Add(1), Duration::from_secs(20), None)
            .await
            .expect("ask")
            .expect("add");
        assert_eq!(reply.counter, 1);
        if reply.node == "n3" {
            served_by_next += 1;
        }
    }
    assert!(
        served_by_next > 0,
        "n3 owns some of {ASKS} registers and serves them"
    );

    // The next-protocol node asks; some registers live here.
    let lines = tokio::time::timeout(Duration::from_secs(60), report)
        .await
        .expect("the next-protocol node reports within a minute")
        .expect("reader");
    assert_eq!(
        lines.first().map(String::as_str),
        Some("protocol 3"),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"peer n1 protocol 2".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"peer n2 protocol 2".to_string()),
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    let served_here = lines
        .iter()
        .filter(|line| line.ends_with("served-by n1") || line.ends_with("served-by n2"))
        .count();
    assert!(
        served_here > 0,
        "n1 and n2 serve some of n3's asks: {lines:?}"
    );
    // Every one of n3's adds is durable and visible from this build.
    for index in 0..ASKS {
        let reply = runtime
            .entity::<Register>(format!("next-{index}"))
            .ask_with(RegisterCommand::Get, Duration::from_secs(20), None)
            .await
            .expect("ask")
            .expect("get");
        assert_eq!(reply.counter, 1, "next-{index}");
    }

    drop(next.0.stdin.take());
    let status = next.0.wait().expect("child exit");
    assert!(
        status.success(),
        "the next-protocol node stops cleanly: {status}"
    );
    n2.shutdown(Duration::from_secs(5)).await;
    n1.shutdown(Duration::from_secs(5)).await;
}
