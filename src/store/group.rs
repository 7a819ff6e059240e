//! Group commit: the commits several threads make at the same time, written together by one
//! of them, for the stores whose cost is per write rather than per row (a transaction on
//! SQLite, a round trip and a commit record on PostgreSQL).
//!
//! A thread that commits queues its item. While fewer than the queue's `leaders` are writing,
//! it leads: it takes the oldest items queued (at most `max`, at most one per key) and writes
//! them with the store's `write`, which gives one result per item. The others park until their
//! result is in, or until a leader that finished hands them the lead (the oldest waiting item's
//! thread, when items are left and no other leader is free to take them).
//!
//! **Invariant:** a caller hears its result only after the write of its batch returned (or
//! unwound: then every item of the batch gets the `lost` result), so a result is never
//! reported for a write still under way, and no caller waits for a batch nobody writes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::thread::Thread;

/// The queue of one store handle's commits.
pub(crate) struct Queue<T, R> {
    state: Mutex<State<T, R>>,
    leaders: usize,
    max: usize,
}

struct State<T, R> {
    next_ticket: u64,
    waiting: VecDeque<Entry<T>>,
    results: HashMap<u64, R>,
    /// Leaders writing now.
    leading: usize,
}

struct Entry<T> {
    ticket: u64,
    /// Items with the same key go in different batches (`None`: any batch).
    key: Option<u64>,
    item: T,
    caller: Thread,
}

impl<T, R> Queue<T, R> {
    /// A queue written by at most `leaders` batches at a time of at most `max` items each.
    pub(crate) fn new(leaders: usize, max: usize) -> Queue<T, R> {
        Queue {
            state: Mutex::new(State {
                next_ticket: 0,
                waiting: VecDeque::new(),
                results: HashMap::new(),
                leading: 0,
            }),
            leaders: leaders.max(1),
            max: max.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, R>> {
        // Whole entries are pushed, popped and inserted: a poisoned queue is still a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` and returns its result once a leader (this thread or another) wrote it.
    /// `write` writes a batch and gives one result per item, in order; `lost` is the result of
    /// an item whose batch's write unwound (or gave too few results).
    pub(crate) fn commit(
        &self,
        key: Option<u64>,
        item: T,
        write: impl Fn(Vec<T>) -> Vec<R>,
        lost: impl Fn() -> R,
    ) -> R {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting.push_back(Entry {
            ticket,
            key,
            item,
            caller: std::thread::current(),
        });
        loop {
            if let Some(result) = state.results.remove(&ticket) {
                return result;
            }
            if state.leading < self.leaders && !state.waiting.is_empty() {
                state.leading += 1;
                let batch = self.take(&mut state.waiting);
                drop(state);
                self.lead(batch, &write, &lost);
                state = self.lock();
                continue;
            }
            drop(state);
            // Woken with the result in, or to lead (an early wake-up returns at once).
            std::thread::park();
            state = self.lock();
        }
    }

    /// The oldest items queued, at most `max`, at most one per key.
    fn take(&self, waiting: &mut VecDeque<Entry<T>>) -> Vec<Entry<T>> {
        let mut batch = Vec::with_capacity(waiting.len().min(self.max));
        let mut keys = HashSet::new();
        let mut left = VecDeque::new();
        while let Some(entry) = waiting.pop_front() {
            if batch.len() < self.max && entry.key.is_none_or(|k| keys.insert(k)) {
                batch.push(entry);
            } else {
                left.push_back(entry);
            }
        }
        *waiting = left;
        batch
    }

    /// Writes `batch`, hands out its results, and the lead to a waiting caller if items are
    /// left.
    fn lead(&self, batch: Vec<Entry<T>>, write: &impl Fn(Vec<T>) -> Vec<R>, lost: &impl Fn() -> R) {
        let mut guard = Leading {
            queue: self,
            callers: Vec::with_capacity(batch.len()),
            results: None,
            lost,
        };
        let mut items = Vec::with_capacity(batch.len());
        for entry in batch {
            guard.callers.push((entry.ticket, entry.caller));
            items.push(entry.item);
        }
        guard.results = Some(write(items));
    }
}

/// A batch being written: when dropped (after the write, or while it unwinds) its results go
/// to their callers, the leader steps down, and a waiting caller is woken to lead if items are
/// left.
struct Leading<'q, T, R, L: Fn() -> R> {
    queue: &'q Queue<T, R>,
    callers: Vec<(u64, Thread)>,
    results: Option<Vec<R>>,
    lost: &'q L,
}

impl<T, R, L: Fn() -> R> Drop for Leading<'_, T, R, L> {
    fn drop(&mut self) {
        let mut results = self.results.take().unwrap_or_default().into_iter();
        let me = std::thread::current().id();
        let mut wake = Vec::with_capacity(self.callers.len() + 1);
        let mut state = self.queue.lock();
        for (ticket, caller) in self.callers.drain(..) {
            let result = results.next().unwrap_or_else(|| (self.lost)());
            state.results.insert(ticket, result);
            if caller.id() != me {
                wake.push(caller);
            }
        }
        state.leading -= 1;
        if let Some(next) = state.waiting.front() {
            wake.push(next.caller.clone());
        }
        drop(state);
        // Woken after the lock is released: a woken caller does not wait for it at once.
        for caller in wake {
            caller.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    /// Every caller hears its own item's result; a batch holds at most `max` items and at most
    /// one per key; at most `leaders` batches are written at once.
    #[test]
    fn each_caller_gets_its_result_and_batches_keep_their_bounds() {
        const LEADERS: usize = 2;
        let queue = Arc::new(Queue::<(u64, u64), u64>::new(LEADERS, 5));
        let writing = Arc::new(Mutex::new((0usize, 0usize)));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (queue, writing) = (Arc::clone(&queue), Arc::clone(&writing));
                std::thread::spawn(move || {
                    for i in 0..300u64 {
                        let key = (t + i) % 3;
                        let result = queue.commit(
                            Some(key),
                            (key, t * 1000 + i),
                            |items| {
                                {
                                    let mut w = writing.lock().unwrap();
                                    w.0 += 1;
                                    w.1 = w.1.max(w.0);
                                }
                                assert!(items.len() <= 5);
                                let keys: HashSet<u64> = items.iter().map(|i| i.0).collect();
                                assert_eq!(keys.len(), items.len(), "one item per key");
                                std::thread::yield_now();
                                writing.lock().unwrap().0 -= 1;
                                items.iter().map(|i| i.1 * 2).collect()
                            },
                            || u64::MAX,
                        );
                        assert_eq!(result, (t * 1000 + i) * 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(writing.lock().unwrap().1 <= LEADERS);
    }

    /// A write that unwinds gives its batch the `lost` result and steps down: the callers of
    /// that batch hear `lost`, the leader's own call unwinds, and the queue goes on.
    #[test]
    fn a_write_that_panics_gives_its_batch_the_lost_result() {
        let queue = Arc::new(Queue::<u64, Option<u64>>::new(1, usize::MAX));
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || {
                    let mut heard = Vec::new();
                    for i in 0..100u64 {
                        let item = t * 1000 + i;
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            queue.commit(
                                None,
                                item,
                                |items| {
                                    if items.iter().any(|i| i % 7 == 0) {
                                        panic!("a write failed");
                                    }
                                    items.into_iter().map(Some).collect()
                                },
                                || None,
                            )
                        }));
                        heard.push((item, result));
                    }
                    heard
                })
            })
            .collect();
        let mut stored = 0;
        for t in threads {
            for (item, result) in t.join().unwrap() {
                // `None` or a panic: its batch held an item that made the write panic.
                if let Ok(Some(got)) = result {
                    assert_eq!(got, item);
                    assert_ne!(item % 7, 0, "a batch whose write panicked stored nothing");
                    stored += 1;
                }
            }
        }
        assert!(stored > 0);
        // Still usable.
        assert_eq!(
            queue.commit(None, 3, |i| i.into_iter().map(Some).collect(), || None),
            Some(3)
        );
    }
}
