//! One trace crosses the broker: a client's `traceparent` reaches
//! command-service through gRPC metadata, travels in the event envelope to the
//! outbox relay, and in NATS headers to the projector. The three real
//! binaries export over OTLP to a receiver in this test, which checks that the
//! spans share the client's trace id and chain parent to child.

mod system;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bank_proto::v1 as pb;
use bank_testkit::authed;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use system::System;
use tonic::{Request, Response, Status};
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_client_through_the_relay_to_the_projector() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);

    let sys = System::start_with(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("RUST_LOG", "info".into()),
    ])
    .await;
    let customer = sys.issuer.customer(Uuid::now_v7());
    let mut commands = sys.command_client().await;
    let open =
        pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: Uuid::new_v4().into() };
    let account = commands.open_account(authed(open, &customer)).await.unwrap().into_inner().account.unwrap();

    // The client's own trace: a random trace id and the client's span id.
    let (trace_id, client_span) = (Uuid::new_v4().simple().to_string(), &Uuid::new_v4().simple().to_string()[..16]);
    let deposit = pb::DepositRequest {
        account_id: account.account_id,
        money: Some(pb::Money { currency_code: "USD".into(), amount: "9.99".into() }),
        idempotency_key: Uuid::new_v4().into(),
        description: "traced".into(),
    };
    let mut req = authed(deposit, &sys.issuer.teller(Uuid::now_v7()));
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{client_span}-01").parse().unwrap());
    commands.deposit(req).await.unwrap();

    // A deposit writes one event per leg (the account's and the bank's cash
    // account's); each is published in its own relay span and applied by the
    // projector consuming its partition, in whatever order the partitions run.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (server, relays, spans) = loop {
        let spans: Vec<Span> =
            receiver.0.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
        let named = |service: &str, name: &str| -> Vec<Span> {
            spans.iter().filter(|s| s.service == service && s.name.contains(name)).cloned().collect()
        };
        let server = named("command-service", "AccountCommandService/Deposit").pop();
        let relays = named("command-service", "relay publish");
        let applies = named("projector", "projector apply");
        let every_publish_applied = relays.iter().all(|r| applies.iter().any(|a| a.parent_span_id == r.span_id));
        if let Some(server) = server
            && !relays.is_empty()
            && every_publish_applied
        {
            break (server, relays, spans);
        }
        assert!(Instant::now() < deadline, "spans of trace {trace_id} seen so far: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Parent to child, across three hops: client → server → relay → projector.
    assert_eq!(hex(&server.parent_span_id), client_span, "the server span continues the client's");
    for relay in &relays {
        // The envelope carries the context of the span that wrote it: the ledger's, inside the server's.
        let writer = spans.iter().find(|s| s.span_id == relay.parent_span_id).expect("the relay's parent was exported");
        assert_eq!(writer.service, "command-service");
        assert_eq!(writer.parent_span_id, server.span_id, "the relay continues the command (via the envelope)");
    }
    // The loop above waited for a projector span whose parent is each relay
    // span (the NATS headers hop); no projector span of this trace hangs elsewhere.
    let relay_ids: Vec<&Vec<u8>> = relays.iter().map(|r| &r.span_id).collect();
    for apply in spans.iter().filter(|s| s.service == "projector" && s.name.contains("projector apply")) {
        assert!(relay_ids.contains(&&apply.parent_span_id), "the projector continues a relay span: {apply:#?}");
    }
}
