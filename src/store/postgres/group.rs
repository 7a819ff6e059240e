//! Group commit: the commits several threads of one store handle make at the same time are
//! written by one statement, one round trip and one commit record for the group.
//!
//! A thread that commits queues its commit's values; when fewer than [`LEADERS`] groups are
//! being written, it becomes a leader: it takes the queued commits (at most [`MAX`], at most one
//! per instance) and writes them with one statement outside any transaction (`GROUP_SQL`),
//! which the server commits by itself, durably (`synchronous_commit` as the server has it).
//! Each commit's row is conditional on the version its call read, as a lone commit's is: the
//! statement returns the instances it stored, and a commit whose instance is not among them
//! stored nothing (its caller reports the conflict) while the others are stored.
//!
//! **Invariant:** a caller hears its verdict only after the group's statement returned, so an
//! acknowledged commit is committed on the server. A statement that failed stored nothing of
//! the group: each caller commits alone ([`Verdict::Alone`]); a connection that broke during
//! it leaves each commit's outcome unknown ([`Verdict::Unknown`]), resolved by each caller as
//! a lone commit's is (its version read back).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::conn::{Conn, Fail};
use crate::store::StoreError;

/// How many groups a store handle writes at once: while some wait for the server's disk, the
/// next gathers and is sent, and the server flushes those that meet with one write.
pub(super) const LEADERS: usize = 4;

/// The most commits one statement writes.
pub(super) const MAX: usize = 64;

/// One commit's values, encoded once, owned (a leader writes them for their caller).
pub(super) struct Values {
    pub(super) id: i64,
    pub(super) process: String,
    pub(super) def_version: i64,
    pub(super) running: bool,
    /// The version the call read: 0 for a start.
    pub(super) version: i64,
    pub(super) started_at: i64,
    pub(super) state: String,
    pub(super) next_due: Option<i64>,
    pub(super) first: i64,
    pub(super) batch: Option<String>,
    pub(super) pending: bool,
    /// The instance's report facts, column by column (the statements unnest them).
    pub(super) fact_kinds: Vec<i64>,
    pub(super) fact_subjects: Vec<String>,
    pub(super) fact_ns: Vec<i64>,
    pub(super) fact_tills: Vec<Option<i64>>,
}

/// What became of a commit written in a group.
pub(super) enum Verdict {
    /// Stored.
    Stored,
    /// Not stored: the instance was not at the version the call read.
    Refused,
    /// Nothing of the group is stored (its statement failed): commit alone.
    Alone,
    /// The connection broke during the group's statement: it may be stored.
    Unknown(StoreError),
}

/// The queue of a store handle's commits and its leaders.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    queue: VecDeque<Entry>,
    /// Leaders writing or named to write (in `handed`).
    leaders: usize,
    /// Waiting callers a leader that stopped named to lead next.
    handed: Vec<u64>,
    done: HashMap<u64, Verdict>,
}

struct Entry {
    ticket: u64,
    values: Arc<Values>,
    /// The caller, woken when its verdict is in or when it is named to lead.
    caller: std::thread::Thread,
}

/// How many groups a leader writes in a row before it hands the lead to a waiting caller (and
/// returns to its own): a leader already running writes the next group at once, without a
/// waiting thread having to be woken first.
const ROUNDS: usize = 4;

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Whole entries are pushed and popped: a poisoned queue is still a queue.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `values` and returns their verdict once a leader (this thread or another) wrote
    /// them. `write` writes a group and gives one verdict per commit, in order.
    pub(super) fn commit(
        &self,
        values: Arc<Values>,
        write: impl Fn(&[Arc<Values>]) -> Vec<Verdict>,
    ) -> Verdict {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Entry {
            ticket,
            values,
            caller: std::thread::current(),
        });
        loop {
            let named = match state.handed.iter().position(|t| *t == ticket) {
                Some(i) => {
                    state.handed.swap_remove(i);
                    true
                }
                None => false,
            };
            if named || (state.leaders < LEADERS && !state.queue.is_empty()) {
                if !named {
                    state.leaders += 1;
                }
                state = self.lead(state, &write);
            }
            if let Some(verdict) = state.done.remove(&ticket) {
                return verdict;
            }
            drop(state);
            // Woken by the leader that wrote this commit, or to lead (a wake-up that came
            // early makes this return at once).
            std::thread::park();
            state = self.lock();
        }
    }

    /// Writes groups while commits are queued, up to [`ROUNDS`] of them, then hands the lead to
    /// a waiting caller; or stops leading when the queue is empty.
    fn lead<'s>(
        &'s self,
        mut state: MutexGuard<'s, State>,
        write: &impl Fn(&[Arc<Values>]) -> Vec<Verdict>,
    ) -> MutexGuard<'s, State> {
        let mut rounds = 0;
        loop {
            if state.queue.is_empty() {
                state.leaders -= 1;
                return state;
            }
            if rounds >= ROUNDS {
                let handed = &state.handed;
                if let Some(next) = state.queue.iter().find(|e| !handed.contains(&e.ticket)) {
                    let (ticket, caller) = (next.ticket, next.caller.clone());
                    state.handed.push(ticket);
                    caller.unpark();
                    return state;
                }
            }
            let batch = take(&mut state.queue);
            drop(state);
            let values: Vec<Arc<Values>> = batch.iter().map(|e| Arc::clone(&e.values)).collect();
            let mut lead = Lead {
                group: self,
                batch,
                verdicts: Vec::new(),
                done: false,
            };
            lead.verdicts = write(&values);
            lead.done = true;
            drop(lead);
            rounds += 1;
            state = self.lock();
        }
    }
}

/// Takes the next group off the queue: at most [`MAX`] commits, one per instance (a second
/// commit of an instance waits for the next group).
fn take(queue: &mut VecDeque<Entry>) -> Vec<Entry> {
    let mut batch = Vec::with_capacity(queue.len().min(MAX));
    let mut ids = HashSet::with_capacity(queue.len().min(MAX));
    let mut left = VecDeque::new();
    while let Some(entry) = queue.pop_front() {
        if batch.len() < MAX && ids.insert(entry.values.id) {
            batch.push(entry);
        } else {
            left.push_back(entry);
        }
    }
    *queue = left;
    batch
}

/// A leader's group: hands the verdicts to their callers when dropped. When the write
/// panicked, every caller of the group commits alone and the lead is given up (the waiting
/// callers are woken to take it).
struct Lead<'g> {
    group: &'g Group,
    batch: Vec<Entry>,
    verdicts: Vec<Verdict>,
    done: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut verdicts = std::mem::take(&mut self.verdicts).into_iter();
        let mut state = self.group.lock();
        let me = std::thread::current().id();
        for entry in self.batch.drain(..) {
            let verdict = verdicts.next().unwrap_or(Verdict::Alone);
            state.done.insert(entry.ticket, verdict);
            if entry.caller.id() != me {
                entry.caller.unpark();
            }
        }
        if !self.done {
            state.leaders -= 1;
            for entry in &state.queue {
                entry.caller.unpark();
            }
        }
    }
}

/// Several commits in one statement: the starts inserted, the later commits updated where the
/// instance is at the version read, then the audit batches and the report facts of those
/// stored. Gives the ids stored.
const GROUP_SQL: &str = "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], \
     $4::boolean[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], \
     $10::text[], $11::boolean[]) \
     AS u (id, process, def_version, running, version, started_at, state, next_due, first, \
     batch, pending)), \
     server AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms), \
     ins AS (INSERT INTO procflow_instances \
     (id, process, def_version, running, row_version, started_at, state, next_due, \
      outbox_until, outbox_by) \
     SELECT u.id, u.process, u.def_version, u.running, 1, u.started_at, u.state, u.next_due, \
      CASE WHEN u.pending THEN server.ms + $12::bigint END, \
      CASE WHEN u.pending THEN $13::text END \
     FROM u, server WHERE u.version = 0 \
     ON CONFLICT (id) DO NOTHING RETURNING id, process, started_at), \
     upd AS (UPDATE procflow_instances p SET def_version = u.def_version, running = u.running, \
     row_version = u.version + 1, state = u.state, next_due = u.next_due, claim_until = NULL, \
     claimed_by = NULL, \
     outbox_until = CASE WHEN u.pending THEN server.ms + $12::bigint END, \
     outbox_by = CASE WHEN u.pending THEN $13::text END \
     FROM u, server WHERE u.version > 0 AND p.id = u.id AND p.row_version = u.version \
     RETURNING p.id, p.process, p.started_at), \
     stored AS (SELECT * FROM ins UNION ALL SELECT * FROM upd), \
     r AS (INSERT INTO procflow_records (instance, first, batch) \
     SELECT u.id, u.first, u.batch FROM u JOIN stored s ON s.id = u.id \
     WHERE u.batch IS NOT NULL \
     ON CONFLICT (instance, first) DO UPDATE SET batch = EXCLUDED.batch), \
     d AS (DELETE FROM procflow_report_facts WHERE instance IN (SELECT id FROM upd)), \
     f AS (INSERT INTO procflow_report_facts \
     (instance, process, started_at, kind, subject, n, till) \
     SELECT s.id, s.process, s.started_at, x.kind, x.subject, x.n, x.till \
     FROM unnest($14::bigint[], $15::bigint[], $16::text[], $17::bigint[], $18::bigint[]) \
     AS x (instance, kind, subject, n, till) JOIN stored s ON s.id = x.instance) \
     SELECT id FROM stored";

/// Writes `group` (distinct instances) with one statement; gives the ids it stored.
pub(super) fn write(
    conn: &mut Conn,
    group: &[Arc<Values>],
    lease: i64,
    me: &str,
) -> Result<HashSet<i64>, Fail> {
    let n = group.len();
    let mut ids = Vec::with_capacity(n);
    let mut processes = Vec::with_capacity(n);
    let mut def_versions = Vec::with_capacity(n);
    let mut running = Vec::with_capacity(n);
    let mut versions = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut dues = Vec::with_capacity(n);
    let mut firsts = Vec::with_capacity(n);
    let mut batches = Vec::with_capacity(n);
    let mut pending = Vec::with_capacity(n);
    let (mut f_ids, mut f_kinds, mut f_subjects, mut f_ns, mut f_tills) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for v in group {
        ids.push(v.id);
        processes.push(v.process.as_str());
        def_versions.push(v.def_version);
        running.push(v.running);
        versions.push(v.version);
        started.push(v.started_at);
        states.push(v.state.as_str());
        dues.push(v.next_due);
        firsts.push(v.first);
        batches.push(v.batch.as_deref());
        pending.push(v.pending);
        for i in 0..v.fact_kinds.len() {
            f_ids.push(v.id);
            f_kinds.push(v.fact_kinds[i]);
            f_subjects.push(v.fact_subjects[i].as_str());
            f_ns.push(v.fact_ns[i]);
            f_tills.push(v.fact_tills[i]);
        }
    }
    let stmt = conn.statement(GROUP_SQL)?;
    let rows = conn.client.query(
        &stmt,
        &[
            &ids,
            &processes,
            &def_versions,
            &running,
            &versions,
            &started,
            &states,
            &dues,
            &firsts,
            &batches,
            &pending,
            &lease,
            &me,
            &f_ids,
            &f_kinds,
            &f_subjects,
            &f_ns,
            &f_tills,
        ],
    )?;
    let mut stored = HashSet::with_capacity(rows.len());
    for row in rows {
        stored.insert(row.try_get::<_, i64>(0)?);
    }
    Ok(stored)
}
