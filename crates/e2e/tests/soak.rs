//! Sixty seconds of steady load with each service's memory (RSS) sampled:
//! no error, and no growth beyond a bound once warmed up.

mod system;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use system::{System, assert_nothing_lost_nothing_doubled, load};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_seconds_of_load_hold_memory_steady() {
    let sys = System::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = load(&sys, 3, stop.clone()).await;
    let names = ["command-service", "projector", "query-service"];
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); names.len()];
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for (i, n) in names.iter().enumerate() {
            samples[i].push(rss_kib(sys.pid(n)));
        }
    }
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, n) in names.iter().enumerate() {
        let s = &samples[i];
        eprintln!("{n} RSS KiB every 5 s: {s:?}");
        // After a 10 s warm-up, the last sample stays within 1.5x + 16 MiB of the first.
        let (warm, last) = (s[1], *s.last().unwrap());
        assert!(warm > 0 && last <= warm * 3 / 2 + 16 * 1024, "{n} grew from {warm} KiB to {last} KiB");
    }
    assert_nothing_lost_nothing_doubled(&sys, &ledger).await;
}
