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
