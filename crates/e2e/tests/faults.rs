//! Faults under a steady command load: a broker outage, a killed projector,
//! a killed command-service, Redis stopped, Postgres restarted. After each,
//! every command a client saw succeed is in the event store exactly once,
//! retried commands had one effect, the read models converge to the fold,
//! reconcile is clean, and everything recovered by itself.

mod system;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use system::{System, assert_nothing_lost_nothing_doubled, load, stack};

/// Runs the load, applies `fault` in the middle, lets it run on, then checks.
async fn under_load<F, Fut>(fault: F)
where
    F: FnOnce(System) -> Fut,
    Fut: std::future::Future<Output = System>,
{
    let sys = System::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = load(&sys, 6, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sys = fault(sys).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    // Let in-flight retries settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_nothing_lost_nothing_doubled(&sys, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_under_load() {
    under_load(|sys| async {
        stack("stop-nats");
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack("start-nats");
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_killed_with_sigkill_and_restarted() {
    under_load(|mut sys| async {
        sys.kill9("projector");
        tokio::time::sleep(Duration::from_secs(1)).await;
        sys.restart("projector").await;
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_service_killed_mid_burst_and_restarted() {
    under_load(|mut sys| async {
        sys.kill9("command-service");
        tokio::time::sleep(Duration::from_millis(500)).await;
        sys.restart("command-service").await;
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load() {
    under_load(|sys| async {
        stack("stop-redis");
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack("start-redis");
        sys
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    under_load(|sys| async {
        stack("restart-postgres");
        sys
    })
    .await;
}
