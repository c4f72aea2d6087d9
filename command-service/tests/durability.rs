//! Issue 16, defect 6: the relay deletes an event's outbox row once
//! JetStream acknowledges it, so an acknowledgement must mean the event is on
//! disk. The server the tests run (the stack's, with deploy/nats/nats.conf,
//! as compose runs it) syncs every write before it acknowledges.

use bank_testkit::http_get;

#[tokio::test]
async fn jetstream_syncs_every_write_before_it_acknowledges() {
    let monitor = std::env::var("NATS_MONITOR_ADDR").unwrap_or_else(|_| "127.0.0.1:8222".into());
    let varz = http_get(monitor.parse().expect("NATS_MONITOR_ADDR"), "/varz").await.expect("NATS monitoring answers");
    let varz: serde_json::Value = serde_json::from_str(&varz).expect("varz is JSON");
    let config = &varz["jetstream"]["config"];
    assert_eq!(config["sync_always"], serde_json::Value::Bool(true), "JetStream config: {config}");
}
