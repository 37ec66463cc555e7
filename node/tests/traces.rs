//! One trace across two real nodes: a WebSocket post on one node to a room another node owns
//! is exported over OTLP/HTTP by both, to an in-process receiver on loopback, as one trace
//! (`ws.post` → `entity.ask` on the client's node, `entity.command` → `journal.append` and
//! `pubsub.publish` on the owner's), with the parent links of the W3C traceparent carried in
//! the entity envelope; an HTTP request's `traceparent` header makes its `http.request` span
//! part of the client's trace; spans still in the batch are flushed when a node stops.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos::client::{ChatClient, test_token};
use chaos::cluster::{ClusterBuilder, TestCluster};
use http_body_util::BodyExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use serde_json::{Value, json};

/// How long spans may take to arrive (the nodes export every 100 ms).
const SPANS_WAIT: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const EXPORT_INTERVAL_MS: i64 = 100;

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    /// `service.instance.id` of the exporting node.
    node: String,
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/HTTP receiver on loopback: POST /v1/traces, protobuf.
struct Receiver {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn decode(body: &[u8]) -> Result<Vec<Received>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let attribute = |key: &str| {
            resource_spans
                .resource
                .as_ref()
                .and_then(|resource| resource.attributes.iter().find(|kv| kv.key == key))
                .and_then(|kv| kv.value.as_ref())
                .and_then(|value| match &value.value {
                    Some(any_value::Value::StringValue(text)) => Some(text.clone()),
                    _ => None,
                })
                .unwrap_or_default()
        };
        let node = attribute("service.instance.id");
        let service = attribute("service.name");
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                spans.push(Received {
                    node: node.clone(),
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    Ok(spans)
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let address = listener.local_addr().expect("its address");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (task_spans, task_requests) = (spans.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (spans, requests) = (task_spans.clone(), task_requests.clone());
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (spans, requests) = (spans.clone(), requests.clone());
                        async move {
                            let line = format!(
                                "{} {} {:?}",
                                request.method(),
                                request.uri().path(),
                                request.headers().get("content-type")
                            );
                            let ok = request.method() == hyper::Method::POST
                                && request.uri().path() == "/v1/traces";
                            let body = request.into_body().collect().await?.to_bytes();
                            let decoded = if ok { decode(&body).ok() } else { None };
                            requests.lock().expect("not poisoned").push(line);
                            let status = match decoded {
                                Some(decoded) => {
                                    spans.lock().expect("not poisoned").extend(decoded);
                                    hyper::StatusCode::OK
                                }
                                None => hyper::StatusCode::BAD_REQUEST,
                            };
                            let reply = ExportTraceServiceResponse::default().encode_to_vec();
                            let mut response = hyper::Response::new(http_body_util::Full::new(
                                hyper::body::Bytes::from(reply),
                            ));
                            *response.status_mut() = status;
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, hyper::Error>(response)
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            address,
            spans,
            requests,
            task,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("not poisoned").clone()
    }

    /// Polls until `found` picks something out of the spans received so far.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[Received]) -> Option<T>) -> T {
        let deadline = Instant::now() + SPANS_WAIT;
        loop {
            if let Some(value) = found(&self.spans()) {
                return value;
            }
            if Instant::now() >= deadline {
                let spans = self.spans();
                let requests = self.requests.lock().expect("not poisoned").clone();
                panic!(
                    "{what}: not received within {SPANS_WAIT:?}; requests: {requests:?}; {} spans: {spans:#?}",
                    spans.len()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

async fn traced_cluster(receiver: &Receiver) -> TestCluster {
    ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(2)
        .setting(
            "telemetry",
            "otlp_endpoint",
            format!("http://{}", receiver.address),
        )
        .setting("telemetry", "export_interval_ms", EXPORT_INTERVAL_MS)
        .start()
        .await
        .expect("2-node cluster starts")
}

/// Creates a room through `node` with a client's `traceparent` header.
async fn create_room(cluster: &TestCluster, node: &str, traceparent: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/api/rooms", cluster.http_url(node)))
        .bearer_auth(test_token("tracer"))
        .header("traceparent", traceparent)
        .json(&json!({ "name": "Traced" }))
        .send()
        .await
        .expect("create room");
    assert_eq!(response.status(), 201, "create room");
    let body: Value = response.json().await.expect("json");
    body["room"]["id"].as_str().expect("room id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_node_post_is_one_trace_exported_by_both_nodes() {
    let receiver = Receiver::start().await;
    let cluster = traced_cluster(&receiver).await;
    let members = ["n1", "n2"];

    // An HTTP client's trace: the request's span is a child of the client's span.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let room = create_room(
        &cluster,
        "n1",
        &format!("00-{client_trace}-{client_span}-01"),
    )
    .await;
    let request = receiver
        .wait_for("the http.request span of POST /api/rooms", |spans| {
            spans
                .iter()
                .find(|span| span.name == "http.request" && span.trace_id == client_trace)
                .cloned()
        })
        .await;
    assert_eq!(request.parent_span_id, client_span, "{request:?}");
    assert_eq!(request.node, "n1");
    assert_eq!(request.service, "actorhub");

    // A post from a client connected to the node that does not own the room.
    let owner = runtime::placement::owner("room", &room, members).expect("an owner");
    let client_node = members
        .into_iter()
        .find(|node| *node != owner)
        .expect("another node");
    let mut client = ChatClient::connect(&cluster.http_url(client_node), &test_token("poster"))
        .await
        .expect("connect");
    client.join_and_wait(&room, None).await.expect("join");
    client
        .post(&room, "p1", "traced hello")
        .await
        .expect("post");
    let (ack, _) = client.until("ack", WAIT).await.expect("the post's ack");
    assert_eq!(ack["id"], "p1");

    let post = receiver
        .wait_for("ws.post on the client's node", |spans| {
            spans
                .iter()
                .find(|span| span.name == "ws.post" && span.node == client_node)
                .cloned()
        })
        .await;
    let trace = post.trace_id.clone();
    let in_trace = |spans: &[Received], name: &str, node: &str| {
        spans
            .iter()
            .find(|span| span.trace_id == trace && span.name == name && span.node == node)
            .cloned()
    };
    let (ask, command, append, publish) = receiver
        .wait_for(
            "entity.ask, entity.command, journal.append and pubsub.publish in the post's trace",
            |spans| {
                Some((
                    in_trace(spans, "entity.ask", client_node)?,
                    in_trace(spans, "entity.command", owner)?,
                    in_trace(spans, "journal.append", owner)?,
                    in_trace(spans, "pubsub.publish", owner)?,
                ))
            },
        )
        .await;
    assert_eq!(
        ask.parent_span_id, post.span_id,
        "the ask is the post's child"
    );
    assert_eq!(
        command.parent_span_id, ask.span_id,
        "the owner's command is the child of the asker's span on the other node"
    );
    assert_eq!(
        append.parent_span_id, command.span_id,
        "the append is the command's child"
    );
    assert_eq!(
        publish.parent_span_id, command.span_id,
        "the broadcast of the post is the command's child"
    );
    let nodes: BTreeSet<String> = receiver.spans().into_iter().map(|span| span.node).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["n1".to_string(), "n2".to_string()]),
        "every node exports, naming itself"
    );
    client.close().await;
}

/// Without `[telemetry]` (and with the standard variable empty, as good as unset) the node
/// serves a traced client as before, with no exporter; the receiver, never named to it, gets
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let receiver = Receiver::start().await;
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        // The standard variable, empty, is the same as unset.
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        .start()
        .await
        .expect("1 node starts");
    let room = create_room(
        &cluster,
        "n1",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .await;
    let mut client = ChatClient::connect(&cluster.http_url("n1"), &test_token("poster"))
        .await
        .expect("connect");
    client.join_and_wait(&room, None).await.expect("join");
    client.post(&room, "p1", "untraced").await.expect("post");
    client.until("ack", WAIT).await.expect("the post's ack");
    assert!(
        !cluster
            .log_tail("n1", 200)
            .contains("exporting trace spans"),
        "the node says it exports"
    );
    assert!(receiver.spans().is_empty());
    client.close().await;
}

/// Spans still waiting in the batch when the node stops are sent before it exits: with an
/// export interval far longer than the test, a request's span arrives only through the flush
/// after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_in_the_batch_are_flushed_when_the_node_stops() {
    let receiver = Receiver::start().await;
    let cluster = ClusterBuilder::new(env!("CARGO_BIN_EXE_node"))
        .nodes(1)
        .setting(
            "telemetry",
            "otlp_endpoint",
            format!("http://{}", receiver.address),
        )
        .setting("telemetry", "export_interval_ms", 60_000)
        // A lone node has no one to hand its entities to: it would wait the whole deadline.
        .setting("cluster", "drain_timeout_ms", 200)
        .start()
        .await
        .expect("1 node starts");
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    create_room(&cluster, "n1", &format!("00-{trace}-00f067aa0ba902b7-01")).await;
    let status = cluster
        .terminate("n1", Duration::from_secs(30))
        .await
        .expect("the node stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let request = receiver
        .spans()
        .into_iter()
        .find(|span| span.name == "http.request" && span.trace_id == trace);
    assert!(
        request.is_some(),
        "the request's span was flushed before the node exited; got {:?}",
        receiver.spans()
    );
}
