//! The decode thread policy: how many threads llama.cpp uses for one-token decode steps, chosen
//! from the model's own measured step times instead of fixed.
//!
//! Why: llama.cpp's CPU threads meet at a spin barrier after every operation of the graph. When
//! another program keeps one of the cores busy, the thread that shares that core is descheduled
//! for whole time slices while the others spin, and decode collapses (measured on 2 cores,
//! SmolLM2-135M: 89 tok/s idle with 2 threads, 17–28 with one core busy, while 1 thread keeps
//! 54). Prompt evaluation (many tokens per step) does enough work between barriers not to
//! collapse, so it keeps the full count.
//!
//! How: step times are taken in windows of [`WINDOW`] tokens and compared by their median
//! (robust to a stray slow step). The policy keeps the best window seen for each thread count.
//! It steps down when the current count is clearly slower than one thread fewer ever was, or
//! (before that is known) when it is far slower than its own best, for [`CONFIRM`] windows in a
//! row; the first time, it measures one
//! thread fewer once ([`Probe`]) so there is something to compare with. It probes one thread more
//! after [`PROBE_AFTER`] tokens (doubling up to [`PROBE_AFTER_MAX`] each time a probe loses), but
//! only when the caller's CPU-load hint says a core is free; a probe is kept when it is faster.
//! Each change costs the caller a context rebuild (tens of milliseconds), which is why changes
//! are rare and hysteretic. Pure logic: the worker measures and rebuilds.

use std::time::Duration;

/// Decode steps per measurement window.
pub(super) const WINDOW: usize = 8;
/// A count is "collapsed" when its window median exceeds its own best by this factor (used
/// before one thread fewer has been measured).
const COLLAPSED: f64 = 2.0;
/// Stepping down needs the current count to be this much slower than one thread fewer's best:
/// decode slows a little as the context grows, which must not look like contention.
const SLOWER_THAN_FEWER: f64 = 1.15;
/// A probe is kept when its median is at most this share of the median before it.
const PROBE_GAIN: f64 = 0.95;
/// Tokens at a count before probing one thread more; doubled after each lost probe.
const PROBE_AFTER: u32 = 32;
/// The longest wait between probes.
const PROBE_AFTER_MAX: u32 = 2048;
/// Tokens at the full count before measuring one thread fewer the first time.
const CALIBRATE_AFTER: u32 = 16;
/// Slow windows in a row before stepping down: one slow window is often a moment's load (the
/// daemon's own embedding of a turn's memories, a client starting), and a change costs two
/// context rebuilds if it has to be undone.
const CONFIRM: u32 = 2;

/// Why the count changed (logged, and counted in health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The current count became slower than fewer threads (other programs hold cores).
    Contention,
    /// Trying another count to compare.
    Probe,
    /// The probe lost: back to the count before it.
    ProbeLost,
}

/// A change the caller should make before the next decode step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Change {
    pub threads: u32,
    pub reason: Reason,
}

/// A count being tried, with the median it has to beat.
#[derive(Debug, Clone, Copy)]
struct Probe {
    from: u32,
    baseline: f64,
}

#[derive(Debug)]
pub(super) struct ThreadPolicy {
    max: u32,
    adaptive: bool,
    current: u32,
    window: Vec<f64>,
    /// Best window median (seconds per token) seen at each count; index = threads - 1.
    best: Vec<Option<f64>>,
    probe: Option<Probe>,
    /// Tokens decoded at the current count since the last change.
    since_change: u32,
    /// Slow windows in a row at the current count.
    slow_windows: u32,
    probe_after: u32,
}

impl ThreadPolicy {
    /// `max` threads; a fixed policy (`adaptive` false) never changes them.
    pub(super) fn new(max: u32, adaptive: bool) -> ThreadPolicy {
        let max = max.max(1);
        ThreadPolicy {
            max,
            adaptive: adaptive && max > 1,
            current: max,
            window: Vec::with_capacity(WINDOW),
            best: vec![None; max as usize],
            probe: None,
            since_change: 0,
            slow_windows: 0,
            probe_after: PROBE_AFTER,
        }
    }

    /// Threads for one-token decode steps now.
    pub(super) fn current(&self) -> u32 {
        self.current
    }

    /// Stops adapting at `threads` (the context could not be rebuilt with another count).
    pub(super) fn freeze(&mut self, threads: u32) {
        self.current = threads;
        self.adaptive = false;
    }

    /// Records one decode step's time; returns a change to make before the next step.
    /// `spare_cores` is asked only before a probe upward: the cores other programs left idle
    /// recently, or None when the platform cannot tell (then the probe goes ahead).
    pub(super) fn observe(
        &mut self,
        step: Duration,
        spare_cores: impl FnOnce() -> Option<f64>,
    ) -> Option<Change> {
        if !self.adaptive {
            return None;
        }
        self.window.push(step.as_secs_f64());
        self.since_change += 1;
        if self.window.len() < WINDOW {
            return None;
        }
        let median = median(&mut self.window);
        self.window.clear();
        let c = self.current;
        let best = &mut self.best[c as usize - 1];
        *best = Some(best.map_or(median, |b| b.min(median)));
        let own_best = best.unwrap_or(median);

        if let Some(probe) = self.probe.take() {
            if median <= probe.baseline * PROBE_GAIN {
                self.probe_after = PROBE_AFTER;
                return None;
            }
            if probe.from < c {
                // Only a lost probe upward backs off (a lost calibration is the normal case).
                self.probe_after = (self.probe_after * 2).min(PROBE_AFTER_MAX);
            }
            return Some(self.change(probe.from, Reason::ProbeLost));
        }
        if c > 1 {
            let fewer = self.best[c as usize - 2];
            let contended = match fewer {
                Some(fewer) => median > fewer * SLOWER_THAN_FEWER,
                None => median > own_best * COLLAPSED,
            };
            if contended {
                self.slow_windows += 1;
                if self.slow_windows >= CONFIRM {
                    // Probes upward start afresh: they are cheap while no core is spare.
                    self.probe_after = PROBE_AFTER;
                    return Some(self.change(c - 1, Reason::Contention));
                }
                return None;
            }
            self.slow_windows = 0;
            if fewer.is_none() && self.since_change >= CALIBRATE_AFTER {
                self.probe = Some(Probe {
                    from: c,
                    baseline: median,
                });
                return Some(self.change(c - 1, Reason::Probe));
            }
        }
        if c < self.max && self.since_change >= self.probe_after {
            // Spare cores are whole cores others left idle; one more thread needs one.
            if spare_cores().is_some_and(|spare| spare < 0.5) {
                self.since_change = 0;
                return None;
            }
            self.probe = Some(Probe {
                from: c,
                baseline: median,
            });
            return Some(self.change(c + 1, Reason::Probe));
        }
        None
    }

    fn change(&mut self, threads: u32, reason: Reason) -> Change {
        self.current = threads;
        self.since_change = 0;
        self.slow_windows = 0;
        self.window.clear();
        Change { threads, reason }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `n` steps of `ms` each; returns the changes made.
    fn feed(p: &mut ThreadPolicy, n: usize, ms: f64, spare: Option<f64>) -> Vec<Change> {
        (0..n)
            .filter_map(|_| p.observe(Duration::from_secs_f64(ms / 1000.0), || spare))
            .collect()
    }

    /// Step time of `threads` on 2 cores: idle 11 ms with 2, 17 ms with 1; with one core busy,
    /// 2 threads collapse to 40 ms and 1 thread slows to 18.5 ms (the measured rates).
    fn step_ms(threads: u32, busy: bool) -> f64 {
        match (threads, busy) {
            (2, false) => 11.0,
            (2, true) => 40.0,
            (_, false) => 17.0,
            (_, true) => 18.5,
        }
    }

    /// Runs `tokens` steps on the simulated machine; returns the mean step time.
    fn simulate(p: &mut ThreadPolicy, tokens: usize, busy: bool) -> f64 {
        let mut total = 0.0;
        for _ in 0..tokens {
            let ms = step_ms(p.current(), busy);
            total += ms;
            let spare = Some(if busy { 0.0 } else { 1.9 });
            p.observe(Duration::from_secs_f64(ms / 1000.0), || spare);
        }
        total / tokens as f64
    }

    #[test]
    fn a_fixed_policy_never_changes() {
        let mut p = ThreadPolicy::new(2, false);
        assert!(feed(&mut p, 200, 11.0, None).is_empty());
        assert!(feed(&mut p, 200, 80.0, None).is_empty());
        assert_eq!(p.current(), 2);
        let mut one = ThreadPolicy::new(1, true);
        assert!(feed(&mut one, 200, 80.0, None).is_empty());
    }

    #[test]
    fn idle_it_measures_fewer_threads_once_and_stays_at_the_faster_count() {
        let mut p = ThreadPolicy::new(2, true);
        let mean = simulate(&mut p, 2000, false);
        assert_eq!(p.current(), 2);
        // One calibration window at 1 thread, then never again (its best is known and slower).
        assert!(mean < 11.0 * 1.01, "mean step {mean:.2} ms");
    }

    #[test]
    fn a_busy_core_drops_to_one_thread_within_two_windows_and_it_comes_back_when_free() {
        let mut p = ThreadPolicy::new(2, true);
        simulate(&mut p, 200, false);
        assert_eq!(p.current(), 2);
        let changes = feed(&mut p, 2 * WINDOW, step_ms(2, true), Some(0.0));
        assert_eq!(
            changes,
            vec![Change {
                threads: 1,
                reason: Reason::Contention
            }]
        );
        // Under sustained load it stays at 1 (no probes: no spare core) and runs at 1's rate.
        let mean = simulate(&mut p, 4000, true);
        assert_eq!(p.current(), 1);
        assert!(mean < step_ms(1, true) * 1.01, "mean step {mean:.2} ms");
        // The load ends: a probe finds 2 threads faster and keeps them.
        simulate(&mut p, 400, false);
        assert_eq!(p.current(), 2);
    }

    #[test]
    fn started_under_load_it_finds_one_thread_faster() {
        let mut p = ThreadPolicy::new(2, true);
        let mean = simulate(&mut p, 2000, true);
        assert_eq!(p.current(), 1);
        assert!(mean < step_ms(1, true) * 1.1, "mean step {mean:.2} ms");
    }

    #[test]
    fn probes_that_lose_back_off_when_the_platform_cannot_tell_spare_cores() {
        let mut p = ThreadPolicy::new(2, true);
        simulate(&mut p, 200, false);
        let mut probes = 0;
        for _ in 0..8000 {
            let ms = step_ms(p.current(), true);
            if let Some(c) = p.observe(Duration::from_secs_f64(ms / 1000.0), || None) {
                if c.reason == Reason::Probe {
                    probes += 1;
                }
            }
        }
        // 32, 64, …, 2048 tokens apart: a handful over 8,000 tokens, not one per 32.
        assert!((3..=10).contains(&probes), "{probes} probes");
        assert_eq!(p.current(), 1);
    }

    #[test]
    fn one_slow_window_is_a_moment_not_contention() {
        let mut p = ThreadPolicy::new(2, true);
        simulate(&mut p, 200, false);
        let mut changes = feed(&mut p, WINDOW, step_ms(2, true), Some(0.0));
        changes.extend(feed(&mut p, 4 * WINDOW, step_ms(2, false), Some(1.9)));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(p.current(), 2);
    }

    #[test]
    fn a_single_slow_step_is_not_contention() {
        let mut p = ThreadPolicy::new(2, true);
        simulate(&mut p, 200, false);
        for _ in 0..50 {
            let mut changes = feed(&mut p, WINDOW - 1, 11.0, Some(1.9));
            changes.extend(feed(&mut p, 1, 500.0, Some(1.9)));
            assert!(changes.is_empty(), "{changes:?}");
        }
    }
}
