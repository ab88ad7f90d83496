//! The OS scheduler, as the daemon sees it: the priority of background threads, and how much of
//! the CPU other programs use ([`CpuLoad`], which the decode thread policy asks before trying more
//! threads).
//!
//! Background threads: the embedder (ingestion's batches) and HNSW index builds run below the
//! inference threads, so on a busy 2-core desktop a reply's decode gets the cores first instead
//! of sharing them evenly with a batch already in flight.
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

/// Cores' worth of CPU time other processes used between two [`CpuLoad::others_busy`] calls
/// (Linux: the system's busy time in `/proc/stat` minus this process's in `/proc/self/stat`,
/// both in clock ticks, over the elapsed ticks of all CPUs).
#[derive(Debug, Default)]
pub struct CpuLoad {
    last: Option<Ticks>,
}

#[derive(Debug, Clone, Copy)]
struct Ticks {
    /// All CPUs' ticks, busy or idle.
    total: u64,
    busy: u64,
    own: u64,
    /// CPUs the first line sums over (every online one, not only those this process may use).
    cpus: u64,
}

impl CpuLoad {
    /// Cores' worth of CPU other processes kept busy since the previous call (None on the first
    /// call, when too little time passed, and where the platform cannot tell).
    pub fn others_busy(&mut self) -> Option<f64> {
        let now = ticks()?;
        let last = self.last.replace(now)?;
        let total = now.total.checked_sub(last.total)?;
        // Fewer than ~2 ticks per CPU is too coarse to tell one busy core from none.
        if now.cpus == 0 || total < 2 * now.cpus {
            return None;
        }
        let busy = now.busy.saturating_sub(last.busy);
        let own = now.own.saturating_sub(last.own);
        Some(busy.saturating_sub(own) as f64 / total as f64 * now.cpus as f64)
    }
}

fn ticks() -> Option<Ticks> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu user nice system idle iowait irq softirq steal …
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        let total: u64 = fields.iter().sum();
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u64;
        let idle = fields.get(3)? + fields.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces: fields are counted after its closing parenthesis;
        // utime and stime are fields 14 and 15, the 12th and 13th after it.
        let rest = &own[own.rfind(')')? + 1..];
        let mut after = rest.split_whitespace().skip(11);
        let utime: u64 = after.next()?.parse().ok()?;
        let stime: u64 = after.next()?.parse().ok()?;
        Some(Ticks {
            total,
            busy: total - idle,
            own: utime + stime,
            cpus,
        })
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
    fn a_busy_process_next_to_us_counts_as_others_and_our_own_threads_do_not() {
        fn spin(for_: std::time::Duration) {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < for_ {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let mut load = CpuLoad::default();
        assert_eq!(load.others_busy(), None, "nothing to compare with yet");
        // Our own busy thread is not "others".
        let own = std::thread::spawn(|| spin(std::time::Duration::from_millis(400)));
        own.join().unwrap();
        let ours = load.others_busy().unwrap();
        // Another process spinning one core is.
        let mut burner = std::process::Command::new("sh")
            .args([
                "-c",
                "end=$(($(date +%s)+2)); while [ $(date +%s) -lt $end ]; do :; done",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let theirs = load.others_busy().unwrap();
        burner.kill().ok();
        burner.wait().ok();
        assert!(theirs > 0.6, "a spinning process used {theirs:.2} cores");
        assert!(theirs > ours + 0.4, "ours {ours:.2}, theirs {theirs:.2}");
    }

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
