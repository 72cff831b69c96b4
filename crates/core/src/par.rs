//! Work spread over the machine's cores, for the operations that decrypt a whole vault
//! (verify, search): the calling thread reads from the store, worker threads decrypt.

use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;

use crate::Error;

thread_local! {
    /// Set on the worker threads of [`map_parallel`]: work they do is not split again.
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is a worker of [`map_parallel`] (its caller already uses every core).
pub(crate) fn in_worker() -> bool {
    IN_WORKER.with(|w| w.get())
}

/// Applies `work` to every item on worker threads (one per core, at most 8) while this thread
/// produces the items; returns the results in the items' order. At most two items per worker
/// are in flight, so memory does not grow with the input. Stops at the first error the items
/// yield.
pub(crate) fn map_parallel<T: Send, R: Send>(
    items: impl Iterator<Item = Result<T, Error>>,
    work: impl Fn(T) -> R + Sync,
) -> Result<Vec<R>, Error> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if workers == 1 {
        return items.map(|t| t.map(&work)).collect();
    }
    let (to_workers, from_producer) = sync_channel::<(usize, T)>(workers * 2);
    let from_producer = Mutex::new(from_producer);
    std::thread::scope(|s| {
        let (to_collector, results) = channel::<(usize, R)>();
        for _ in 0..workers {
            let (from_producer, to_collector, work) = (&from_producer, to_collector.clone(), &work);
            s.spawn(move || {
                IN_WORKER.with(|w| w.set(true));
                loop {
                    // Poisoning cannot leave the receiver inconsistent: it is only read.
                    let next = from_producer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .recv();
                    let Ok((i, item)) = next else { break };
                    if to_collector.send((i, work(item))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(to_collector);
        let mut produced = 0;
        let mut failed = None;
        for item in items {
            match item {
                Ok(t) => {
                    if to_workers.send((produced, t)).is_err() {
                        break;
                    }
                    produced += 1;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(to_workers);
        let mut out: Vec<Option<R>> = (0..produced).map(|_| None).collect();
        for (i, r) in results {
            out[i] = Some(r);
        }
        match failed {
            Some(e) => Err(e),
            // Every produced item got its result unless a worker panicked, and a worker's
            // panic propagates out of the scope before this line is reached.
            None => Ok(out.into_iter().flatten().collect()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_input_order_and_errors_stop_the_run() {
        let out = map_parallel((0..1000u64).map(Ok), |x| x * 2).unwrap();
        assert_eq!(out, (0..1000u64).map(|x| x * 2).collect::<Vec<_>>());
        let items = (0..10u64).map(|x| {
            if x == 5 {
                Err(Error::NoSuchNote)
            } else {
                Ok(x)
            }
        });
        assert!(matches!(map_parallel(items, |x| x), Err(Error::NoSuchNote)));
    }
}
