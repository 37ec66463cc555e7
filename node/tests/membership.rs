//! Membership over real `node run` processes on loopback: the cluster forms, a killed node is
//! seen down at once and comes back, a frozen node is seen down by the heartbeat deadline and
//! rejoins when it thaws. Each test starts its own cluster; a lock keeps them from running at
//! the same time, so the failure-detection deadlines are not measured on a starved CPU.

use std::time::{Duration, Instant};

use chaos::cluster::{ClusterBuilder, TestCluster};
use tokio::sync::Mutex;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn three_nodes() -> TestCluster {
    ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(3)
        .start()
        .await
        .expect("3-node cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_form_a_cluster_and_report_it() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    for observer in cluster.node_ids() {
        let view = cluster.cluster_view(&observer).await.expect("cluster view");
        assert_eq!(view["node"], observer.as_str());
        let members = view["members"].as_array().expect("members array");
        assert_eq!(members.len(), 3, "{view}");
        for member in members {
            assert_eq!(member["state"], "up", "{observer} sees {member}");
            assert!(
                member["since_ms"]
                    .as_u64()
                    .is_some_and(|since| since > 1_600_000_000_000),
                "{member}"
            );
        }
        assert!(view["entities"]["active"].is_u64(), "{view}");
    }
    let client = reqwest::Client::new();
    let url = cluster.http_url("n1");
    let health = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "actorhub_members_up 3",
        "actorhub_membership_transitions_total",
        "actorhub_heartbeats_sent_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    let missing = client
        .get(format!("{url}/api/nope"))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_down_within_a_second_and_rejoins_after_restart() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    let killed_at = Instant::now();
    cluster.kill("n2");
    for observer in ["n1", "n3"] {
        let remaining = Duration::from_secs(1).saturating_sub(killed_at.elapsed());
        cluster
            .wait_member_state(observer, "n2", "down", remaining)
            .await
            .unwrap_or_else(|error| {
                panic!("{observer} did not see n2 down within 1 s of the kill: {error:#}")
            });
    }
    cluster.restart("n2").await.expect("restart n2");
    cluster
        .wait_all_up(Duration::from_secs(15))
        .await
        .expect("all three up again after the restart");
    let view = cluster.cluster_view("n1").await.expect("view");
    let n2 = view["members"]
        .as_array()
        .and_then(|members| members.iter().find(|member| member["id"] == "n2"))
        .cloned();
    assert_eq!(
        n2.as_ref().map(|member| member["incarnation"].clone()),
        Some(serde_json::json!(2)),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_is_down_within_three_seconds_and_rejoins_when_thawed() {
    let _guard = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = three_nodes().await;
    let frozen_at = Instant::now();
    cluster.pause("n3");
    for observer in ["n1", "n2"] {
        let remaining = Duration::from_secs(3).saturating_sub(frozen_at.elapsed());
        cluster
            .wait_member_state(observer, "n3", "down", remaining)
            .await
            .unwrap_or_else(|error| {
                panic!("{observer} did not see frozen n3 down within 3 s: {error:#}")
            });
    }
    // The survivors still see each other while n3 is frozen.
    assert_eq!(cluster.member_state("n1", "n2").await.expect("state"), "up");
    cluster.resume("n3");
    cluster
        .wait_all_up(Duration::from_secs(15))
        .await
        .expect("n3 rejoins after SIGCONT");
}
