//! The write side: commits prepared outside any lock, and the write connection committing a
//! batch of them in one transaction (one savepoint each); `store::group` gathers the batches.
//!
//! **Invariant:** a commit's result is decided before any of its rows are written (the version
//! check, and the removal of a kept message the commit takes, are its savepoint's first
//! statements), and whatever fails is rolled back to its
//! savepoint, so a failed commit stores nothing and the others of its batch are not affected.

use std::path::Path;

use super::file::Anchor;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use super::{due_millis, nanos, sql_err};
use crate::ids::InstanceId;
use crate::model::Status;
use crate::store::{
    ANY_OFFER, Commit, InstanceFacts, Offer, StoreError, encode_records, encode_state,
};

/// One commit, serialized by its caller's thread.
pub(super) struct Prepared {
    instance: InstanceId,
    id: i64,
    process: String,
    def_version: i64,
    running: bool,
    started_at: i64,
    state: String,
    /// The records' JSON array and the position of the first, when the commit adds any.
    records: Option<(i64, String)>,
    version: u64,
    new_version: i64,
    next_due: Option<i64>,
    /// The instance's business keys (name, value), when the commit changed them.
    keys: Option<Vec<(String, String)>>,
    /// The offers of its open tasks, rendered, and as the JSON array the row keeps, when the
    /// commit changed them.
    offers: Option<(Vec<String>, String)>,
    /// What a report counts of the instance, as its row keeps it.
    facts: String,
    /// The kept message the commit takes ([`Commit::takes`]).
    takes: Option<u64>,
    /// On a shared file, when the commit leaves follow-ups to run: until when (epoch
    /// milliseconds) and for which handle it holds them.
    outbox: Option<(i64, String)>,
}

impl Prepared {
    pub(super) fn new(
        commit: &Commit<'_>,
        facts: &InstanceFacts,
        path: &Path,
        outbox: Option<(i64, String)>,
    ) -> Result<Prepared, StoreError> {
        let instance = commit.instance.id();
        let range = |what: &str| StoreError::Other {
            path: path.to_path_buf(),
            detail: format!("{what} of instance {instance} is out of the store's range"),
        };
        let id = i64::try_from(instance.get()).map_err(|_| range("the id"))?;
        let new_version = commit
            .version
            .checked_add(1)
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(|| range("the version"))?;
        let records = if commit.records.is_empty() {
            None
        } else {
            let first = i64::try_from(commit.first_record).map_err(|_| range("first_record"))?;
            Some((first, encode_records(commit.records)))
        };
        Ok(Prepared {
            instance,
            id,
            process: commit.def.id.clone(),
            def_version: i64::from(commit.def.version),
            running: commit.instance.status() == Status::Running,
            started_at: nanos(commit.instance.started_at()),
            state: encode_state(commit.instance),
            records,
            version: commit.version,
            new_version,
            next_due: commit.next_due.map(due_millis),
            keys: commit.keys.map(|keys| {
                keys.iter()
                    .map(|k| (k.name.clone(), k.value.clone()))
                    .collect()
            }),
            offers: commit.offers.map(|offers| {
                let rendered: Vec<String> = offers.iter().map(Offer::render).collect();
                let json = serde_json::to_string(&rendered).unwrap_or_default();
                (rendered, json)
            }),
            facts: super::facts::encode(&facts.rows()),
            takes: commit.takes,
            outbox: outbox.filter(|_| !commit.instance.pending().is_empty()),
        })
    }
}

/// The write connection and the error a setter could not report.
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// A setting that failed to apply: the next write reports it.
    pub(super) deferred: Option<StoreError>,
}

impl Writer {
    /// Reports a failed setting or a lost file, and rolls back a transaction a panic may have
    /// left open.
    pub(super) fn ready(&mut self, anchor: &Anchor) -> Result<(), StoreError> {
        let path = anchor.path();
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if !self.conn.is_autocommit() {
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(|e| sql_err(path, e))?;
        }
        if let Some(e) = anchor.lost() {
            // A read found the file gone: take the log off the path (once).
            anchor.release_log(&self.conn);
            return Err(e);
        }
        Ok(())
    }

    /// Commits `items` in one transaction, each in its own savepoint; returns each one's result
    /// in order. The transaction commits only if the store's path still names its file (one
    /// check for the whole batch, just before the commit).
    pub(super) fn commit_batch(
        &mut self,
        items: &[&Prepared],
        anchor: &Anchor,
    ) -> Vec<Result<(), StoreError>> {
        let path = anchor.path();
        if let Err(e) = self.ready(anchor) {
            return vec![Err(e); items.len()];
        }
        let mut failed: Vec<Option<StoreError>> = vec![None; items.len()];
        // Each pass either commits or marks one more item failed, so this ends.
        loop {
            let left = failed.iter().filter(|f| f.is_none()).count();
            if left == 0 {
                break;
            }
            let savepoints = left > 1;
            if let Err(e) = run(&self.conn, "BEGIN IMMEDIATE") {
                let e = sql_err(path, e);
                fill(&mut failed, &e);
                break;
            }
            let mut restart = false;
            for (item, slot) in items.iter().zip(failed.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                if savepoints && let Err(e) = run(&self.conn, "SAVEPOINT one") {
                    *slot = Some(sql_err(path, e));
                    restart = true;
                    break;
                }
                match apply(&self.conn, item, path) {
                    Ok(()) if savepoints => {
                        if let Err(e) = run(&self.conn, "RELEASE one") {
                            *slot = Some(sql_err(path, e));
                            restart = true;
                            break;
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        *slot = Some(e);
                        // SQLite may roll back the whole transaction on some errors (a full
                        // disk, I/O): then the others of the batch are redone.
                        if !savepoints
                            || self.conn.is_autocommit()
                            || self
                                .conn
                                .execute_batch("ROLLBACK TO one; RELEASE one")
                                .is_err()
                        {
                            restart = true;
                            break;
                        }
                    }
                }
            }
            if restart {
                self.rollback();
                continue;
            }
            if let Err(e) = anchor.check() {
                self.rollback();
                anchor.release_log(&self.conn);
                fill(&mut failed, &e);
                break;
            }
            if let Err(e) = run(&self.conn, "COMMIT") {
                let e = sql_err(path, e);
                self.rollback();
                fill(&mut failed, &e);
            }
            break;
        }
        failed
            .into_iter()
            .map(|f| match f {
                Some(e) => Err(e),
                None => Ok(()),
            })
            .collect()
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            // A failed rollback leaves the transaction open; `ready` retries it before the next
            // write and reports it if it fails again.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Runs one statement without arguments through the statement cache (the transaction control
/// of every commit: parsed once, not once a commit).
fn run(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn fill(failed: &mut [Option<StoreError>], e: &StoreError) {
    for slot in failed.iter_mut().filter(|f| f.is_none()) {
        *slot = Some(e.clone());
    }
}

/// Writes one commit inside the current transaction, after checking its version.
///
/// A commit that adds audit records appends them as a new batch at the end of `records`,
/// linked to the instance's newest batch before it (`prev`) and made the newest one in the
/// instance's row (`last_batch`): see schema version 8.
fn apply(conn: &Connection, p: &Prepared, path: &Path) -> Result<(), StoreError> {
    let sql = |e| sql_err(path, e);
    // The sequence number of the commit's batch, if it adds one: after every stored batch.
    let seq: Option<i64> = match &p.records {
        None => None,
        Some(_) => Some(
            conn.prepare_cached("SELECT coalesce(max(seq), 0) + 1 FROM records")
                .and_then(|mut s| s.query_row([], |row| row.get(0)))
                .map_err(sql)?,
        ),
    };
    // The instance's newest batch before this commit's, and its offers before it.
    let mut prev: Option<i64> = None;
    let mut old_offers: Vec<String> = Vec::new();
    let changed = if p.version == 0 {
        conn.prepare_cached(
            "INSERT INTO instances \
             (id, process, def_version, running, row_version, started_at, state, next_due, \
              last_batch, offers, outbox_until, outbox_by, facts) \
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
             ON CONFLICT (id) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                p.id,
                p.process,
                p.def_version,
                p.running,
                p.started_at,
                p.state,
                p.next_due,
                seq,
                p.offers.as_ref().map(|(_, json)| json),
                p.outbox.as_ref().map(|(until, _)| until),
                p.outbox.as_ref().map(|(_, by)| by),
                p.facts
            ])
        })
        .map_err(sql)?
    } else {
        // A version beyond i64 cannot be stored: it matches no row.
        let version = i64::try_from(p.version).unwrap_or(-1);
        let found = if seq.is_some() || p.offers.is_some() {
            // The version check, reading the link the new batch keeps and the offers the new
            // ones replace.
            let last: Option<(Option<i64>, Option<String>)> = conn
                .prepare_cached(
                    "SELECT last_batch, offers FROM instances WHERE id = ?1 AND row_version = ?2",
                )
                .and_then(|mut s| {
                    s.query_row([p.id, version], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                })
                .map_err(sql)?;
            match last {
                Some((last, offers)) => {
                    prev = last;
                    // A row written before offers were kept lists none (it may hold `*`).
                    old_offers = offers
                        .and_then(|json| serde_json::from_str(&json).ok())
                        .unwrap_or_default();
                    true
                }
                None => false,
            }
        } else {
            true
        };
        if found {
            conn.prepare_cached(
                "UPDATE instances SET def_version = ?2, running = ?3, row_version = ?4, \
                 state = ?5, next_due = ?6, last_batch = coalesce(?8, last_batch), \
                 offers = coalesce(?9, offers), claim_until = NULL, claimed_by = NULL, \
                 outbox_until = ?10, outbox_by = ?11, facts = ?12 \
                 WHERE id = ?1 AND row_version = ?7",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.id,
                    p.def_version,
                    p.running,
                    p.new_version,
                    p.state,
                    p.next_due,
                    version,
                    seq,
                    p.offers.as_ref().map(|(_, json)| json),
                    p.outbox.as_ref().map(|(until, _)| until),
                    p.outbox.as_ref().map(|(_, by)| by),
                    p.facts
                ])
            })
            .map_err(sql)?
        } else {
            0
        }
    };
    if changed == 0 {
        let found: Option<i64> = conn
            .prepare_cached("SELECT row_version FROM instances WHERE id = ?1")
            .and_then(|mut s| s.query_row([p.id], |row| row.get(0)).optional())
            .map_err(sql)?;
        return Err(StoreError::Conflict {
            instance: p.instance,
            expected: p.version,
            found: found.map(|v| u64::try_from(v).unwrap_or(0)),
        });
    }
    if let Some(message) = p.takes {
        // Taken once: by the first commit that removes it while it is still kept.
        let taken = i64::try_from(message).map_or(Ok(0), |id| {
            conn.prepare_cached("DELETE FROM messages WHERE id = ?1 AND unmatched = 0")
                .and_then(|mut s| s.execute([id]))
                .map_err(sql)
        })?;
        if taken == 0 {
            return Err(StoreError::Taken { message });
        }
    }
    if let (Some((first, batch)), Some(seq)) = (&p.records, seq) {
        conn.prepare_cached(
            "INSERT INTO records (seq, instance, first, prev, batch) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![seq, p.id, first, prev, batch]))
        .map_err(sql)?;
    }
    if let Some(keys) = &p.keys {
        replace_keys(conn, p.id, p.version == 0, keys).map_err(sql)?;
    }
    if let Some((offers, _)) = &p.offers {
        replace_offers(conn, p.id, p.version == 0, &old_offers, offers).map_err(sql)?;
    }
    Ok(())
}

/// Makes the keys indexed for instance `id` exactly `keys`, writing only the rows that change:
/// a call that sets a key variable to the value it had (a message that carries the key it was
/// correlated by) writes nothing. A new instance (`fresh`) has none stored.
fn replace_keys(
    conn: &Connection,
    id: i64,
    fresh: bool,
    keys: &[(String, String)],
) -> rusqlite::Result<()> {
    let stored: Vec<(String, String)> = if fresh {
        Vec::new()
    } else {
        conn.prepare_cached("SELECT name, value FROM keys WHERE instance = ?1")?
            .query_map([id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    for (name, value) in stored.iter().filter(|k| !keys.contains(k)) {
        conn.prepare_cached("DELETE FROM keys WHERE name = ?1 AND value = ?2 AND instance = ?3")?
            .execute(params![name, value, id])?;
    }
    for (name, value) in keys.iter().filter(|k| !stored.contains(k)) {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO keys (name, value, instance) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![name, value, id])?;
    }
    Ok(())
}

/// Makes the offers indexed for instance `id` exactly `new`, given those its row listed before
/// (`old`): the rows of offers it lost are deleted (and the `*` a migration gave it, unless it is
/// a new instance, `fresh`), those of offers it gained inserted. Offers it keeps are not
/// written.
fn replace_offers(
    conn: &Connection,
    id: i64,
    fresh: bool,
    old: &[String],
    new: &[String],
) -> rusqlite::Result<()> {
    let migrated = (!fresh).then_some(ANY_OFFER);
    let gone = old
        .iter()
        .map(String::as_str)
        .chain(migrated)
        .filter(|o| !new.iter().any(|n| n == o));
    for offer in gone {
        conn.prepare_cached("DELETE FROM offers WHERE offer = ?1 AND instance = ?2")?
            .execute(params![offer, id])?;
    }
    for offer in new.iter().filter(|o| !old.contains(o)) {
        conn.prepare_cached("INSERT OR IGNORE INTO offers (offer, instance) VALUES (?1, ?2)")?
            .execute(params![offer, id])?;
    }
    Ok(())
}

/// [`Store::reoffer`](crate::Store::reoffer) inside a write transaction: each instance that
/// still carries `*` at the version given gets its offers (in its row and as rows of their
/// own) in place of `*`. Gives how many changed.
pub(super) fn reoffer(
    conn: &Connection,
    offers: &[(InstanceId, u64, Vec<Offer>)],
) -> rusqlite::Result<usize> {
    let mut changed = 0;
    for (id, version, offers) in offers {
        let (Ok(id), Ok(version)) = (i64::try_from(id.get()), i64::try_from(*version)) else {
            continue;
        };
        let rendered: Vec<String> = offers.iter().map(Offer::render).collect();
        let json = serde_json::to_string(&rendered).unwrap_or_default();
        let updated = conn
            .prepare_cached(
                "UPDATE instances SET offers = ?3 WHERE id = ?1 AND row_version = ?2 \
                 AND EXISTS (SELECT 1 FROM offers WHERE offer = ?4 AND instance = ?1)",
            )?
            .execute(params![id, version, json, ANY_OFFER])?;
        if updated == 1 {
            replace_offers(conn, id, false, &[], &rendered)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Locks the writer; a poisoned lock is fine, [`Writer::ready`] rolls back what it left open.
pub(super) fn lock(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(|e| e.into_inner())
}
