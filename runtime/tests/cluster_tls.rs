//! Mutual TLS between nodes, in one process: two nodes with certificates of the cluster CA
//! see each other up; a third that presents n2's certificate but claims to be n3 is refused
//! (its session closed, never up); a client whose certificate comes from another CA fails
//! its TLS handshake with the cluster port.
//! One test function: ractor's registries are process-global.

mod common;

use std::time::{Duration, Instant};

use runtime::config::{ClusterConfig, ConfigOverrides};
use runtime::{MemberState, NodeBuilder};

fn config(directory: &std::path::Path, tls: &std::path::Path, ports: &[u16]) -> String {
    let mut text = format!(
        "[cluster]\nname = \"tls\"\ncookie = \"tls-cookie\"\ndata_dir = \"{}\"\nheartbeat_interval_ms = 100\nfailure_timeout_ms = 1000\n[cluster.tls]\ndir = \"{}\"\n[storage]\nurl = \"file://{}\"\nfsync = false\n",
        directory.join("data").display(),
        tls.display(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_who_their_certificates_say() {
    let directory = tempfile::tempdir().expect("tempdir");
    let tls = directory.path().join("tls");
    runtime::cluster::tls::generate(
        &tls,
        &[
            ("n1".into(), vec!["127.0.0.1".into()]),
            ("n2".into(), vec!["127.0.0.1".into()]),
        ],
    )
    .expect("certificates");
    // The impostor: n2's certificate and key, presented by a node that calls itself n3.
    let impostor = directory.path().join("impostor");
    std::fs::create_dir_all(&impostor).expect("dir");
    std::fs::copy(tls.join("ca.pem"), impostor.join("ca.pem")).expect("ca");
    std::fs::copy(tls.join("n2.pem"), impostor.join("n3.pem")).expect("cert");
    std::fs::copy(tls.join("n2.key"), impostor.join("n3.key")).expect("key");

    let ports = runtime::config::free_loopback_ports(6).expect("ports");
    let start = |id: &'static str, tls_dir: &std::path::Path| {
        let text = config(directory.path(), tls_dir, &ports);
        async move {
            let config = ClusterConfig::from_toml(&text, "tls test", ConfigOverrides::default())
                .expect("config");
            NodeBuilder::new(config, id)
                .expect("builder")
                .start()
                .await
                .expect("node starts")
        }
    };
    let n1 = start("n1", &tls).await;
    let n2 = start("n2", &tls).await;
    let n3 = start("n3", &impostor).await;
    let runtime = n1.runtime();
    assert!(
        common::wait_until(Duration::from_secs(20), || runtime.view().is_up("n2")).await,
        "n1 and n2 meet over mutual TLS"
    );
    // The impostor keeps dialing for a while; it never comes up at n1.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        let state = runtime.view().member("n3").map(|member| member.state);
        assert_eq!(
            state,
            Some(MemberState::Down),
            "a node claiming another's name is refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!n3.runtime().view().is_up("n1"));

    // A client with a certificate from another CA does not get through the TLS handshake.
    let other = directory.path().join("other-ca");
    runtime::cluster::tls::generate(&other, &[("n1".into(), vec![])]).expect("another CA");
    let stranger = runtime::cluster::tls::ClusterTls::load(&other, "n1").expect("stranger");
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", ports[0]))
        .await
        .expect("connect");
    let outcome = tokio::time::timeout(Duration::from_secs(10), stranger.connect(stream, "n1"))
        .await
        .expect("the handshake ends");
    assert!(outcome.is_err(), "a certificate of another CA is refused");

    for node in [n3, n2, n1] {
        node.shutdown(Duration::from_secs(5)).await;
    }
}
