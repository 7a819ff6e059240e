//! The database's schema: recognising a procflow store, creating one, and the numbered
//! migrations that bring an older one to [`SUPPORTED`].
//!
//! **Invariant:** nothing is written to a database before it is known to be empty or a procflow
//! store of a version this build reads: a database holding other tables and no `procflow_meta`
//! is another application's and is refused untouched, and so is one whose schema is newer.
//! Creating and migrating run in one transaction under an advisory lock, so two replicas
//! starting at once do not both create the tables.

use postgres::Client;

use super::Server;
use crate::store::StoreError;

/// The schema version this build writes and the newest it reads.
pub(crate) const SUPPORTED: u32 = 7;

/// Version 1, exactly as the first PostgreSQL store created it (frozen in `v1.sql`).
pub(crate) const V1: &str = include_str!("v1.sql");

/// The migrations after version 1: `MIGRATIONS[i]` brings version `i + 2` from `i + 1`.
///
/// Version 2: a lease on each instance's due timers (`claim_until`, epoch milliseconds of the
/// server's clock, and `claimed_by`, the claiming store handle): a replica that claims an
/// instance's due timers owns them until then; a commit clears the claim, and an expired one
/// returns (the replica died).
///
/// Version 3: a lease on each instance's follow-ups (`outbox_until`, epoch milliseconds of the
/// server's clock, and `outbox_by`): a commit that leaves follow-ups to run holds them for its
/// replica until then, a commit that leaves none clears it, and a replica claims the ones whose
/// lease ran out (their replica died before running them). Instances stored with follow-ups
/// pending are claimable at once; the partial index on `outbox_until` is also what
/// [`Store::outbox`](crate::Store::outbox) (asked by every engine that opens the store) reads,
/// instead of every stored state. `procflow_flushes`: one row per store handle that deferred
/// commits' durability (a tick's timer firings), written durably to flush them.
///
/// Version 4: what a report counts of each instance ([`Fact`](crate::store::Fact)), one row per
/// count (`n`) or span (`n` to `till`, in nanoseconds), written by every commit's statement, so
/// that a report sums them with `GROUP BY` instead of decoding every state. Filled from the
/// stored instances (`facts::fill`, after the statement).
///
/// Version 5: the roles each instance's open tasks are offered to
/// ([`Offer`](crate::store::Offer), rendered), by offer for
/// [`Store::offered`](crate::Store::offered); the instance's row lists them too (`offers`), so
/// that a commit that changes them deletes the rows it no longer has by their key. An instance
/// stored running before gets the offer `*`, which every query matches, until a commit changes
/// its offers (the roles need the engine's definitions and organisation).
///
/// Version 6: the offers are compared byte by byte (`COLLATE "C"`), so that every offer of a
/// role to some unit (`role@…`) is one range of their index, whatever the database's
/// collation.
///
/// Version 7: an instance's report facts move into its row (`facts`, a JSON array of `[kind,
/// subject, n, till]`, see `facts.rs`), which every commit writes anyway, and
/// `procflow_report_facts` is dropped: a later commit deleted and inserted the instance's rows
/// and their index entries (a firing on three replicas, a completion).
const MIGRATIONS: &[&str] = &[
    "
ALTER TABLE procflow_instances ADD COLUMN claim_until BIGINT;
ALTER TABLE procflow_instances ADD COLUMN claimed_by TEXT;
UPDATE procflow_meta SET value = '2' WHERE key = 'schema_version';
",
    "
ALTER TABLE procflow_instances ADD COLUMN outbox_until BIGINT;
ALTER TABLE procflow_instances ADD COLUMN outbox_by TEXT;
UPDATE procflow_instances SET outbox_until = 0
    WHERE (state::jsonb #> '{outbox,pending,0}') IS NOT NULL;
CREATE INDEX procflow_instances_outbox ON procflow_instances (outbox_until)
    WHERE outbox_until IS NOT NULL;
CREATE TABLE procflow_flushes (
    handle TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
UPDATE procflow_meta SET value = '3' WHERE key = 'schema_version';
",
    "
CREATE TABLE procflow_report_facts (
    instance BIGINT NOT NULL,
    process TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    kind BIGINT NOT NULL,
    subject TEXT NOT NULL,
    n BIGINT NOT NULL,
    till BIGINT
);
CREATE INDEX procflow_report_facts_instance ON procflow_report_facts (instance);
UPDATE procflow_meta SET value = '4' WHERE key = 'schema_version';
",
    "
ALTER TABLE procflow_instances ADD COLUMN offers TEXT[];
CREATE TABLE procflow_offers (
    offer TEXT NOT NULL,
    instance BIGINT NOT NULL,
    PRIMARY KEY (offer, instance)
);
INSERT INTO procflow_offers (offer, instance) SELECT '*', id FROM procflow_instances WHERE running;
UPDATE procflow_meta SET value = '5' WHERE key = 'schema_version';
",
    "
ALTER TABLE procflow_offers ALTER COLUMN offer TYPE TEXT COLLATE \"C\";
UPDATE procflow_meta SET value = '6' WHERE key = 'schema_version';
",
    "
ALTER TABLE procflow_instances ADD COLUMN facts JSONB;
UPDATE procflow_instances i SET facts = coalesce(
    (SELECT jsonb_agg(jsonb_build_array(f.kind, f.subject, f.n, f.till))
     FROM procflow_report_facts f WHERE f.instance = i.id),
    '[]'::jsonb);
DROP TABLE procflow_report_facts;
UPDATE procflow_meta SET value = '7' WHERE key = 'schema_version';
",
];

/// The version whose migration adds `procflow_report_facts`, filled after its statement (and
/// moved into the instances' rows by version 7).
const FACTS: u32 = 4;

/// Advisory lock key taken while creating or migrating the schema (`PFlw` + 1).
const SCHEMA_LOCK: i64 = 0x5046_6C77_0001;

/// Brings the database to [`SUPPORTED`], creating the schema in an empty one.
///
/// # Errors
/// [`StoreError::ForeignDatabase`], [`StoreError::NewerDatabaseSchema`], or a failure of the
/// server.
pub(super) fn prepare(client: &mut Client, server: &Server) -> Result<(), StoreError> {
    // Fast path: a current store is only read.
    if let Some(found) = version(client, server)?
        && found == SUPPORTED
    {
        return Ok(());
    }
    let mut tx = client.transaction().map_err(|e| server.err(e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .map_err(|e| server.err(e))?;
    let found = match version(&mut tx, server)? {
        Some(found) => found,
        None => {
            tx.batch_execute(V1).map_err(|e| server.err(e))?;
            1
        }
    };
    migrate_from(&mut tx, server, found)?;
    tx.commit().map_err(|e| server.err(e))
}

/// Runs the migrations from version `found` on.
fn migrate_from(
    tx: &mut impl postgres::GenericClient,
    server: &Server,
    found: u32,
) -> Result<(), StoreError> {
    let from = usize::try_from(found.saturating_sub(1)).unwrap_or(usize::MAX);
    for (step, to) in MIGRATIONS.iter().zip(2u32..).skip(from) {
        tx.batch_execute(step).map_err(|e| server.err(e))?;
        if to == FACTS {
            super::facts::fill(tx, server)?;
        }
    }
    Ok(())
}

/// The procflow schema version in the database; `None` when the database is empty.
///
/// # Errors
/// [`StoreError::ForeignDatabase`] for another application's database,
/// [`StoreError::NewerDatabaseSchema`].
fn version(
    client: &mut impl postgres::GenericClient,
    server: &Server,
) -> Result<Option<u32>, StoreError> {
    let meta: bool = client
        .query_one("SELECT to_regclass('procflow_meta') IS NOT NULL", &[])
        .and_then(|row| row.try_get(0))
        .map_err(|e| server.err(e))?;
    if !meta {
        let tables: Vec<String> = client
            .query(
                "SELECT c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'S') \
                 ORDER BY 1 LIMIT 3",
                &[],
            )
            .map_err(|e| server.err(e))?
            .iter()
            .filter_map(|row| row.try_get(0).ok())
            .collect();
        if tables.is_empty() {
            return Ok(None);
        }
        return Err(server.foreign(format!(
            "it holds other tables ({}) and no procflow_meta; left untouched",
            tables.join(", ")
        )));
    }
    let rows = client
        .query(
            "SELECT key, value FROM procflow_meta WHERE key IN ('application', 'schema_version')",
            &[],
        )
        .map_err(|e| server.foreign(format!("unreadable procflow_meta: {e}")))?;
    let mut application = None;
    let mut version = None;
    for row in rows {
        let key: String = row.try_get(0).map_err(|e| server.foreign(e.to_string()))?;
        let value: String = row.try_get(1).map_err(|e| server.foreign(e.to_string()))?;
        match key.as_str() {
            "application" => application = Some(value),
            _ => version = Some(value),
        }
    }
    if application.as_deref() != Some("procflow") {
        return Err(server.foreign("procflow_meta does not name procflow"));
    }
    let found: u32 = version
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| server.foreign("procflow_meta holds no schema version"))?;
    if found > SUPPORTED {
        return Err(StoreError::NewerDatabaseSchema {
            server: server.name.clone(),
            database: server.database.clone(),
            found,
            supported: SUPPORTED,
        });
    }
    if found == 0 {
        return Err(server.foreign("schema version 0"));
    }
    Ok(Some(found))
}
