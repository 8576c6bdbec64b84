//! Traces: the real binary exports its spans over OTLP/gRPC to a collector running in this
//! test process (opentelemetry-proto's generated `TraceService`), continuing the W3C
//! `traceparent` a client sends over HTTP and over gRPC.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tonic::metadata::MetadataValue;

use crate::support::{Server, shapes};
use crate::{CLASSES_SEED, read};

/// One exported span and the `service.name` of the resource it came with.
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/gRPC trace collector on a loopback port, keeping every span it receives.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

struct Sink(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received { service: service.clone(), span });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(s) => Some(s.clone()),
        AnyValue::IntValue(i) => Some(i.to_string()),
        AnyValue::DoubleValue(d) => Some(d.to_string()),
        AnyValue::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Collector {
    fn start() -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = TraceServiceServer::new(Sink(spans.clone()));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(sink)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Collector { endpoint, spans, _runtime: runtime }
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of one trace, by span id, and its root (the span whose parent is not in it).
struct Trace<'a> {
    spans: Vec<&'a Span>,
}

impl<'a> Trace<'a> {
    fn of(received: &'a [Received], trace_id: &str) -> Trace<'a> {
        Trace { spans: received.iter().map(|r| &r.span).filter(|s| hex(&s.trace_id) == trace_id).collect() }
    }

    fn root(&self) -> &'a Span {
        let ids: Vec<&[u8]> = self.spans.iter().map(|s| s.span_id.as_slice()).collect();
        let roots: Vec<&&Span> = self.spans.iter().filter(|s| !ids.contains(&s.parent_span_id.as_slice())).collect();
        assert_eq!(roots.len(), 1, "one root per trace: {:?}", self.names());
        roots[0]
    }

    /// `parent`'s children's names, in the order they started.
    fn children(&self, parent: &Span) -> Vec<&'a Span> {
        let mut children: Vec<&Span> =
            self.spans.iter().copied().filter(|s| s.parent_span_id == parent.span_id).collect();
        children.sort_by_key(|s| s.start_time_unix_nano);
        children
    }

    fn names(&self) -> Vec<&str> {
        self.spans.iter().map(|s| s.name.as_str()).collect()
    }
}

fn names<'a>(spans: &[&'a Span]) -> Vec<&'a str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// Checks the pipeline's part of a trace under `root`: the four stages in order, each stage's
/// guests beneath it with their phases, and the model on the inference stage.
fn assert_pipeline(trace: &Trace<'_>, root: &Span) {
    let stages = trace.children(root);
    assert_eq!(names(&stages), ["preprocess", "inference", "postprocess", "rules"], "{:?}", trace.names());
    let guests: HashMap<&str, Vec<&str>> =
        stages.iter().map(|s| (s.name.as_str(), names(&trace.children(s)))).collect();
    assert_eq!(guests["preprocess"], ["guest preprocess"]);
    assert_eq!(guests["inference"], Vec::<&str>::new());
    assert_eq!(guests["postprocess"], ["guest postprocess"]);
    assert_eq!(guests["rules"], ["guest rules-threshold"]);
    assert_eq!(attr(stages[1], "model").as_deref(), Some("shapes"));
    for stage in &stages {
        assert!(
            stage.start_time_unix_nano >= root.start_time_unix_nano
                && stage.end_time_unix_nano <= root.end_time_unix_nano
        );
        for guest in trace.children(stage) {
            let call_ms: f64 = attr(guest, "call_ms").expect("call_ms").parse().unwrap();
            assert!(call_ms > 0.0, "{guest:?}");
            assert!(attr(guest, "instantiate_ms").is_some(), "{guest:?}");
        }
    }
}

#[test]
fn spans_reach_an_otlp_collector_and_continue_the_clients_trace() {
    let collector = Collector::start();
    let server = Server::start(&["--otlp-endpoint", &collector.endpoint]);
    let case = &shapes(CLASSES_SEED, 2)[0];
    let image = read(&case.path);

    // HTTP, continuing the client's trace.
    let (http_trace, http_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{http_trace}-{http_parent}-01");
    let (status, body, _) =
        server.classify(&image, "", &[("traceparent", &traceparent), ("x-request-id", "traced-over-http")]);
    assert_eq!(status, 200, "{body}");

    // A corrupt image in its own trace: the failure is on the request and the stage.
    let bad_trace = "0af7651916cd43dd8448eb211c80319c";
    let (status, body, _) =
        server.classify(b"not an image", "", &[("traceparent", &format!("00-{bad_trace}-b7ad6b7169203331-01"))]);
    assert_eq!(status, 400, "{body}");

    // A client that does not sample: nothing of its trace is exported.
    let unsampled = "11111111111111111111111111111111";
    let (status, _, _) =
        server.classify(&image, "", &[("traceparent", &format!("00-{unsampled}-2222222222222222-00"))]);
    assert_eq!(status, 200);

    // No traceparent: a new trace, rooted here.
    let (status, _, _) = server.classify(&image, "", &[("x-request-id", "untraced")]);
    assert_eq!(status, 200);

    // gRPC, the trace context in metadata.
    let (grpc_trace, grpc_parent) = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = crate::grpc::connect(&rt, &server);
    let mut request = crate::grpc::request(image.clone(), "image/png");
    let value = format!("00-{grpc_trace}-{grpc_parent}-01");
    request.metadata_mut().insert("traceparent", MetadataValue::try_from(value.as_str()).unwrap());
    rt.block_on(client.recognize(request)).expect("the gRPC call");

    // SIGTERM: the server flushes the spans it still holds before it exits.
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let (code, log) = server.terminate_after_signal();
    assert_eq!(code, Some(0), "{log}");
    let received = collector.spans.lock().unwrap();
    assert!(received.iter().all(|r| r.service == "tessera"), "service.name");

    let trace = Trace::of(&received, http_trace);
    let root = trace.root();
    assert_eq!(root.name, "POST /v1/classify");
    assert_eq!(hex(&root.parent_span_id), http_parent, "the client's span is the parent");
    assert_eq!(root.kind, SpanKind::Server as i32);
    assert_eq!(attr(root, "request_id").as_deref(), Some("traced-over-http"));
    assert_eq!(attr(root, "status").as_deref(), Some("200"));
    assert_pipeline(&trace, root);
    assert_eq!(trace.spans.len(), 1 + 4 + 3, "{:?}", trace.names());

    let trace = Trace::of(&received, bad_trace);
    let root = trace.root();
    assert_eq!(attr(root, "status").as_deref(), Some("400"));
    assert_eq!(attr(root, "error.type").as_deref(), Some("invalid_image"));
    let stages = trace.children(root);
    assert_eq!(names(&stages), ["preprocess"], "{:?}", trace.names());
    assert_eq!(attr(stages[0], "error.type").as_deref(), Some("invalid_image"));
    // The caller's mistake is not the server's error.
    assert_ne!(root.status.as_ref().map(|s| s.code), Some(StatusCode::Error as i32));

    assert!(Trace::of(&received, unsampled).spans.is_empty(), "an unsampled trace was exported");

    let untraced: Vec<&Span> = received
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.parent_span_id.is_empty() && attr(s, "request_id").as_deref() == Some("untraced"))
        .collect();
    assert_eq!(untraced.len(), 1, "a request without traceparent starts its own trace");

    let trace = Trace::of(&received, grpc_trace);
    let root = trace.root();
    assert_eq!(root.name, "image_recognition.ImageRecognitionService/Recognize");
    assert_eq!(hex(&root.parent_span_id), grpc_parent);
    assert_eq!(attr(root, "status").as_deref(), Some("0"), "gRPC OK");
    assert_pipeline(&trace, root);

    // Probes are not traced.
    assert!(!received.iter().any(|r| r.span.name.contains("readyz")), "probes were traced");
}

#[test]
fn an_unreachable_collector_costs_no_request() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = Server::start(&["--otlp-endpoint", &format!("http://127.0.0.1:{port}")]);
    let image = read(&shapes(CLASSES_SEED, 2)[0].path);
    for _ in 0..5 {
        let (status, body, _) =
            server.classify(&image, "", &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]);
        assert_eq!(status, 200, "{body}");
    }
    let started = std::time::Instant::now();
    let status = std::process::Command::new("kill").args(["-TERM", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let (code, log) = server.terminate_after_signal();
    assert_eq!(code, Some(0), "{log}");
    assert!(started.elapsed().as_secs() < 10, "exit waited {:?} on the collector", started.elapsed());
}
