//! The commit, and what replicas claim and wake for.
//!
//! **A commit is one round trip** when it announces nothing and takes no kept message: one
//! prepared statement outside any transaction (the instance row, conditional on the version
//! read, and the audit batch, the report facts, the work-list offers and the business keys in a
//! data-modifying `WITH`), which the server commits by itself.
//! Otherwise it is one transaction: the same statement, the kept message, and the `NOTIFY`.
//!
//! **Commits made at the same time go together**: the one-round-trip commits several threads
//! of one store handle make at once are queued (`store::group`) and written by one of them
//! with one statement ([`group_sql`]), which returns the instances it stored; a commit whose
//! instance is not among them was refused (its version moved) and fails alone.
//!
//! **Follow-ups are leased**: a commit that leaves follow-ups to run holds them for its store
//! handle (`outbox_until`, on the server's clock); the commit recording that they ran clears
//! it; a handle claims those whose lease ran out ([`Store::claim_outbox`]).
//!
//! [`Store::claim_outbox`]: crate::Store::claim_outbox

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{Conn, Fail, Outcome};
use super::wake;
use super::{PostgresStore, ids_of, ms, nanos};
use crate::ids::InstanceId;
use crate::model::Status;
use crate::store::{
    Commit, Offer, StoreError, StoreWake, StoreWatch, encode_records, encode_state,
};

/// A start: the instance row and its first audit batch. `$pre` opens the `WITH` (and may add
/// a first query), `$keys` is [`INSERT_KEYS`] or nothing, `$post` is what the count is taken
/// from.
macro_rules! insert_sql {
    ($pre:expr, $keys:expr, $post:literal) => {
        concat!(
            $pre,
            "i AS (INSERT INTO procflow_instances \
             (id, process, def_version, running, row_version, started_at, state, next_due, \
              outbox_until, outbox_by, offers, facts) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, $7, \
              CASE WHEN $10::boolean THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $11::bigint END, \
              CASE WHEN $10::boolean THEN $12::text END, $14::text[], $13::text::jsonb) \
             ON CONFLICT (id) DO NOTHING RETURNING id), \
             r AS (INSERT INTO procflow_records (instance, first, batch) \
             SELECT id, $8::bigint, $9::text FROM i WHERE $9::text IS NOT NULL \
             ON CONFLICT (instance, first) DO UPDATE SET batch = EXCLUDED.batch), \
             o AS (INSERT INTO procflow_offers (offer, instance) \
             SELECT u, i.id FROM i, unnest($14::text[]) AS u ON CONFLICT DO NOTHING)",
            $keys,
            " SELECT count(*) FROM ",
            $post
        )
    };
}

/// A later commit: conditional on the version read; ends the claim on the instance's due
/// timers. The offers it no longer has (those its row listed, and the `*` of a migration) are
/// deleted by their key, those it gained inserted. `$keys` is [`UPDATE_KEYS`] or nothing.
macro_rules! update_sql {
    ($pre:expr, $keys:expr, $post:literal) => {
        concat!(
            $pre,
            "o AS (SELECT offers FROM procflow_instances \
             WHERE $13::text[] IS NOT NULL AND id = $1 AND row_version = $4), \
             i AS (UPDATE procflow_instances SET def_version = $2, running = $3, \
             row_version = $4 + 1, state = $5, next_due = $6, claim_until = NULL, claimed_by = NULL, \
             offers = coalesce($13::text[], offers), \
             outbox_until = CASE WHEN $9::boolean THEN (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $10::bigint END, \
             outbox_by = CASE WHEN $9::boolean THEN $11::text END, \
             facts = $12::text::jsonb \
             WHERE id = $1 AND row_version = $4 RETURNING id), \
             r AS (INSERT INTO procflow_records (instance, first, batch) \
             SELECT id, $7::bigint, $8::text FROM i WHERE $8::text IS NOT NULL \
             ON CONFLICT (instance, first) DO UPDATE SET batch = EXCLUDED.batch), \
             od AS (DELETE FROM procflow_offers WHERE $13::text[] IS NOT NULL \
             AND instance IN (SELECT id FROM i) \
             AND offer = ANY (array_append((SELECT offers FROM o), '*')) \
             AND offer <> ALL ($13::text[])), \
             oi AS (INSERT INTO procflow_offers (offer, instance) \
             SELECT u, i.id FROM i, unnest($13::text[]) AS u ON CONFLICT DO NOTHING)",
            $keys,
            " SELECT count(*) FROM ",
            $post
        )
    };
}

/// A start's business keys (`$15` names, `$16` values), in its statement.
macro_rules! insert_keys {
    () => {
        ", k AS (INSERT INTO procflow_keys (name, value, instance) \
         SELECT u.name, u.value, i.id FROM i, unnest($15::text[], $16::text[]) \
         AS u (name, value) ON CONFLICT DO NOTHING)"
    };
}

/// A later commit's business keys (`$14` names, `$15` values): those it no longer has deleted,
/// the others inserted where missing.
macro_rules! update_keys {
    () => {
        ", kd AS (DELETE FROM procflow_keys WHERE instance IN (SELECT id FROM i) \
         AND NOT EXISTS (SELECT 1 FROM unnest($14::text[], $15::text[]) AS u (name, value) \
         WHERE u.name = procflow_keys.name AND u.value = procflow_keys.value)), \
         ki AS (INSERT INTO procflow_keys (name, value, instance) \
         SELECT u.name, u.value, i.id FROM i, unnest($14::text[], $15::text[]) \
         AS u (name, value) ON CONFLICT DO NOTHING)"
    };
}

/// Turns `synchronous_commit` off for the statement's own transaction (a deferred commit,
/// `Store::defer`: committed without waiting for the disk).
macro_rules! no_wait {
    () => {
        "WITH c AS (SELECT set_config('synchronous_commit', 'off', true) AS s), "
    };
}

/// The statements by whether the commit carries business keys (a commit without keys has no
/// part for them: an empty one still costs the server), then whether it waits for the disk.
const INSERTS: [[&str; 2]; 2] = [
    [
        insert_sql!("WITH ", "", "i"),
        insert_sql!(no_wait!(), "", "i, c"),
    ],
    [
        insert_sql!("WITH ", insert_keys!(), "i"),
        insert_sql!(no_wait!(), insert_keys!(), "i, c"),
    ],
];
const UPDATES: [[&str; 2]; 2] = [
    [
        update_sql!("WITH ", "", "i"),
        update_sql!(no_wait!(), "", "i, c"),
    ],
    [
        update_sql!("WITH ", update_keys!(), "i"),
        update_sql!(no_wait!(), update_keys!(), "i, c"),
    ],
];

thread_local! {
    /// The store handle (its number) whose commits this thread defers, or 0.
    static DEFERRING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many groups of commits a store handle writes at once: while one waits for the server's
/// disk, the next gathers and is sent. More make smaller groups, which cost the server more
/// per commit (measured on two cores: 2 leaders 14.5-15.5 k commits/s, 3 11.6-12.6 k, 4
/// 10.6-12.0 k, 1 12.8-12.9 k).
pub(super) const GROUP_LEADERS: usize = 2;

/// The most commits one group's statement writes.
pub(super) const GROUP_MAX: usize = 64;

/// One commit's values, encoded once, owned: a group's leader writes them for their caller.
pub(super) struct Row {
    instance: InstanceId,
    id: i64,
    /// The version the call read (0 for a start), and as the store keeps it.
    read: u64,
    version: i64,
    process: String,
    started: i64,
    running: bool,
    state: String,
    next_due: Option<i64>,
    def_version: i64,
    first: i64,
    batch: Option<String>,
    pending: bool,
    /// The kept message the commit takes.
    takes: Option<u64>,
    /// The due instant to announce, if it must be.
    announce: Option<i64>,
    /// The instance's report facts as its row keeps them (a JSON array, schema 7).
    facts: String,
    /// The offers of its open tasks, rendered, when the commit changed them.
    offers: Option<Vec<String>>,
    /// Its business keys' names and values, when the commit carries them.
    key_names: Option<Vec<String>>,
    key_values: Option<Vec<String>>,
}

/// What became of a commit queued for a group.
pub(super) enum Verdict {
    /// Written alone (the only one of its batch): its outcome.
    Done(Result<(), Outcome>),
    /// Written in a group: stored.
    Stored,
    /// Written in a group: not stored, the instance is not at the version the call read.
    Refused,
    /// The group's statement failed and stored nothing: commit alone.
    Alone,
    /// The connection broke during the group's statement: the commit may be stored.
    Unknown(StoreError),
}

impl PostgresStore {
    /// [`Store::commit`](crate::Store::commit).
    pub(super) fn commit_one(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let id = i64::try_from(commit.instance.id().get()).map_err(|_| StoreError::Server {
            server: self.server.name.clone(),
            database: self.server.database.clone(),
            detail: format!("instance id {} is out of range", commit.instance.id()),
        })?;
        let next_due = commit.next_due.map(ms);
        let facts = self.defs.facts(commit.def, commit.instance, || {
            let version = i64::from(commit.def.version);
            self.read_tx(|conn| {
                let stmt = conn.statement(
                    "SELECT text FROM procflow_definitions WHERE id = $1 AND version = $2",
                )?;
                Ok(
                    match conn.client.query_opt(&stmt, &[&commit.def.id, &version])? {
                        Some(row) => Some(row.try_get::<_, String>(0)?),
                        None => None,
                    },
                )
            })
        })?;
        let rows = facts.rows();
        // The engine's clock when it made the commit: its last audit record's instant.
        let at = commit.records.last().map(|r| ms(r.at));
        let row = Arc::new(Row {
            instance: commit.instance.id(),
            id,
            read: commit.version,
            version: i64::try_from(commit.version).unwrap_or(-1),
            process: commit.def.id.clone(),
            started: nanos(commit.instance.started_at()),
            takes: commit.takes,
            running: commit.instance.status() == Status::Running,
            state: encode_state(commit.instance),
            next_due,
            def_version: i64::from(commit.def.version),
            first: commit.first_record as i64,
            batch: (!commit.records.is_empty()).then(|| encode_records(commit.records)),
            pending: !commit.instance.pending().is_empty(),
            announce: next_due.filter(|&due| self.shared.must_announce(due, at)),
            facts: crate::store::encode_facts(&rows, super::text::stored),
            offers: commit
                .offers
                .map(|offers| offers.iter().map(Offer::render).collect()),
            key_names: commit
                .keys
                .map(|keys| keys.iter().map(|k| k.name.clone()).collect()),
            key_values: commit.keys.map(|keys| {
                keys.iter()
                    .map(|k| super::text::stored(&k.value).into_owned())
                    .collect()
            }),
        });
        let fast = row.announce.is_none() && commit.takes.is_none();
        // Deferred: returns once the server has the commit, not once it is on its disk; the
        // thread's flush waits for the disk once for the batch.
        let deferred = DEFERRING.with(std::cell::Cell::get) == self.handle;
        let result = if fast && !deferred && crate::store::may_block_here() {
            // With the commits other threads make meanwhile.
            self.grouped(&row)
        } else if fast {
            self.pool
                .autocommit(&self.server, |conn| self.write_row(conn, &row, deferred))
        } else if deferred {
            self.pool.transaction_as(
                &self.server,
                "BEGIN; SET LOCAL synchronous_commit TO OFF",
                |conn| self.write_all(conn, &row),
            )
        } else {
            self.pool
                .transaction(&self.server, false, |conn| self.write_all(conn, &row))
        };
        let stored = match result {
            Ok(()) => Ok(()),
            Err(Outcome::Failed(e)) => Err(e),
            Err(Outcome::Unknown(lost)) => {
                self.pool.clear();
                if self.surely_absent(&row) {
                    // Nothing of it is stored (a pooled connection the server had closed, say):
                    // once more, on a new connection.
                    match self
                        .pool
                        .transaction(&self.server, false, |conn| self.write_all(conn, &row))
                    {
                        Ok(()) => Ok(()),
                        Err(Outcome::Failed(e)) => Err(e),
                        Err(Outcome::Unknown(lost)) => self.resolve(commit, &row.state, lost),
                    }
                } else {
                    self.resolve(commit, &row.state, lost)
                }
            }
        };
        if stored.is_ok()
            && let Some(due) = row.announce
        {
            self.shared.announced(due, true);
        }
        stored
    }

    /// A commit written with those other threads of this handle make at the same time
    /// ([`crate::store::group`]), or alone when it is the only one.
    fn grouped(&self, row: &Arc<Row>) -> Result<(), Outcome> {
        let verdict = self.group.commit(
            Some(row.instance.get()),
            Arc::clone(row),
            |rows| self.write_group(&rows),
            || {
                Verdict::Unknown(StoreError::Server {
                    server: self.server.name.clone(),
                    database: self.server.database.clone(),
                    detail: "the thread writing the commit's group panicked".into(),
                })
            },
        );
        match verdict {
            Verdict::Done(result) => result,
            Verdict::Stored => Ok(()),
            Verdict::Refused => Err(Outcome::Failed(
                self.read_tx(|conn| conflict(conn, row))
                    .unwrap_or_else(|e| e),
            )),
            Verdict::Alone => self
                .pool
                .autocommit(&self.server, |conn| self.write_row(conn, row, false)),
            Verdict::Unknown(e) => Err(Outcome::Unknown(e)),
        }
    }

    /// Writes a batch of commits (distinct instances): one alone with its own statement,
    /// several with [`group_sql`].
    fn write_group(&self, rows: &[Arc<Row>]) -> Vec<Verdict> {
        if let [row] = rows {
            return vec![Verdict::Done(
                self.pool
                    .autocommit(&self.server, |conn| self.write_row(conn, row, false)),
            )];
        }
        let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4);
        match self
            .pool
            .autocommit(&self.server, |conn| write_many(conn, rows, lease, &self.me))
        {
            Ok(stored) => rows
                .iter()
                .map(|row| {
                    if stored.contains(&row.id) {
                        Verdict::Stored
                    } else {
                        Verdict::Refused
                    }
                })
                .collect(),
            Err(Outcome::Failed(_)) => rows.iter().map(|_| Verdict::Alone).collect(),
            Err(Outcome::Unknown(e)) => rows.iter().map(|_| Verdict::Unknown(e.clone())).collect(),
        }
    }

    /// Whether the instance is known, on a new connection, to still stand where `row`'s commit
    /// read it (so that the commit is certainly not stored).
    fn surely_absent(&self, row: &Row) -> bool {
        let found = self.read_tx(|conn| {
            let stmt =
                conn.statement("SELECT row_version FROM procflow_instances WHERE id = $1")?;
            match conn.client.query_opt(&stmt, &[&row.id])? {
                Some(r) => Ok(Some(r.try_get::<_, i64>(0)?)),
                None => Ok(None),
            }
        });
        match found {
            Ok(None) => row.read == 0,
            Ok(Some(v)) => row.read > 0 && v == row.version,
            Err(_) => false,
        }
    }

    /// The instance row, its audit batch, report facts, offers and (when the commit carries
    /// them) business keys, in one statement.
    fn write_row(&self, conn: &mut Conn, row: &Row, no_wait: bool) -> Result<(), Fail> {
        let lease = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 4);
        let keys = row.key_names.is_some();
        // The parameters: the start's or the later commit's head, then what both write.
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = if row.read == 0 {
            vec![
                &row.id,
                &row.process,
                &row.def_version,
                &row.running,
                &row.started,
            ]
        } else {
            vec![&row.id, &row.def_version, &row.running, &row.version]
        };
        let tail: [&(dyn postgres::types::ToSql + Sync); 9] = [
            &row.state,
            &row.next_due,
            &row.first,
            &row.batch,
            &row.pending,
            &lease,
            &self.me,
            &row.facts,
            &row.offers,
        ];
        params.extend_from_slice(&tail);
        if keys {
            params.push(&row.key_names);
            params.push(&row.key_values);
        }
        let statements = if row.read == 0 { INSERTS } else { UPDATES };
        let stmt = conn.statement(statements[usize::from(keys)][usize::from(no_wait)])?;
        let changed: i64 = conn.client.query_one(&stmt, &params)?.try_get(0)?;
        if changed == 0 {
            return Err(Fail::Store(conflict(conn, row)?));
        }
        Ok(())
    }

    /// In a transaction: the row (with its keys), the kept message it takes, the announcement.
    fn write_all(&self, conn: &mut Conn, row: &Row) -> Result<(), Fail> {
        self.write_row(conn, row, false)?;
        if let Some(message) = row.takes {
            let stmt =
                conn.statement("DELETE FROM procflow_messages WHERE id = $1 AND NOT unmatched")?;
            if conn.client.execute(&stmt, &[&(message as i64)])? == 0 {
                return Err(Fail::Store(StoreError::Taken { message }));
            }
        }
        if let Some(due) = row.announce {
            let stmt = conn.statement("SELECT pg_notify($1, $2)")?;
            conn.client
                .execute(&stmt, &[&self.shared.channel, &format!("t{due}")])?;
        }
        Ok(())
    }

    /// [`Store::defer`](crate::Store::defer).
    pub(super) fn start_deferring(&self) {
        DEFERRING.with(|d| d.set(self.handle));
    }

    /// [`Store::flush`](crate::Store::flush): one durable write after the deferred commits;
    /// the server flushes its log up to it, so up to every commit before it.
    pub(super) fn flush_deferred(&self) -> Result<(), StoreError> {
        if DEFERRING.with(|d| d.replace(0)) != self.handle {
            return Ok(());
        }
        self.pool
            .autocommit(&self.server, |conn| {
                let stmt = conn.statement(
                    "INSERT INTO procflow_flushes (handle, n) VALUES ($1, 1) \
                     ON CONFLICT (handle) DO UPDATE SET n = procflow_flushes.n + 1",
                )?;
                conn.client.execute(&stmt, &[&self.me])?;
                Ok(())
            })
            .map_err(Outcome::into_error)
    }

    /// [`Store::claim_outbox`](crate::Store::claim_outbox).
    pub(super) fn claim_left(
        &self,
        lease: Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4);
        let mut claimed = self.write(|conn| {
            let stmt = conn.statement(
                "WITH server AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms), \
                 left_over AS (SELECT id FROM procflow_instances, server \
                   WHERE outbox_until IS NOT NULL AND outbox_until < server.ms \
                   ORDER BY outbox_until LIMIT 1000 FOR UPDATE OF procflow_instances SKIP LOCKED) \
                 UPDATE procflow_instances i SET outbox_until = server.ms + $1, outbox_by = $2 \
                 FROM left_over, server WHERE i.id = left_over.id RETURNING i.id, i.row_version",
            )?;
            ids_of(conn.client.query(&stmt, &[&lease, &self.me])?)
        })?;
        claimed.sort_unstable();
        Ok(Some(claimed))
    }

    /// [`Store::next_wake`](crate::Store::next_wake): the earliest due timer no live claim
    /// holds, and when the earliest lease on follow-ups runs out.
    pub(super) fn wake_next(&self) -> Result<Option<StoreWake>, StoreError> {
        let (due, work): (Option<i64>, Option<i64>) = self.pool.read_once(&self.server, |conn| {
            let stmt = conn.statement(
                "WITH server AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) \
                 SELECT (SELECT min(next_due) FROM procflow_instances \
                   WHERE running AND next_due IS NOT NULL \
                   AND (claim_until IS NULL OR claim_until < server.ms)), \
                 (SELECT min(outbox_until) FROM procflow_instances \
                   WHERE outbox_until IS NOT NULL) - server.ms \
                 FROM server",
            )?;
            let row = conn.client.query_one(&stmt, &[])?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })?;
        Ok(Some(StoreWake {
            due: due.and_then(chrono::DateTime::from_timestamp_millis),
            work_in: work.map(|ms| Duration::from_millis(u64::try_from(ms + 1).unwrap_or(0))),
        }))
    }

    /// [`Store::watch`](crate::Store::watch).
    pub(super) fn add_watch(&self, wake: StoreWatch) -> bool {
        wake::watch(&self.shared, &self.server, wake)
    }
}

/// The refusal of `row`'s commit: the version the instance is at, read on `conn`.
fn conflict(conn: &mut Conn, row: &Row) -> Result<StoreError, Fail> {
    let stmt = conn.statement("SELECT row_version FROM procflow_instances WHERE id = $1")?;
    let found: Option<i64> = match conn.client.query_opt(&stmt, &[&row.id])? {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    };
    Ok(StoreError::Conflict {
        instance: row.instance,
        expected: row.read,
        found: found.map(|v| u64::try_from(v).unwrap_or(0)),
    })
}

/// Several commits (of distinct instances) in one statement, as the lone statements write
/// them: the starts inserted, the later commits updated where the instance is at the version
/// read; then, for those stored, the audit batches, the offers and the business keys. A
/// commit's report facts, offers and keys come flattened, each row tagged with its instance.
/// The statement returns the ids stored.
///
/// Unlike the lone statements it inserts the instance rows and audit batches without an
/// `ON CONFLICT` clause (which costs an index probe a row): a start whose id is taken fails
/// the statement, and the group's commits are written alone, where the lone statement reports
/// the conflict.
///
/// It has only the parts its group needs (an empty part still costs the server as much as
/// a short one): `parts` is a bit set of [`STARTS`], [`UPDATES`], [`OFFERS`] and [`KEYS`].
fn group_sql(parts: usize) -> &'static str {
    static ALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| (0..16).map(build_group_sql).collect())[parts & 15].as_str()
}

const G_STARTS: usize = 1;
const G_UPDATES: usize = 2;
const G_OFFERS: usize = 4;
const G_KEYS: usize = 8;

fn build_group_sql(parts: usize) -> String {
    let has = |part| parts & part != 0;
    let mut sql = String::from(
        "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], \
         $4::boolean[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], \
         $10::text[], $11::boolean[], $12::boolean[], $13::boolean[], $14::text[]) \
         AS u (id, process, def_version, running, version, started_at, state, next_due, \
         first, batch, pending, offers_changed, keys_carried, facts)), \
         server AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms), ",
    );
    if has(G_OFFERS) {
        sql.push_str(
            "no AS (SELECT x.id, x.offer, x.ord FROM unnest($17::bigint[], $18::text[]) \
             WITH ORDINALITY AS x (id, offer, ord)), ",
        );
    }
    // The keys' parameters follow the offers' when there are offers.
    if has(G_KEYS) {
        let k = if has(G_OFFERS) { 19 } else { 17 };
        sql.push_str(&format!(
            "nk AS (SELECT x.id, x.name, x.value FROM unnest(${k}::bigint[], ${}::text[], \
             ${}::text[]) AS x (id, name, value)), ",
            k + 1,
            k + 2
        ));
    }
    // A commit's new offers (`NULL`: unchanged), outbox lease and holder.
    let offers = if has(G_OFFERS) {
        "CASE WHEN u.offers_changed THEN \
         ARRAY(SELECT no.offer FROM no WHERE no.id = u.id ORDER BY no.ord) END"
    } else {
        "CASE WHEN u.offers_changed THEN '{}'::text[] END"
    };
    let outbox = "CASE WHEN u.pending THEN server.ms + $15::bigint END, \
                  CASE WHEN u.pending THEN $16::text END";
    if has(G_STARTS) {
        sql.push_str(&format!(
            "ins AS (INSERT INTO procflow_instances \
             (id, process, def_version, running, row_version, started_at, state, next_due, \
              outbox_until, outbox_by, offers, facts) \
             SELECT u.id, u.process, u.def_version, u.running, 1, u.started_at, u.state, \
             u.next_due, {outbox}, {offers}, u.facts::jsonb FROM u, server \
             WHERE u.version = 0 RETURNING id), "
        ));
    }
    if has(G_UPDATES) {
        if has(G_OFFERS) {
            // The offers the rows list before the update (`od` deletes those gone).
            sql.push_str(
                "old AS (SELECT p.id, p.offers FROM procflow_instances p JOIN u \
                 ON p.id = u.id AND p.row_version = u.version \
                 WHERE u.version > 0 AND u.offers_changed), ",
            );
        }
        sql.push_str(&format!(
            "upd AS (UPDATE procflow_instances p SET def_version = u.def_version, \
             running = u.running, row_version = u.version + 1, state = u.state, \
             next_due = u.next_due, claim_until = NULL, claimed_by = NULL, \
             offers = coalesce({offers}, p.offers), (outbox_until, outbox_by) = ({outbox}), \
             facts = u.facts::jsonb \
             FROM u, server WHERE u.version > 0 AND p.id = u.id AND p.row_version = u.version \
             RETURNING p.id), "
        ));
    }
    sql.push_str(match (has(G_STARTS), has(G_UPDATES)) {
        (true, true) => "stored AS (SELECT id FROM ins UNION ALL SELECT id FROM upd), ",
        (true, false) => "stored AS (SELECT id FROM ins), ",
        _ => "stored AS (SELECT id FROM upd), ",
    });
    // Every start is stored when the statement is (an insert that fails fails it): its
    // batch needs no look at what was stored.
    sql.push_str(
        "r AS (INSERT INTO procflow_records (instance, first, batch) \
         SELECT u.id, u.first, u.batch FROM u WHERE u.batch IS NOT NULL AND ",
    );
    sql.push_str(match (has(G_STARTS), has(G_UPDATES)) {
        (true, true) => "(u.version = 0 OR u.id IN (SELECT id FROM upd)))",
        (true, false) => "u.version = 0)",
        _ => "u.id IN (SELECT id FROM upd))",
    });
    if has(G_UPDATES) && has(G_OFFERS) {
        // The offers of an updated instance it no longer has, and the `*` of a migration.
        sql.push_str(
            ", od AS (DELETE FROM procflow_offers o USING old \
             WHERE o.instance = old.id AND old.id IN (SELECT id FROM upd) \
             AND o.offer = ANY (array_append(old.offers, '*')) \
             AND NOT EXISTS (SELECT 1 FROM no WHERE no.id = o.instance AND no.offer = o.offer))",
        );
    }
    if has(G_OFFERS) {
        sql.push_str(
            ", oi AS (INSERT INTO procflow_offers (offer, instance) \
             SELECT no.offer, no.id FROM no JOIN stored ON stored.id = no.id \
             ON CONFLICT DO NOTHING)",
        );
    }
    if has(G_KEYS) {
        if has(G_UPDATES) {
            sql.push_str(
                ", kd AS (DELETE FROM procflow_keys k WHERE k.instance IN \
                 (SELECT u.id FROM u JOIN upd ON upd.id = u.id WHERE u.keys_carried) \
                 AND NOT EXISTS (SELECT 1 FROM nk WHERE nk.id = k.instance \
                 AND nk.name = k.name AND nk.value = k.value))",
            );
        }
        sql.push_str(
            ", ki AS (INSERT INTO procflow_keys (name, value, instance) \
             SELECT nk.name, nk.value, nk.id FROM nk JOIN stored ON stored.id = nk.id \
             ON CONFLICT DO NOTHING)",
        );
    }
    sql.push_str(" SELECT id FROM stored");
    sql
}

/// Writes `rows` (distinct instances) with [`group_sql`]; gives the ids it stored.
fn write_many(
    conn: &mut Conn,
    rows: &[Arc<Row>],
    lease: i64,
    me: &str,
) -> Result<HashSet<i64>, Fail> {
    let n = rows.len();
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
    let mut offers_changed = Vec::with_capacity(n);
    let mut keys_carried = Vec::with_capacity(n);
    let mut facts = Vec::with_capacity(n);
    let (mut o_ids, mut o_offers) = (Vec::new(), Vec::new());
    let (mut k_ids, mut k_names, mut k_values) = (Vec::new(), Vec::new(), Vec::new());
    let mut parts = 0;
    for row in rows {
        parts |= if row.read == 0 { G_STARTS } else { G_UPDATES };
        // An update that changes its offers or carries its keys may delete some: it needs
        // their parts even when it has none left.
        if row.read > 0 && row.offers.is_some() {
            parts |= G_OFFERS;
        }
        if row.read > 0 && row.key_names.is_some() {
            parts |= G_KEYS;
        }
        ids.push(row.id);
        processes.push(row.process.as_str());
        def_versions.push(row.def_version);
        running.push(row.running);
        versions.push(row.version);
        started.push(row.started);
        states.push(row.state.as_str());
        dues.push(row.next_due);
        firsts.push(row.first);
        batches.push(row.batch.as_deref());
        pending.push(row.pending);
        offers_changed.push(row.offers.is_some());
        keys_carried.push(row.key_names.is_some());
        facts.push(row.facts.as_str());
        for offer in row.offers.iter().flatten() {
            o_ids.push(row.id);
            o_offers.push(offer.as_str());
        }
        if let (Some(names), Some(values)) = (&row.key_names, &row.key_values) {
            for (name, value) in names.iter().zip(values) {
                k_ids.push(row.id);
                k_names.push(name.as_str());
                k_values.push(value.as_str());
            }
        }
    }
    if !o_ids.is_empty() {
        parts |= G_OFFERS;
    }
    if !k_ids.is_empty() {
        parts |= G_KEYS;
    }
    let stmt = conn.statement(group_sql(parts)).map_err(statement_bug)?;
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![
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
        &offers_changed,
        &keys_carried,
        &facts,
        &lease,
        &me,
    ];
    if parts & G_OFFERS != 0 {
        params.extend_from_slice(&[&o_ids, &o_offers]);
    }
    if parts & G_KEYS != 0 {
        params.extend_from_slice(&[&k_ids, &k_names, &k_values]);
    }
    let found = conn.client.query(&stmt, &params).map_err(statement_bug)?;
    let mut stored = HashSet::with_capacity(found.len());
    for row in found {
        stored.insert(row.try_get::<_, i64>(0)?);
    }
    Ok(stored)
}

/// A group whose statement fails is written commit by commit, which hides a statement the
/// server cannot run or parameters that do not fit it: debug builds stop there instead.
fn statement_bug(e: postgres::Error) -> postgres::Error {
    debug_assert!(
        e.is_closed()
            || e.as_db_error()
                .is_some_and(|db| !db.code().code().starts_with("42")),
        "the group statement is wrong: {e}"
    );
    e
}
