//! Open- and closed-loop load with latency in HDR histograms.
//!
//! Open loop: request i is *scheduled* at t0 + i/rate and its latency runs
//! from that instant, not from when it was sent, so a server that falls
//! behind shows its queueing in the percentiles (no coordinated omission).

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// What one run saw.
pub struct Outcome {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
    pub offered_rate: Option<f64>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            elapsed: Duration::ZERO,
            offered_rate: None,
        }
    }

    fn record(&mut self, result: Result<(), tonic::Code>, latency: Duration) {
        match result {
            Ok(()) => {
                self.ok += 1;
                let _ = self.latency.record((latency.as_micros() as u64).max(1));
            }
            Err(code) => *self.errors.entry(format!("{code:?}")).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        let _ = self.latency.add(other.latency);
    }

    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn json(&self) -> Value {
        json!({
            "ok": self.ok,
            "per_second": round(self.per_second()),
            "offered_rate": self.offered_rate.map(round),
            "p50_ms": round(self.ms(0.5)),
            "p99_ms": round(self.ms(0.99)),
            "p999_ms": round(self.ms(0.999)),
            "max_ms": round(self.latency.max() as f64 / 1000.0),
            "errors": self.errors,
        })
    }
}

pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `concurrency` workers calling `op` back to back for `duration`: the
/// throughput ceiling.
pub async fn closed<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Outcome
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Code>> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (op, counter) = (op.clone(), counter.clone());
            tokio::spawn(async move {
                let mut out = Outcome::new();
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let result = op(i).await;
                    out.record(result, sent.elapsed());
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::new();
    for w in workers {
        total.merge(w.await.expect("worker panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

/// `op` at a fixed `rate` for `duration`, at most `max_in_flight` at once
/// (a request waiting for a slot keeps aging from its scheduled time).
pub async fn open<F, Fut>(rate: f64, duration: Duration, max_in_flight: usize, op: F) -> Outcome
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Code>> + Send,
{
    let total = Arc::new(Mutex::new(Outcome::new()));
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let started = Instant::now();
    let count = (rate * duration.as_secs_f64()) as u64;
    let mut tasks = Vec::with_capacity(count as usize);
    for i in 0..count {
        let scheduled = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let permit = slots.clone().acquire_owned().await.expect("never closed");
        let (op, total) = (op.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let result = op(i).await;
            let latency = scheduled.elapsed();
            drop(permit);
            total.lock().expect("not poisoned").record(result, latency);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut out = Arc::try_unwrap(total).ok().expect("all tasks done").into_inner().expect("not poisoned");
    out.elapsed = started.elapsed();
    out.offered_rate = Some(rate);
    out
}

/// A cheap deterministic pseudo-random number from a request index
/// (splitmix64), so scenarios need no shared RNG.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
