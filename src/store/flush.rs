//! Group commit: many writers waiting for durability share one `fsync`.
//!
//! A writer applies its change, then calls [`GroupFlush::durable`]. A dedicated thread takes every
//! waiter queued so far, flushes sled once, and answers them all. A waiter queued while a flush is
//! running waits for the next one, whose flush covers its write because the write was applied
//! before the waiter was queued. A thread, not a tokio task, because `Db::flush` blocks.

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::StoreError;

type Waiter = oneshot::Sender<Result<(), String>>;

pub(super) struct GroupFlush {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    waiters: Vec<Waiter>,
    stop: bool,
}

impl GroupFlush {
    pub(super) fn start(db: sled::Db) -> GroupFlush {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiters: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hearth-flush".into())
            .spawn(move || run(&thread_shared, &db))
            .ok();
        GroupFlush { shared, thread }
    }

    pub(super) async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(StoreError::Flush(err)),
            Err(_) => Err(StoreError::Flush("flush thread stopped".into())),
        }
    }
}

impl Drop for GroupFlush {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, db: &sled::Db) {
    loop {
        let batch = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.waiters.is_empty() && !state.stop {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.waiters.is_empty() {
                // Stopping with no one waiting; the last `Db` drop flushes the rest.
                return;
            }
            std::mem::take(&mut state.waiters)
        };
        let result = db.flush().map(drop).map_err(|err| err.to_string());
        if let Err(err) = &result {
            tracing::error!(error = %err, "store flush failed");
        }
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}
