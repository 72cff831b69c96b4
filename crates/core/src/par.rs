//! Work spread over the machine's cores, for the operations that decrypt a whole vault
//! (verify, search): the calling thread reads from the store, worker threads decrypt.

use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;

use crate::Error;

thread_local! {
    /// Set on the worker threads of [`map_parallel`]: work they do is not split again.
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this thread as a worker until dropped (also when the work panics).
struct WorkerMark(bool);

impl WorkerMark {
    fn set() -> Self {
        WorkerMark(IN_WORKER.with(|w| w.replace(true)))
    }
}

impl Drop for WorkerMark {
    fn drop(&mut self) {
        IN_WORKER.with(|w| w.set(self.0));
    }
}

/// Whether this thread is a worker of [`map_parallel`] (its caller already uses every core).
pub(crate) fn in_worker() -> bool {
    IN_WORKER.with(|w| w.get())
}

/// The number of worker threads to use: one per core, at most 8. Asked of the OS once
/// (`available_parallelism` reads cgroup files: about 20 µs, which a chart read felt).
fn workers() -> usize {
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// Applies `work` to every index of `0..len` and returns the results in order: the calling
/// thread takes the first share and one scoped thread per other core takes each other share.
/// For work already in memory (a chart's records): no channel, no lock, one spawn per core.
pub(crate) fn map_indices<R: Send>(len: usize, work: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let workers = workers().min(len.max(1));
    if workers == 1 {
        return (0..len).map(work).collect();
    }
    let share = len.div_ceil(workers);
    let work = &work;
    let run = move |start: usize| -> Vec<R> {
        let _worker = WorkerMark::set();
        (start..(start + share).min(len)).map(work).collect()
    };
    std::thread::scope(|s| {
        let others: Vec<_> = (1..workers)
            .map(|k| s.spawn(move || run(k * share)))
            .collect();
        let mut out = run(0);
        for h in others {
            match h.join() {
                Ok(part) => out.extend(part),
                // A worker's panic is this call's panic, as if the work had run here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

/// Applies `work` to every item on worker threads (one per core, at most 8) while this thread
/// produces the items; returns the results in the items' order. At most two items per worker
/// are in flight, so memory does not grow with the input. Stops at the first error the items
/// yield.
pub(crate) fn map_parallel<T: Send, R: Send>(
    items: impl Iterator<Item = Result<T, Error>>,
    work: impl Fn(T) -> R + Sync,
) -> Result<Vec<R>, Error> {
    let workers = workers();
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

    #[test]
    fn indices_keep_their_order_at_every_length() {
        for len in [0, 1, 2, 3, 63, 64, 65, 1001] {
            let out = map_indices(len, |i| (i, in_worker()));
            assert_eq!(
                out.iter().map(|x| x.0).collect::<Vec<_>>(),
                (0..len).collect::<Vec<_>>()
            );
            if workers() > 1 && len > 1 {
                assert!(out.iter().all(|x| x.1), "work runs marked as a worker's");
            }
        }
        assert!(
            !in_worker(),
            "the calling thread is itself again afterwards"
        );
    }
}
