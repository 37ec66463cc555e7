//! Watching the nodes over HTTP: `/api/cluster` views, member states, readiness, and the waits
//! built on them (polled every [`POLL_INTERVAL`], each with a deadline and an error that shows
//! the last answer).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::Value;
use tokio::time::{Instant, sleep};

use super::{
    ERROR_LOG_TAIL_LINES, HTTP_REQUEST_TIMEOUT, HTTP_REQUEST_TIMEOUT_MIN, POLL_INTERVAL,
    ProcessState, TestCluster,
};

impl TestCluster {
    /// Creates a public room called `name` through node `node`'s API (as the test user
    /// `room-maker`); returns its id.
    pub async fn create_room(&self, node: &str, name: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("{}/api/rooms", self.http_url(node)))
            .bearer_auth(crate::client::test_token("room-maker"))
            .json(&serde_json::json!({ "name": name }))
            .timeout(HTTP_REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("POST /api/rooms on {node}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 201 {
            bail!("POST /api/rooms on {node} answered {status}: {body}");
        }
        body["room"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("POST /api/rooms on {node} gave no room id: {body}"))
    }

    /// `GET /api/cluster` of node `observer`.
    pub async fn cluster_view(&self, observer: &str) -> anyhow::Result<Value> {
        self.get_json(observer, "/api/cluster", HTTP_REQUEST_TIMEOUT)
            .await
    }

    /// The state (`"up"` or `"down"`) of `member` in `observer`'s view.
    pub async fn member_state(&self, observer: &str, member: &str) -> anyhow::Result<String> {
        let view = self.cluster_view(observer).await?;
        member_state_in(&view, member)
    }

    /// Polls `observer`'s view every [`POLL_INTERVAL`] until `member` is in `state`; returns how
    /// long that took. On timeout the error shows the last view (or request error) and the tail
    /// of the observer's log. Fails at once if the observer is not running.
    pub async fn wait_member_state(
        &self,
        observer: &str,
        member: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        self.find(observer)?;
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let process = self.process_state(observer);
            if !matches!(process, ProcessState::Running { .. }) {
                bail!("observer {observer} is {process}; it cannot see {member} become {state:?}");
            }
            let view = self
                .get_json(observer, "/api/cluster", request_timeout(deadline))
                .await;
            let last_answer = match view
                .and_then(|view| member_state_in(&view, member).map(|found| (found, view)))
            {
                Ok((found, _)) if found == state => return Ok(started.elapsed()),
                Ok((found, view)) => format!("{member} is {found:?} in {view}"),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{observer} did not see {member} become {state:?} within {timeout:?}; last answer: \
                     {last_answer}\nlast {ERROR_LOG_TAIL_LINES} log lines of {observer}:\n{}",
                    self.log_tail(observer, ERROR_LOG_TAIL_LINES)
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until every live node (running, not paused) sees every live node `up`.
    pub async fn wait_all_up(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_all_up_until(Instant::now() + timeout).await
    }

    /// Polls `GET /readyz` of node `id` until it answers 200. Fails at once if the node exits.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_ready_until(id, Instant::now() + timeout).await
    }

    /// The wait of [`ClusterBuilder::start`], with the full diagnostics on failure.
    pub(super) async fn wait_started(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut outcome = Ok(());
        for id in self.node_ids() {
            outcome = self.wait_ready_until(&id, deadline).await;
            if outcome.is_err() {
                break;
            }
        }
        if outcome.is_ok() {
            outcome = self.wait_all_up_until(deadline).await;
        }
        match outcome {
            Ok(()) => Ok(()),
            Err(error) => Err(anyhow!(
                "the {}-node cluster did not start within {timeout:?}: {error:#}\n{}",
                self.nodes.len(),
                self.diagnostics().await
            )),
        }
    }

    async fn wait_ready_until(&self, id: &str, deadline: Instant) -> anyhow::Result<()> {
        self.find(id)?;
        let started = Instant::now();
        loop {
            match self.process_state(id) {
                ProcessState::Running { .. } => {}
                other => bail!(
                    "node {id} is {other} and will not become ready\nlast {ERROR_LOG_TAIL_LINES} log lines:\n{}",
                    self.log_tail(id, ERROR_LOG_TAIL_LINES)
                ),
            }
            let last_answer = match self.get(id, "/readyz", request_timeout(deadline)).await {
                Ok(response) if response.status() == reqwest::StatusCode::OK => return Ok(()),
                Ok(response) => format!("status {}", response.status()),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "node {id} not ready after {:?}; last /readyz answer: {last_answer}",
                    started.elapsed()
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    async fn wait_all_up_until(&self, deadline: Instant) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let live = self.live_node_ids();
            if live.is_empty() {
                bail!("no node is live");
            }
            let mut complaints = Vec::new();
            for observer in &live {
                match self
                    .get_json(observer, "/api/cluster", request_timeout(deadline))
                    .await
                {
                    Ok(view) => {
                        let not_up = members_not_up(&view, &live);
                        if !not_up.is_empty() {
                            complaints
                                .push(format!("{observer} does not see {not_up:?} up: {view}"));
                        }
                    }
                    Err(error) => complaints.push(format!("{observer}: {error:#}")),
                }
            }
            if complaints.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "live nodes {live:?} did not all see each other up within {:?}:\n{}",
                    started.elapsed(),
                    complaints.join("\n")
                );
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    async fn get(
        &self,
        id: &str,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::Response> {
        let node = self.find(id)?;
        let url = format!("http://{}{path}", node.http_addr);
        self.http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .with_context(|| format!("GET {url}"))
    }

    pub(super) async fn get_json(
        &self,
        id: &str,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let response = self.get(id, path, timeout).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("GET {path} on {id}: status {status}: {body}");
        }
        response
            .json()
            .await
            .with_context(|| format!("GET {path} on {id}: body is not JSON"))
    }
}

/// The timeout for one request made before `deadline`.
fn request_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(HTTP_REQUEST_TIMEOUT_MIN, HTTP_REQUEST_TIMEOUT)
}

/// The state of `member` in an `/api/cluster` answer.
fn member_state_in(view: &Value, member: &str) -> anyhow::Result<String> {
    let members = view
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no `members` array in {view}"))?;
    let entry = members
        .iter()
        .find(|entry| entry.get("id").and_then(Value::as_str) == Some(member))
        .ok_or_else(|| anyhow!("{member} is not among the members of {view}"))?;
    entry
        .get("state")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("member {member} has no string `state` in {view}"))
}

/// The ids among `expected` that an `/api/cluster` answer does not show `up`.
fn members_not_up(view: &Value, expected: &[String]) -> Vec<String> {
    let up: HashSet<&str> = view
        .get("members")
        .and_then(Value::as_array)
        .map(|members| {
            members
                .iter()
                .filter(|entry| entry.get("state").and_then(Value::as_str) == Some("up"))
                .filter_map(|entry| entry.get("id").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    expected
        .iter()
        .filter(|id| !up.contains(id.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cluster::ClusterBuilder;
    use crate::cluster::process::fake_binary;

    #[test]
    fn member_states_are_read_from_the_view() {
        let view = json!({
            "node": "n1",
            "members": [
                {"id": "n1", "state": "up", "since_ms": 1, "http_addr": "127.0.0.1:1"},
                {"id": "n2", "state": "down", "since_ms": 2, "http_addr": "127.0.0.1:2"},
            ],
            "entities": {"active": 0},
        });
        assert_eq!(member_state_in(&view, "n1").expect("n1"), "up");
        assert_eq!(member_state_in(&view, "n2").expect("n2"), "down");
        assert!(member_state_in(&view, "n3").is_err());
        assert!(member_state_in(&json!({"members": 3}), "n1").is_err());

        let expected = vec!["n1".to_string(), "n2".to_string(), "n3".to_string()];
        assert_eq!(members_not_up(&view, &expected), ["n2", "n3"]);
        assert_eq!(members_not_up(&json!({}), &expected), expected);
    }

    #[tokio::test]
    async fn start_fails_with_diagnostics_when_nodes_never_get_ready() {
        let scripts = tempfile::tempdir().expect("tempdir");
        let binary = fake_binary(scripts.path(), "echo 'listening nowhere'; exec sleep 60");
        let error = match ClusterBuilder::new(binary)
            .nodes(2)
            .start_timeout(Duration::from_millis(500))
            .start()
            .await
        {
            Ok(_) => panic!("a cluster without HTTP cannot start"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("did not start within"), "{error}");
        assert!(error.contains("/readyz"), "{error}");
        assert!(
            error.contains("--- chaos: starting node n2"),
            "the log tails are missing: {error}"
        );
    }

    /// Compile-time check: the cluster can be shared with spawned tasks, and its futures spawned.
    #[allow(dead_code)]
    fn cluster_and_its_futures_are_send(cluster: &TestCluster) {
        fn is_send_and_sync<T: Send + Sync>() {}
        fn is_send<T: Send>(_: &T) {}
        is_send_and_sync::<TestCluster>();
        is_send(&cluster.terminate("n1", Duration::ZERO));
        is_send(&cluster.restart("n1"));
        is_send(&cluster.wait_member_state("n1", "n2", "up", Duration::ZERO));
        is_send(&cluster.wait_all_up(Duration::ZERO));
        is_send(&cluster.wait_ready("n1", Duration::ZERO));
        is_send(&cluster.wait_exit("n1", Duration::ZERO));
        is_send(&cluster.diagnostics());
    }
}
