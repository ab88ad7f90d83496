//! The daemon's counters and histograms for `GET /metrics`: what happened since start (requests,
//! tokens evaluated and reused, tokens generated, time to first token, per-token latency,
//! embeddings and their batch sizes).
//!
//! Why process-wide statics: the values are written on the hottest paths (every generated token,
//! every embedding batch, every request) by modules that otherwise share nothing (`llm`, `embed`,
//! `server`); a relaxed atomic add costs a few nanoseconds and needs no handle threaded through
//! every constructor. One daemon runs per process, so "since start" is "since this process
//! started". Gauges of current state (queue lengths, loaded models, library files by state,
//! RSS) are not kept here: `server/metrics.rs` reads them from their owners at scrape time,
//! from counters those owners keep, so a scrape never walks the store.
//!
//! Rendering (the Prometheus text format) is `server/metrics.rs`'s; this module only counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A count that goes up and down (work in progress).
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicU64::new(0))
    }

    /// Counts one more in progress until the guard drops.
    pub fn track(&self) -> GaugeGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(self)
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Most buckets a histogram has (its bounds are fixed at compile time).
const MAX_BUCKETS: usize = 12;

/// Observations counted into fixed buckets (`le` upper bounds, cumulative when rendered), with
/// their count and sum: Prometheus's histogram.
pub struct Histogram {
    bounds: &'static [f64],
    /// `buckets[i]`: observations in `(bounds[i-1], bounds[i]]`; the last slot is `+Inf`.
    buckets: [AtomicU64; MAX_BUCKETS + 1],
    count: AtomicU64,
    /// The sum as f64 bits (updated with compare-and-swap; contention is one writer thread in
    /// practice).
    sum: AtomicU64,
}

/// A histogram's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound, observations ≤ it), cumulative, ascending; `+Inf` not included.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// `bounds` ascending, at most [`MAX_BUCKETS`] (checked by the unit tests of the statics).
    pub const fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let slot = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len())
            .min(MAX_BUCKETS);
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut current = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .enumerate()
            .map(|(i, &bound)| {
                running += self.buckets[i].load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }
}

/// Seconds from a chat generation entering the queue to its first token: queue wait, prompt
/// evaluation and the first step. A 135M model answers in ~0.1 s, a 1.5B model on a long prompt
/// in a minute or two.
const TTFT_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// Seconds per generated token (one decode step): 135M ~15 ms, 1.5B ~60 ms on 2 cores; a
/// collapse under contention shows in the upper buckets.
const TOKEN_BOUNDS: &[f64] = &[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];
/// Texts per embedding batch handed to ONNX Runtime (at most `embed::MAX_BATCH`, 32).
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// How a generation ended, as counted.
pub const FINISHES: [&str; 5] = ["stop", "length", "cancelled", "preempted", "error"];

/// Everything counted since start.
pub struct Metrics {
    /// Prompt tokens the model evaluated (prefill work done).
    pub prompt_evaluated: Counter,
    /// Prompt tokens taken from the KV cache instead of being evaluated.
    pub prompt_reused: Counter,
    /// Tokens generated, all priorities.
    pub generated: Counter,
    /// Generations ended, by [`FINISHES`] index.
    pub generations: [Counter; 5],
    /// Chat (interactive) generations decoding or evaluating their prompt right now.
    pub streams_active: Gauge,
    /// Chat generations: queue entry to first token.
    pub ttft: Histogram,
    /// Chat generations: one decode step per token.
    pub token_latency: Histogram,
    /// Texts embedded (queries and documents).
    pub embedded: Counter,
    /// Texts per embedding batch.
    pub embed_batch: Histogram,
    /// KV snapshots written to disk (a conversation's sequence evicted, unloaded or stopped).
    pub kv_saved: Counter,
    /// KV snapshots restored into a sequence instead of evaluating their tokens.
    pub kv_restored: Counter,
    /// Prompt tokens those restores covered (also counted in `prompt_reused`).
    pub kv_restored_tokens: Counter,
    /// KV snapshots deleted as damaged or refused by llama.cpp.
    pub kv_discarded: Counter,
    /// Responses by (route pattern, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            prompt_evaluated: Counter::new(),
            prompt_reused: Counter::new(),
            generated: Counter::new(),
            generations: [const { Counter::new() }; 5],
            streams_active: Gauge::new(),
            ttft: Histogram::new(TTFT_BOUNDS),
            token_latency: Histogram::new(TOKEN_BOUNDS),
            embedded: Counter::new(),
            embed_batch: Histogram::new(BATCH_BOUNDS),
            kv_saved: Counter::new(),
            kv_restored: Counter::new(),
            kv_restored_tokens: Counter::new(),
            kv_discarded: Counter::new(),
            requests: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts one response. `route` is a route pattern (bounded set), never a raw path.
    pub fn request(&self, route: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route, status))
            .or_insert(0) += 1;
    }

    /// Responses so far by (route pattern, status).
    pub fn requests(&self) -> Vec<((&'static str, u16), u64)> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_fit_and_ascend() {
        for bounds in [TTFT_BOUNDS, TOKEN_BOUNDS, BATCH_BOUNDS] {
            assert!(bounds.len() <= MAX_BUCKETS);
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_count_and_sum() {
        static H: Histogram = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 9.0] {
            H.observe(v);
        }
        let s = H.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (2.0, 3), (4.0, 4)]);
        assert_eq!(s.count, 5, "+Inf holds all five");
        assert!((s.sum - 15.0).abs() < 1e-9);
    }

    #[test]
    fn a_gauge_guard_counts_while_alive() {
        let g = Gauge::new();
        {
            let _a = g.track();
            let _b = g.track();
            assert_eq!(g.get(), 2);
        }
        assert_eq!(g.get(), 0);
    }
}
