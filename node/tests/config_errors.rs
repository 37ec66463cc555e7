//! A bad `cluster.toml` stops `node run` at once with exit code 2 and a message naming the key.

use std::process::Command;

const GOOD: &str = r#"
[cluster]
name = "t"
cookie = "test-cookie"
data_dir = "data"
[web]
jwt_secret = "a-test-secret-of-some-length"
[[node]]
id = "n1"
cluster_addr = "127.0.0.1:17101"
http_addr = "127.0.0.1:18101"
[[node]]
id = "n2"
cluster_addr = "127.0.0.1:17102"
http_addr = "127.0.0.1:18102"
"#;

/// Runs `node run` on `config` and returns (exit code, stderr).
fn run_with(config: &str, id: &str) -> (Option<i32>, String) {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("cluster.toml");
    std::fs::write(&path, config).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--id", id])
        .env_remove("ACTORHUB_COOKIE")
        .env_remove("ACTORHUB_JWT_SECRET")
        .output()
        .expect("run node");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_config_error(config: &str, id: &str, expected: &[&str]) {
    let (code, stderr) = run_with(config, id);
    assert_eq!(
        code,
        Some(2),
        "exit code for a config error; stderr:\n{stderr}"
    );
    for fragment in expected {
        assert!(
            stderr.contains(fragment),
            "stderr should mention {fragment:?}:\n{stderr}"
        );
    }
}

#[test]
fn unknown_key_is_named() {
    let config = GOOD.replace("name = \"t\"", "name = \"t\"\nheartbeat_ms = 100");
    assert_config_error(&config, "n1", &["unknown field", "heartbeat_ms"]);
}

#[test]
fn duplicate_port_is_named() {
    let config = GOOD.replace("127.0.0.1:18102", "127.0.0.1:18101");
    assert_config_error(
        &config,
        "n1",
        &["node[1].http_addr", "duplicate address 127.0.0.1:18101"],
    );
}

#[test]
fn missing_node_id_field_is_named() {
    let config = GOOD.replace("id = \"n2\"\n", "");
    assert_config_error(&config, "n1", &["missing field `id`"]);
}

#[test]
fn id_not_in_config_is_named() {
    assert_config_error(GOOD, "n9", &["no [[node]] with id \"n9\"", "n1", "n2"]);
}

#[test]
fn missing_config_file_is_explained() {
    let output = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["run", "--config", "/nonexistent/cluster.toml", "--id", "n1"])
        .output()
        .expect("run node");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot read the config file /nonexistent/cluster.toml")
    );
}

#[test]
fn token_command_prints_a_verifiable_token() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("cluster.toml");
    std::fs::write(&path, GOOD).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_node"))
        .args(["token", "--config"])
        .arg(&path)
        .args(["--user", "alice", "--ttl", "2h"])
        .env_remove("ACTORHUB_JWT_SECRET")
        .output()
        .expect("run node token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    let keys = web::auth::TokenKeys::new(b"a-test-secret-of-some-length");
    let claims = keys
        .verify(&token, web::auth::unix_now_s())
        .expect("token verifies with the config secret");
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.exp - claims.iat, 7200);
}
