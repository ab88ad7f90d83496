//! OS scheduling priority for background threads: the embedder (ingestion's batches) and HNSW
//! index builds run below the inference threads, so on a busy 2-core desktop a reply's decode
//! gets the cores first instead of sharing them evenly with a batch already in flight.
//!
//! Why a nice value and not `SCHED_IDLE`: the same embedding thread also serves a chat's query
//! embedding (a person waits for it), and a `SCHED_IDLE` thread can starve behind two busy
//! decode threads; ten steps lower (the default) it still gets a small, bounded share.
//!
//! Linux only: there `setpriority(PRIO_PROCESS, 0, n)` changes the calling *thread*, and threads
//! it creates afterwards (ONNX Runtime's intra-op pool is made when its session is) inherit it.
//! On macOS the same call would lower the whole process, chat included, so it is left alone
//! there; Windows has no build of the daemon yet.

use std::sync::atomic::{AtomicI32, Ordering};

/// How many nice steps background threads sit below the daemon's own: config
/// `background_nice` (default 10), set once at start-up before any background thread; 0 until
/// then.
static BACKGROUND_NICE: AtomicI32 = AtomicI32::new(0);

/// Sets how many steps [`lower_this_thread`] lowers (0..=19; 0 leaves threads as they are).
pub fn set_background_nice(steps: i32) {
    BACKGROUND_NICE.store(steps.clamp(0, MAX_NICE), Ordering::Relaxed);
}
/// The lowest priority there is.
const MAX_NICE: i32 = 19;

/// Lowers the calling thread's priority by the configured steps (at most to nice 19), and with
/// it the threads it creates afterwards. Failure is logged, never fatal: the work still runs, only
/// at normal priority.
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let steps = BACKGROUND_NICE.load(Ordering::Relaxed);
        if steps == 0 {
            return;
        }
        let now = rustix::process::getpriority_process(None).unwrap_or(0);
        let nice = (now + steps).min(MAX_NICE);
        match rustix::process::setpriority_process(None, nice) {
            Ok(()) => tracing::debug!(
                nice,
                thread = std::thread::current().name().unwrap_or("?"),
                "background thread priority lowered"
            ),
            Err(err) => tracing::warn!(error = %err, "cannot lower a background thread's priority"),
        }
    }
}

/// The calling thread's nice value (Linux), for tests and health.
pub fn this_thread_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        rustix::process::getpriority_process(None).ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_lowered_thread_and_its_children_are_niced_and_others_are_not() {
        let before = this_thread_nice().unwrap();
        set_background_nice(10);
        let (own, child) = std::thread::spawn(|| {
            lower_this_thread();
            let child = std::thread::spawn(this_thread_nice).join().unwrap();
            (this_thread_nice(), child)
        })
        .join()
        .unwrap();
        assert_eq!(own, Some((before + 10).min(MAX_NICE)));
        assert_eq!(child, own, "threads made afterwards inherit it");
        // The rest of the process keeps its priority.
        assert_eq!(this_thread_nice(), Some(before));
    }
}
