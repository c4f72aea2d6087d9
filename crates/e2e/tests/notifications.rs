//! notification-service as a process: killed with SIGKILL under load,
//! restarted, and every notification made exactly once — none missing, none
//! twice — caught up from the stream.

mod system;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use system::{System, load};
use uuid::Uuid;

/// The events that make a notification for their account's owner: every
/// event of a customer's account but a limit change.
async fn expected(sys: &System) -> HashSet<Uuid> {
    sqlx::query_scalar(
        "SELECT e.event_id FROM events e JOIN accounts a ON a.id = e.account_id
         WHERE a.owner_id <> '00000000-0000-0000-0000-000000000000' AND e.kind <> 'LimitsSet'",
    )
    .fetch_all(&sys.write_db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_service_killed_under_load_and_restarted_makes_every_notification_exactly_once() {
    let mut sys = System::start().await;
    let (_, notify_db) = sys.start_notifications().await;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = load(&sys, 4, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.kill9("notification-service");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.restart("notification-service").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ledger.lock().unwrap().succeeded.len() > 50, "the load made too little to test anything");

    let want = expected(&sys).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let made: Vec<Uuid> =
            sqlx::query_scalar("SELECT event_id FROM notifications WHERE rule NOT LIKE 'balance_alert:%'")
                .fetch_all(&notify_db)
                .await
                .unwrap();
        let distinct: HashSet<Uuid> = made.iter().copied().collect();
        assert_eq!(made.len(), distinct.len(), "an event made two notifications");
        if distinct == want {
            eprintln!("{} notifications, one per event, after a kill -9 under load", made.len());
            break;
        }
        assert!(distinct.is_subset(&want), "a notification for an event the bank never wrote");
        assert!(
            Instant::now() < deadline,
            "{} of {} events notified a minute after the load",
            distinct.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
