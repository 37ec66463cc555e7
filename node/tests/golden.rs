//! Journals written by earlier builds still load: a node started on a copy of the v1 golden
//! store (`tests/golden/v1`, written by the one-object-per-append journal) serves the account,
//! the room's seven messages and the finished job it holds, continues the room's history with
//! the node log, and after a restart reads the mix of both formats.

use std::path::Path;
use std::time::Duration;

use chaos::client::ChatClient;
use chaos::cluster::ClusterBuilder;
use serde_json::{Value, json};

const ROOM: &str = "golden-room-a04a54";
const JOB: &str = "2927de881c8158a684cd42333ce2f414";
const EMAIL: &str = "golden@example.com";
const PASSWORD: &str = "correct horse battery staple";

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read golden") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn login(url: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{url}/api/users/login"))
        .json(&json!({ "email": EMAIL, "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200, "the v1 account logs in");
    let body: Value = response.json().await.expect("json");
    body["token"].as_str().expect("token").to_string()
}

async fn messages(url: &str, token: &str) -> Vec<String> {
    let body: Value = reqwest::Client::new()
        .get(format!("{url}/api/rooms/{ROOM}/messages?after=0&limit=200"))
        .bearer_auth(token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|message| message["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_store_opens_serves_and_continues() {
    let directory = tempfile::tempdir().expect("tempdir");
    let objects = directory.path().join("objects");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1"),
        &objects,
    );
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .setting("storage", "url", format!("file://{}", objects.display()))
        .start()
        .await
        .expect("a node starts on the v1 store");
    let url = cluster.http_url("n1");
    let token = login(&url).await;
    let expected: Vec<String> = (1..=7)
        .map(|index| format!("message {index} from the v1 journal"))
        .collect();
    assert_eq!(messages(&url, &token).await, expected);

    let job: Value = reqwest::Client::new()
        .get(format!("{url}/api/jobs/{JOB}"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("job")
        .json()
        .await
        .expect("json");
    assert_eq!(job["state"], "done", "{job}");
    let output: Value = reqwest::Client::new()
        .get(format!("{url}/api/jobs/{JOB}/download"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("download")
        .json()
        .await
        .expect("the output is JSON");
    assert_eq!(
        output,
        json!([{"name": "ada", "age": "36"}, {"name": "alan", "age": "41"}])
    );

    // The history goes on in the node log, after the v1 segments and snapshot.
    let mut client = ChatClient::connect(&url, &token).await.expect("connect");
    let (head, _) = client.join_and_wait(ROOM, None).await.expect("join");
    assert_eq!(head, 7);
    client
        .post(ROOM, "golden-8", "message 8 from the node log")
        .await
        .expect("post");
    let (ack, _) = client
        .until("ack", Duration::from_secs(10))
        .await
        .expect("ack");
    assert_eq!(ack["seq"], 8);
    client.close().await;

    // Both formats, read by a node that starts on them.
    cluster
        .terminate("n1", Duration::from_secs(10))
        .await
        .expect("stop");
    cluster.restart("n1").await.expect("restart");
    cluster
        .wait_ready("n1", Duration::from_secs(20))
        .await
        .expect("ready");
    let token = login(&url).await;
    let mut expected = expected;
    expected.push("message 8 from the node log".into());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = messages(&url, &token).await;
        if now == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "history after restart: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
