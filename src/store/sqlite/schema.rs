//! The store file's schema: recognising a procflow store, creating one, and the numbered
//! migrations that bring an older one to [`SUPPORTED`].
//!
//! **Invariant:** nothing is written to a file before it is known to be a procflow store of a
//! version this build reads: [`recognize`] looks at it through read-only connections that change
//! neither the file nor its `-wal` and `-shm` files (nor create them), so opening another
//! application's database leaves it untouched. A new store is only ever created by [`initialize`]
//! on a new file (see `file::create`).

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Deserialize;

use super::file::{Files, stat, uri};
use super::{due_millis, sql_err};
use crate::model::Timer;
use crate::store::{BusinessKey, StoreError};

/// The schema version this build writes and the newest it reads.
pub(super) const SUPPORTED: u32 = 11;

/// Version 1, exactly as the first SQLite store created it (frozen in
/// `tests/fixtures/schema-v1.sql`; a unit test keeps the two equal).
const V1: &str = "\
-- procflow SQLite store, schema version 1, frozen: a store written by the first version of the
-- SQLite store holds exactly these tables. Never edit this file; add a migration instead.
-- started_at is the instant in nanoseconds since the Unix epoch; instance ids came from max(id).
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value NOT NULL
);
INSERT INTO meta (key, value) VALUES ('application', 'procflow'), ('schema_version', 1);
CREATE TABLE definitions (
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
CREATE TABLE instances (
    id INTEGER PRIMARY KEY,
    process TEXT NOT NULL,
    def_version INTEGER NOT NULL,
    running INTEGER NOT NULL,
    row_version INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE records (
    instance INTEGER NOT NULL,
    first INTEGER NOT NULL,
    batch TEXT NOT NULL,
    PRIMARY KEY (instance, first)
) WITHOUT ROWID;
";

/// Version 2: the earliest pending timer of each instance (epoch milliseconds, rounded up) with
/// an index for [`Store::due`](crate::Store::due), an index of the running instances, and a
/// counter for id blocks (version 1 took ids from `max(id)`).
const V2: &str = "
ALTER TABLE instances ADD COLUMN next_due INTEGER;
CREATE INDEX instances_due ON instances (next_due) WHERE running = 1 AND next_due IS NOT NULL;
CREATE INDEX instances_running ON instances (id) WHERE running = 1;
CREATE TABLE counters (
    name TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) SELECT 'next_id', coalesce(max(id), 0) + 1 FROM instances;
UPDATE meta SET value = 2 WHERE key = 'schema_version';
";

/// Version 3: the business keys each instance holds (see [`BusinessKey`]), by key and value for
/// [`Store::by_key`](crate::Store::by_key) and by instance for the commits that replace them.
/// Filled from the stored instances whose definition lists `keys:` ([`fill_keys`]).
const V3: &str = "
CREATE TABLE keys (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    instance INTEGER NOT NULL,
    PRIMARY KEY (name, value, instance)
) WITHOUT ROWID;
CREATE INDEX keys_instance ON keys (instance);
UPDATE meta SET value = 3 WHERE key = 'schema_version';
";

/// Version 4: messages kept engine-wide (`keep_for`, `unmatched = 0`) and recorded unmatched
/// (`unmatched = 1`), each as JSON (see `messages.rs`).
const V4: &str = "
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    unmatched INTEGER NOT NULL,
    body TEXT NOT NULL
);
UPDATE meta SET value = 4 WHERE key = 'schema_version';
";

/// Version 5: `records` keyed by a sequence that grows with every commit, with an index by
/// (instance, position) for the reads. Versions 1 to 4 keyed the table by (instance, position)
/// itself, without rowid: a commit of an instance other than the newest inserted its batch (a
/// few hundred bytes, most of it on an overflow page, since an index page keeps at most about
/// 230 bytes of an entry in place with 1 KiB pages) into the middle of the tree, and split a
/// page every second or third commit. Now the batch is appended at the end of the table and only
/// the index entry (a few bytes) lands in the middle. The rows are copied in (instance,
/// position) order, so a migrated store keeps its order.
const V5: &str = "
CREATE TABLE records_v5 (
    seq INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL,
    first INTEGER NOT NULL,
    batch TEXT NOT NULL
);
INSERT INTO records_v5 (instance, first, batch)
    SELECT instance, first, batch FROM records ORDER BY instance, first;
DROP TABLE records;
ALTER TABLE records_v5 RENAME TO records;
CREATE UNIQUE INDEX records_instance ON records (instance, first);
UPDATE meta SET value = 5 WHERE key = 'schema_version';
";

/// Version 6:
/// a partial index of the instances whose state holds follow-ups left to run, so that
/// [`Store::outbox`](crate::Store::outbox), asked by every engine that opens the store, reads
/// those alone instead of every stored state. Its predicate is the outbox query's.
const V6: &str = "
CREATE INDEX instances_outbox ON instances (id)
    WHERE json_extract(state, '$.outbox.pending[0]') IS NOT NULL;
UPDATE meta SET value = 6 WHERE key = 'schema_version';
";

/// Version 7: what a report counts of each instance ([`Fact`](crate::store::Fact)), one row per
/// count (`n`) or span (`n` to `till`, in nanoseconds), written by every commit, so that a report
/// sums them with `GROUP BY` instead of decoding every state. Filled from the stored instances
/// (`facts::fill`), then [`V7_GROUPS`] adds the index the sums read.
/// Keyed by instance and the row's place among the instance's rows, without rowid: one tree
/// holds an instance's rows together (what a commit reads and replaces), and no second index by
/// instance is written.
const V7: &str = "
CREATE TABLE report_facts (
    instance INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    process TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    subject TEXT NOT NULL,
    n INTEGER NOT NULL,
    till INTEGER,
    PRIMARY KEY (instance, seq)
) WITHOUT ROWID;
";

/// The end of version 7: a covering index in `GROUP BY` order, so that the sums scan it without
/// sorting (over 4,000,000 rows: 0.8 s against 5.2 s sorting). Built after the fill, which is
/// faster than keeping it up to date row by row.
const V7_GROUPS: &str = "
CREATE INDEX report_facts_groups ON report_facts (process, kind, subject, started_at, n);
UPDATE meta SET value = 7 WHERE key = 'schema_version';
";

/// Version 8: fewer pages written per commit (a correlated message on 100,000 waiting instances
/// wrote about 9.4 pages of 1 KiB, most of them at scattered places).
///
/// - An instance's audit batches are found from its row instead of an index by (instance,
///   position): the instance keeps the sequence number of its newest batch (`last_batch`), and
///   each batch the one of the batch before it (`prev`), so that appending a batch writes the
///   tail of `records` and the instance's row, which the commit writes anyway, and no entry into
///   the middle of an index (1.4 pages a commit). The batches are copied with their sequence
///   numbers, `prev` before the (possibly long) batch so that following a chain reads no
///   overflow page.
/// - The `GROUP BY` index of the report facts is dropped: a completion moved the instance's row
///   from `Open` to `Completed`, two far-apart entries of it (2.8 pages a commit). A report sums
///   the facts in one scan of the table instead (see `facts::read`).
///
/// The instances' `last_batch` are set while the old index still finds each one's newest batch.
const V8: &str = "
ALTER TABLE instances ADD COLUMN last_batch INTEGER;
UPDATE instances SET last_batch =
    (SELECT r.seq FROM records r WHERE r.instance = instances.id ORDER BY r.first DESC LIMIT 1);
CREATE TABLE records_v8 (
    seq INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL,
    first INTEGER NOT NULL,
    prev INTEGER,
    batch TEXT NOT NULL
);
INSERT INTO records_v8 (seq, instance, first, prev, batch)
    SELECT r.seq, r.instance, r.first,
        (SELECT p.seq FROM records p WHERE p.instance = r.instance AND p.first < r.first
         ORDER BY p.first DESC LIMIT 1),
        r.batch
    FROM records r ORDER BY r.seq;
DROP TABLE records;
ALTER TABLE records_v8 RENAME TO records;
DROP INDEX IF EXISTS report_facts_groups;
UPDATE meta SET value = 8 WHERE key = 'schema_version';
";

/// Version 9: the roles each instance's open tasks are offered to ([`Offer`], rendered), by
/// offer for [`Store::offered`](crate::Store::offered), so that a work list reads only the
/// instances that may show it something. The instance's row lists its offers too (`offers`, a
/// JSON array), so that a commit that changes them deletes the rows it no longer has by their
/// key, without an index by instance. An instance stored running before gets the offer `*`
/// ([`ANY_OFFER`]), which every query matches, until a commit changes its offers (and deletes
/// it): the store cannot tell the roles without the engine's definitions and organisation.
///
/// [`Offer`]: crate::Offer
/// [`ANY_OFFER`]: crate::store::ANY_OFFER
const V9: &str = "
ALTER TABLE instances ADD COLUMN offers TEXT;
CREATE TABLE offers (
    offer TEXT NOT NULL,
    instance INTEGER NOT NULL,
    PRIMARY KEY (offer, instance)
) WITHOUT ROWID;
INSERT INTO offers (offer, instance) SELECT '*', id FROM instances WHERE running = 1;
UPDATE meta SET value = 9 WHERE key = 'schema_version';
";

/// Version 10, for files that several processes share
/// ([`SqliteOptions::shared`](crate::SqliteOptions::shared)), in epoch milliseconds of the
/// system clock:
/// - a claim on each instance's due timers (`claim_until`, and `claimed_by`, the claiming store
///   handle): a handle's `tick` fires only what it claimed, until the claim runs out (its
///   process died) or a commit to the instance ends it;
/// - a lease on each instance's follow-ups (`outbox_until`, `outbox_by`): a commit that leaves
///   follow-ups to run holds them for its handle until then, the commit recording that they
///   ran ends it, and a handle claims those whose lease ran out (their process died), with an
///   index of the leased ones. Follow-ups stored before are left to the engines that open the
///   file, as before.
const V10: &str = "
ALTER TABLE instances ADD COLUMN claim_until INTEGER;
ALTER TABLE instances ADD COLUMN claimed_by TEXT;
ALTER TABLE instances ADD COLUMN outbox_until INTEGER;
ALTER TABLE instances ADD COLUMN outbox_by TEXT;
CREATE INDEX instances_outbox_lease ON instances (outbox_until) WHERE outbox_until IS NOT NULL;
UPDATE meta SET value = 10 WHERE key = 'schema_version';
";

/// Version 11: an instance's report facts move into its row (`facts`, a JSON array of `[kind,
/// subject, n, till]`, see `facts.rs`), which every commit writes anyway, and `report_facts` is
/// dropped. A commit read the instance's fact rows, compared them and rewrote those that
/// changed: a page of a second tree at a scattered place, read and written in each commit that
/// finished an instance (with 1,000,000 waiting, a correlated message wrote about 5 pages, 3 of
/// them scattered). A report reads the column in its one scan of `instances`.
const V11: &str = "
ALTER TABLE instances ADD COLUMN facts TEXT;
UPDATE instances SET facts = (
    SELECT json_group_array(json_array(f.kind, f.subject, f.n, f.till))
    FROM (SELECT kind, subject, n, till FROM report_facts
          WHERE instance = instances.id ORDER BY kind, subject, n, till) f
);
DROP TABLE report_facts;
UPDATE meta SET value = 11 WHERE key = 'schema_version';
";

/// The page size of a new store: small pages keep the write per commit small (measured against
/// 4 KiB on the linear workload).
const PAGE_SIZE: u32 = 1024;

/// The `application_id` in the header of every procflow store (`PFlw`), so that a file is
/// recognised from its first page. Stores created before it was set get it when this build
/// first opens them.
pub(super) const APPLICATION_ID: i32 = 0x5046_6C77;

/// A `-wal` file (with no `-shm` beside it) up to this size is copied aside to be read, see
/// [`recognize`]; a larger one is not read.
const COPY_LIMIT: u64 = 256 << 20;

/// What a file holds, as far as the schema goes.
enum Found {
    /// No tables at all.
    Empty,
    /// A procflow store of this schema version.
    Version(u32),
}

/// Why reading the schema gave no answer.
enum Unread {
    /// The file is not a procflow store (or is one of a newer schema): a verdict.
    Refused(StoreError),
    /// Reading failed.
    Sql(rusqlite::Error),
    /// Reading the meta table failed: a table of that name that is not procflow's, or a failure.
    Meta(rusqlite::Error),
}

impl Unread {
    fn into_error(self, path: &Path) -> StoreError {
        match self {
            Unread::Refused(e) => e,
            Unread::Sql(e) => sql_err(path, e),
            Unread::Meta(e) => match sql_err(path, e) {
                StoreError::Other { detail, .. } => StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("unreadable meta table: {detail}"),
                },
                other => other,
            },
        }
    }
}

fn not_a_store(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Creates the schema in the new, empty file `conn` opened (see `file::create`): small pages,
/// every table of [`SUPPORTED`] and the [`APPLICATION_ID`] in one transaction, then write-ahead
/// logging. `path` is what errors name.
pub(super) fn initialize(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    // Only takes effect on a database without pages.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(|e| sql_err(path, e))?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err(path, e))?;
    if !matches!(inspect(&tx, path)?, Found::Empty) {
        return Err(StoreError::Other {
            path: path.to_path_buf(),
            detail: "the new store file is not empty".into(),
        });
    }
    // The same steps as a store created by the first version and migrated since.
    tx.execute_batch(V1).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V2).map_err(|e| sql_err(path, e))?;
    fill_next_due(&tx, path)?;
    tx.execute_batch(V3).map_err(|e| sql_err(path, e))?;
    fill_keys(&tx, path)?;
    tx.execute_batch(V4).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V5).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V6).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V7).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V7_GROUPS).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V8).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V9).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V10).map_err(|e| sql_err(path, e))?;
    tx.execute_batch(V11).map_err(|e| sql_err(path, e))?;
    stamp(&tx, path)?;
    tx.commit().map_err(|e| sql_err(path, e))?;
    wal(conn, path)
}

/// Checks, without changing anything, that the existing file is a procflow store.
///
/// The first look reads only the file itself (SQLite's `immutable` mode: no locks, and the
/// `-wal` and `-shm` files are neither read nor created): its application id, or its tables
/// and meta table. That decides for every store created or opened by this build, and for any
/// database whose tables are in the file. Only when the file has no tables (or could not be
/// read) while a log is beside it, the log is read too: with the `-shm` index opened read-only
/// when there is one, or else from a private copy of the file and its log (SQLite would create
/// a `-shm` beside the file to read it in place).
///
/// # Errors
/// [`StoreError::Corrupt`] naming `files.path` for a file that is not a procflow store (no
/// SQLite database; another application's, also an empty one; a damaged one);
/// [`StoreError::NewerSchema`]; [`StoreError::Locked`]; any failure of the medium.
pub(super) fn recognize(files: &Files, busy: Duration) -> Result<(), StoreError> {
    let path = &files.path;
    let first = look(&files.db, path, "immutable=1", busy);
    let found = match first {
        Ok(Found::Version(_)) => return Ok(()),
        Err(Unread::Refused(e)) => return Err(e),
        Err(Unread::Sql(rusqlite::Error::SqliteFailure(f, _)))
            if f.code == rusqlite::ErrorCode::NotADatabase =>
        {
            return Err(not_a_store(path, "not an SQLite database"));
        }
        other => other,
    };
    let len = |p: &Path| stat(p).ok().flatten().map(|m| m.len());
    let wal = len(&files.wal).unwrap_or(0);
    let again = if len(&files.shm).is_some() {
        // Read with the log as SQLite's readers do, but never writing the index: SQLite reads
        // the log into private memory when no other connection keeps the index up to date.
        look(&files.db, path, "readonly_shm=1", busy)
    } else if wal > 0 && wal <= COPY_LIMIT {
        look_at_copy(files, busy)
    } else if wal > 0 {
        return Err(not_a_store(
            path,
            format!(
                "an SQLite database whose tables are only in its {wal}-byte -wal file, with no \
                 -shm file: not read (too large to copy aside, and reading it in place would \
                 create a -shm file)"
            ),
        ));
    } else {
        // The file is all there is: the first look decides.
        found
    };
    match again {
        Ok(Found::Version(_)) => Ok(()),
        Ok(Found::Empty) => Err(not_a_store(path, "an SQLite database without tables")),
        Err(e) => Err(e.into_error(path)),
    }
}

/// Reads the schema of `db` through a read-only connection opened with the URI `params`;
/// verdicts name `path`.
fn look(db: &Path, path: &Path, params: &str, busy: Duration) -> Result<Found, Unread> {
    let Some(name) = uri(db, params) else {
        return Err(Unread::Sql(rusqlite::Error::InvalidPath(db.to_path_buf())));
    };
    let conn = Connection::open_with_flags(
        name,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(Unread::Sql)?;
    // A read-only connection cannot checkpoint; it must not even try when it closes.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(Unread::Sql)?;
    conn.busy_timeout(busy).map_err(Unread::Sql)?;
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(Unread::Sql)?;
    if app != 0 && app != APPLICATION_ID {
        return Err(Unread::Refused(not_a_store(
            path,
            format!("a database of another application (application_id {app:#010x})"),
        )));
    }
    read_found(&conn, path)
}

/// Copies the file and its log (no `-shm`: see [`recognize`]) into the temp directory and reads
/// the copy. With no `-shm` file, no connection in any process uses the log as SQLite's normal
/// mode does, so this process holds no lock on the file that reading it here could drop.
fn look_at_copy(files: &Files, busy: Duration) -> Result<Found, Unread> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let copy = std::env::temp_dir().join(format!(
        "procflow-look-{}-{}.db",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let companion = |suffix: &str| {
        let mut name = copy.clone().into_os_string();
        name.push(suffix);
        std::path::PathBuf::from(name)
    };
    let io = |e: std::io::Error| {
        Unread::Refused(StoreError::Other {
            path: files.path.clone(),
            detail: format!("copying the file and its -wal aside to read them: {e}"),
        })
    };
    let result = std::fs::copy(&files.db, &copy)
        .and_then(|_| std::fs::copy(&files.wal, companion("-wal")))
        .map_err(io)
        .and_then(|_| look(&copy, &files.path, "mode=ro", busy));
    for file in [copy.clone(), companion("-wal"), companion("-shm")] {
        let _ = std::fs::remove_file(file);
    }
    result
}

/// Brings the procflow store `conn` opened for writing ([`recognize`] accepted it) to
/// [`SUPPORTED`], in write-ahead-log mode and with the [`APPLICATION_ID`]: the pending
/// migrations and the id in one write transaction.
///
/// # Errors
/// [`StoreError::Corrupt`] when the file turns out not to be a procflow store, or is damaged;
/// [`StoreError::NewerSchema`]; [`StoreError::Locked`] when the file stays locked longer than
/// the busy timeout; any failure of the medium.
pub(super) fn prepare(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found = inspect(conn, path)?;
    let stamped = application_id(conn, path)? == APPLICATION_ID;
    if matches!(found, Found::Version(SUPPORTED)) {
        wal(conn, path)?;
        if !stamped {
            // Only a mark: a store another process is writing, or a read-only file, opens
            // without it (and gets it at a later open).
            let _ = stamp_now(conn);
        }
        return Ok(());
    }
    wal(conn, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err(path, e))?;
    // Another process may have migrated the store since `inspect`.
    let from = match inspect(&tx, path)? {
        Found::Empty => return Err(not_a_store(path, "an SQLite database without tables")),
        Found::Version(v) => v,
    };
    if from < 2 {
        tx.execute_batch(V2).map_err(|e| sql_err(path, e))?;
        fill_next_due(&tx, path)?;
    }
    if from < 3 {
        tx.execute_batch(V3).map_err(|e| sql_err(path, e))?;
        fill_keys(&tx, path)?;
    }
    if from < 4 {
        tx.execute_batch(V4).map_err(|e| sql_err(path, e))?;
    }
    if from < 5 {
        tx.execute_batch(V5).map_err(|e| sql_err(path, e))?;
    }
    if from < 6 {
        tx.execute_batch(V6).map_err(|e| sql_err(path, e))?;
    }
    if from < 7 {
        // Its table stays empty: version 11 moves the facts into the instances' rows, where
        // [`super::facts::fill`] computes them below. Not [`V7_GROUPS`]: its index would only
        // be built for version 8 to drop it.
        tx.execute_batch(V7).map_err(|e| sql_err(path, e))?;
    }
    if from < 8 {
        tx.execute_batch(V8).map_err(|e| sql_err(path, e))?;
    }
    if from < 9 {
        tx.execute_batch(V9).map_err(|e| sql_err(path, e))?;
    }
    if from < 10 {
        tx.execute_batch(V10).map_err(|e| sql_err(path, e))?;
    }
    if from < 11 {
        tx.execute_batch(V11).map_err(|e| sql_err(path, e))?;
    }
    if from < 7 {
        super::facts::fill(&tx, path)?;
    }
    stamp(&tx, path)?;
    tx.commit().map_err(|e| sql_err(path, e))?;
    if !stamped {
        // So that the file itself, not only its log, shows the id to the next `recognize`. A
        // checkpoint other connections keep from completing is done later, automatically.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    }
    Ok(())
}

fn application_id(conn: &Connection, path: &Path) -> Result<i32, StoreError> {
    conn.pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|e| sql_err(path, e))
}

/// Marks a store of the current version that has no [`APPLICATION_ID`] yet, without waiting
/// for another connection's lock.
fn stamp_now(conn: &mut Connection) -> rusqlite::Result<()> {
    let busy: i64 = conn.pragma_query_value(None, "busy_timeout", |row| row.get(0))?;
    conn.busy_timeout(Duration::ZERO)?;
    let result = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.commit()?;
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
    })();
    conn.busy_timeout(Duration::from_millis(u64::try_from(busy).unwrap_or(0)))?;
    result
}

fn stamp(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(|e| sql_err(path, e))
}

/// Recognises the file `conn` opened, without writing to it.
fn inspect(conn: &Connection, path: &Path) -> Result<Found, StoreError> {
    read_found(conn, path).map_err(|e| e.into_error(path))
}

/// Reads what the schema says: no tables, a procflow store of a version this build reads, or
/// (as [`Unread::Refused`]) anything else.
fn read_found(conn: &Connection, path: &Path) -> Result<Found, Unread> {
    let corrupt = |detail: String| Unread::Refused(not_a_store(path, detail));
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .map_err(Unread::Sql)?;
    let tables = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(Unread::Sql)?;
    if tables.is_empty() {
        return Ok(Found::Empty);
    }
    if !tables.iter().any(|t| t == "meta") {
        let mut shown = tables
            .iter()
            .take(8)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if tables.len() > 8 {
            shown.push_str(", ...");
        }
        return Err(corrupt(format!(
            "a database with no procflow meta table (tables: {shown})"
        )));
    }
    let meta = |key: &str| -> Result<Option<rusqlite::types::Value>, Unread> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()
        .map_err(Unread::Meta)
    };
    use rusqlite::types::Value;
    match meta("application")? {
        Some(Value::Text(app)) if app == "procflow" => {}
        _ => return Err(corrupt("a meta table that is not procflow's".into())),
    }
    let version = match meta("schema_version")? {
        Some(Value::Integer(v)) => v,
        other => {
            return Err(corrupt(format!(
                "schema version {other:?} is not a positive integer"
            )));
        }
    };
    if version < 1 {
        return Err(corrupt(format!("schema version {version}")));
    }
    let found = u32::try_from(version).unwrap_or(u32::MAX);
    if found > SUPPORTED {
        return Err(Unread::Refused(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SUPPORTED,
        }));
    }
    Ok(Found::Version(found))
}

/// Switches the file to write-ahead logging (persistent: a no-op once done).
fn wal(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(|e| sql_err(path, e))?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(StoreError::Other {
            path: path.to_path_buf(),
            detail: format!("cannot switch to write-ahead logging (journal mode {mode})"),
        })
    }
}

/// Version 1 kept no due instants: compute them from the stored timers of the running
/// instances. A state that does not decode keeps none (reading that instance reports it).
fn fill_next_due(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    #[derive(Deserialize)]
    struct Timers {
        #[serde(default)]
        timers: Vec<Timer>,
    }
    let mut select = conn
        .prepare("SELECT id, state FROM instances WHERE running = 1")
        .map_err(|e| sql_err(path, e))?;
    let mut update = conn
        .prepare("UPDATE instances SET next_due = ?2 WHERE id = ?1")
        .map_err(|e| sql_err(path, e))?;
    let mut rows = select.query([]).map_err(|e| sql_err(path, e))?;
    while let Some(row) = rows.next().map_err(|e| sql_err(path, e))? {
        let id: i64 = row.get(0).map_err(|e| sql_err(path, e))?;
        let state: String = row.get(1).map_err(|e| sql_err(path, e))?;
        let Ok(Timers { timers }) = serde_json::from_str::<Timers>(&state) else {
            continue;
        };
        let next = timers.iter().filter(|t| !t.fired).map(|t| t.at).min();
        if let Some(at) = next {
            update
                .execute((id, due_millis(at)))
                .map_err(|e| sql_err(path, e))?;
        }
    }
    Ok(())
}

/// Version 2 kept no business keys: index them from the stored instances of every stored
/// definition that lists `keys:`. A definition that no longer compiles, or a state that does
/// not decode, contributes none (reading that instance reports it).
fn fill_keys(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    #[derive(Deserialize)]
    struct State {
        #[serde(default)]
        vars: crate::vars::Vars,
    }
    let defs: Vec<(String, i64, String)> = {
        let mut stmt = conn
            .prepare("SELECT id, version, text FROM definitions")
            .map_err(|e| sql_err(path, e))?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| sql_err(path, e))?
    };
    let mut select = conn
        .prepare("SELECT id, state FROM instances WHERE process = ?1 AND def_version = ?2")
        .map_err(|e| sql_err(path, e))?;
    let mut insert = conn
        .prepare("INSERT OR IGNORE INTO keys (name, value, instance) VALUES (?1, ?2, ?3)")
        .map_err(|e| sql_err(path, e))?;
    for (id, version, text) in defs {
        let Ok(def) = crate::def::ProcessDef::from_yaml(&text) else {
            continue;
        };
        if def.keys().next().is_none() {
            continue;
        }
        let mut rows = select.query((&id, version)).map_err(|e| sql_err(path, e))?;
        while let Some(row) = rows.next().map_err(|e| sql_err(path, e))? {
            let instance: i64 = row.get(0).map_err(|e| sql_err(path, e))?;
            let state: String = row.get(1).map_err(|e| sql_err(path, e))?;
            let Ok(State { vars }) = serde_json::from_str::<State>(&state) else {
                continue;
            };
            for key in BusinessKey::of(def.keys(), &vars) {
                insert
                    .execute((&key.name, &key.value, instance))
                    .map_err(|e| sql_err(path, e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn v1_is_frozen() {
        assert_eq!(
            super::V1,
            include_str!("../../../tests/fixtures/schema-v1.sql")
        );
    }

    /// The tables of `sql` run on an empty database, as SQLite keeps them.
    fn tables(sql: &[&str]) -> Vec<(String, String, Option<String>)> {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for batch in sql {
            conn.execute_batch(batch).unwrap();
        }
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_schema ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// `tests/fixtures/schema-v4.sql` (the stores the migration to version 5 is tested on)
    /// holds what versions 1 to 4 create.
    #[test]
    fn v4_fixture_is_what_v1_to_v4_create() {
        let fixture = include_str!("../../../tests/fixtures/schema-v4.sql");
        assert_eq!(
            tables(&[fixture]),
            tables(&[super::V1, super::V2, super::V3, super::V4])
        );
    }
}
