//! The store file's schema: recognising a procflow store, and the numbered migrations that bring
//! an older one (or an empty file) to [`SUPPORTED`].
//!
//! **Invariant:** nothing is written to a file before it is known to be empty or a procflow store
//! of a version this build reads, so opening another application's database leaves it untouched.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Deserialize;

use super::{due_millis, sql_err};
use crate::model::Timer;
use crate::store::StoreError;

/// The schema version this build writes and the newest it reads.
pub(super) const SUPPORTED: u32 = 2;

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

/// The page size of a new store: small pages keep the write per commit small (measured against
/// 4 KiB on the linear workload).
const PAGE_SIZE: u32 = 1024;

/// What a file holds, as far as the schema goes.
enum Found {
    /// No tables at all: a new (or empty) database.
    Empty,
    /// A procflow store of this schema version.
    Version(u32),
}

/// Checks that the file `conn` opened is empty or a procflow store this build reads, switches it
/// to WAL and runs the pending migrations in one write transaction.
///
/// # Errors
/// [`StoreError::Corrupt`] for another application's database or a damaged file (left
/// untouched); [`StoreError::NewerSchema`]; [`StoreError::Locked`] when the file stays locked
/// longer than the busy timeout; any failure of the medium.
pub(super) fn prepare(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found = inspect(conn, path)?;
    if matches!(found, Found::Version(SUPPORTED)) {
        return wal(conn, path);
    }
    if matches!(found, Found::Empty) {
        // Only takes effect on a database without pages.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(|e| sql_err(path, e))?;
    }
    wal(conn, path)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_err(path, e))?;
    // Another process may have migrated (or created) the store since `inspect`.
    let from = match inspect(&tx, path)? {
        Found::Empty => 0,
        Found::Version(v) => v,
    };
    if from < 1 {
        tx.execute_batch(V1).map_err(|e| sql_err(path, e))?;
    }
    if from < 2 {
        tx.execute_batch(V2).map_err(|e| sql_err(path, e))?;
        fill_next_due(&tx, path)?;
    }
    tx.commit().map_err(|e| sql_err(path, e))
}

/// Recognises the file without writing to it.
fn inspect(conn: &Connection, path: &Path) -> Result<Found, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .map_err(|e| sql_err(path, e))?;
    let tables = stmt
        .query_map([], |row| row.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql_err(path, e))?;
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
    let meta = |key: &str| -> Result<Option<rusqlite::types::Value>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()
        .map_err(|e| match sql_err(path, e) {
            StoreError::Other { detail, .. } => corrupt(format!("unreadable meta table: {detail}")),
            other => other,
        })
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
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported: SUPPORTED,
        });
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

#[cfg(test)]
mod tests {
    #[test]
    fn v1_is_frozen() {
        assert_eq!(
            super::V1,
            include_str!("../../../tests/fixtures/schema-v1.sql")
        );
    }
}
