//! The `report_facts` table (schema 7): what a report counts of each instance
//! ([`Fact`](crate::store::Fact)), written by every commit and summed by
//! [`Store::report_facts`](crate::Store::report_facts) in one scan of the table (schema 8; a
//! `GROUP BY` index before).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::{corrupt_value, nanos, sql_err};
use crate::def::ProcessDef;
use crate::store::{FactRow, InstanceFacts, StoreError, StoredFacts, decode_records, decode_state};

/// Makes the fact rows of instance `id` exactly `rows` (sorted), writing only the rows that
/// change: a commit that changes no figure (a claim) only reads them, and one that changes a
/// figure (a completion: `Open` becomes `Completed`) rewrites that row alone, in place, so that
/// the entries of the other rows in the `GROUP BY` index (scattered over the index by process,
/// kind and start) are not written again. A row's `seq` only tells an instance's rows apart. A
/// new instance (`fresh`) has none stored.
pub(super) fn replace(
    conn: &Connection,
    id: i64,
    process: &str,
    started_at: i64,
    fresh: bool,
    rows: &[FactRow],
) -> rusqlite::Result<()> {
    let mut stored: Vec<(i64, FactRow)> = if fresh {
        Vec::new()
    } else {
        conn.prepare_cached(
            "SELECT seq, kind, subject, n, till FROM report_facts WHERE instance = ?1",
        )?
        .query_map([id], |row| {
            Ok((
                row.get(0)?,
                FactRow {
                    kind: row.get(1)?,
                    subject: row.get(2)?,
                    n: row.get(3)?,
                    till: row.get(4)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let mut next = stored.iter().map(|(seq, _)| seq + 1).max().unwrap_or(0);
    stored.sort_by(|a, b| a.1.cmp(&b.1));
    // Both lists sorted: walk them together; what is in one only is gone or added.
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut s, mut r) = (stored.iter().peekable(), rows.iter().peekable());
    loop {
        match (s.peek(), r.peek()) {
            (None, None) => break,
            (Some((seq, _)), None) => {
                gone.push(*seq);
                s.next();
            }
            (None, Some(row)) => {
                added.push(*row);
                r.next();
            }
            (Some((seq, old)), Some(row)) => match old.cmp(row) {
                std::cmp::Ordering::Equal => {
                    s.next();
                    r.next();
                }
                std::cmp::Ordering::Less => {
                    gone.push(*seq);
                    s.next();
                }
                std::cmp::Ordering::Greater => {
                    added.push(*row);
                    r.next();
                }
            },
        }
    }
    let mut gone = gone.into_iter();
    for row in added {
        match gone.next() {
            Some(seq) => conn
                .prepare_cached(
                    "UPDATE report_facts SET kind = ?3, subject = ?4, n = ?5, till = ?6 \
                     WHERE instance = ?1 AND seq = ?2",
                )?
                .execute(params![id, seq, row.kind, row.subject, row.n, row.till])?,
            None => {
                let seq = next;
                next += 1;
                conn.prepare_cached(
                    "INSERT INTO report_facts (instance, seq, process, started_at, kind, subject, n, till) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    id,
                    seq,
                    process,
                    started_at,
                    row.kind,
                    row.subject,
                    row.n,
                    row.till
                ])?
            }
        };
    }
    for seq in gone {
        conn.prepare_cached("DELETE FROM report_facts WHERE instance = ?1 AND seq = ?2")?
            .execute(params![id, seq])?;
    }
    Ok(())
}

/// Schema 7 adds the table: compute the facts of every stored instance (its state and audit
/// trail decoded, on its stored definition). An instance whose definition is not stored, or no
/// longer compiles, counts as skipped; a state that does not decode fails the migration (a
/// report would fail on it too).
pub(super) fn fill(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |e| sql_err(path, e);
    let mut defs: HashMap<(String, i64), Option<Arc<ProcessDef>>> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT id, version, text FROM definitions")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let text: String = row.get(2).map_err(sql)?;
            defs.insert(
                (row.get(0).map_err(sql)?, row.get(1).map_err(sql)?),
                ProcessDef::from_yaml(&text).ok().map(Arc::new),
            );
        }
    }
    let mut select = conn
        .prepare("SELECT id, process, def_version, started_at, state FROM instances ORDER BY id")
        .map_err(sql)?;
    let mut audit = conn
        .prepare("SELECT batch FROM records WHERE instance = ?1 ORDER BY first")
        .map_err(sql)?;
    let mut rows = select.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let id: i64 = row.get(0).map_err(sql)?;
        let process: String = row.get(1).map_err(sql)?;
        let version: i64 = row.get(2).map_err(sql)?;
        let started_at: i64 = row.get(3).map_err(sql)?;
        let facts = match defs.get(&(process.clone(), version)).cloned().flatten() {
            None => InstanceFacts::skipped(),
            Some(def) => {
                let state = row.get_ref(4).map_err(sql)?;
                let state = state.as_str().map_err(|e| corrupt_value(path, id, e))?;
                let mut records = Vec::new();
                let mut batches = audit.query([id]).map_err(sql)?;
                while let Some(b) = batches.next().map_err(sql)? {
                    let text = b.get_ref(0).map_err(sql)?;
                    let text = text.as_str().map_err(|e| corrupt_value(path, id, e))?;
                    decode_records(id as u64, text, &mut records)?;
                }
                let inst = decode_state(id as u64, state, records)?;
                crate::store::facts(&def, &inst)
            }
        };
        replace(conn, id, &process, started_at, true, &facts.rows()).map_err(sql)?;
    }
    Ok(())
}

/// The sums and spans of [`Store::report_facts`](crate::Store::report_facts).
pub(super) fn read(
    conn: &Connection,
    path: &Path,
    process: Option<&str>,
    since: Option<DateTime<Utc>>,
    key: Option<&str>,
) -> Result<StoredFacts, StoreError> {
    let sql = |e| sql_err(path, e);
    let since = since.map(nanos);
    let mut out = StoredFacts::default();
    // One scan of the table, summed here (schema 8 dropped the `GROUP BY` index, which every
    // completion wrote at two places; SQLite would sort the rows to group them).
    let mut stmt = conn
        .prepare_cached(
            "SELECT process, kind, subject, n, till, started_at FROM report_facts \
             WHERE (?1 IS NULL OR process = ?1) AND (?2 IS NULL OR started_at >= ?2)",
        )
        .map_err(sql)?;
    let mut sums = Sums::default();
    // The cycles (the end a `Completed` row carries) after the other spans, as before.
    let mut cycles: Vec<(String, i64, i64)> = Vec::new();
    let mut rows = stmt.query(params![process, since]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let text = |i: usize| -> Result<&str, StoreError> {
            let value = row.get_ref(i).map_err(sql)?;
            value.as_str().map_err(|e| sql(e.into()))
        };
        let kind: i64 = row.get(1).map_err(sql)?;
        let n: i64 = row.get(3).map_err(sql)?;
        if kind < 100 {
            sums.add(text(0)?, kind, text(2)?, n);
            if kind == crate::store::Fact::Completed.code()
                && let Some(till) = row.get::<_, Option<i64>>(4).map_err(sql)?
            {
                cycles.push((text(0)?.to_owned(), row.get(5).map_err(sql)?, till));
            }
        } else if let Some(till) = row.get::<_, Option<i64>>(4).map_err(sql)? {
            out.span(text(0)?.to_owned(), kind, text(2)?.to_owned(), n, till);
        }
    }
    for (process, kind, subject, n) in sums.into_sorted() {
        out.count(process, kind, subject, n);
    }
    for (process, from, till) in cycles {
        out.span(process, 100, String::new(), from, till);
    }
    let Some(key) = key else {
        return Ok(out);
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT k.value, f.process, f.kind, sum(f.n) FROM keys k \
             JOIN report_facts f ON f.instance = k.instance \
             WHERE k.name = ?3 AND f.kind IN (2, 3, 4, 11) \
             AND (?1 IS NULL OR f.process = ?1) AND (?2 IS NULL OR f.started_at >= ?2) \
             GROUP BY k.value, f.process, f.kind",
        )
        .map_err(sql)?;
    let mut rows = stmt.query(params![process, since, key]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let kind: i64 = row.get(2).map_err(sql)?;
        if let Some(fact) = crate::store::Fact::from_code(kind) {
            out.key_counts.push((
                row.get(0).map_err(sql)?,
                row.get(1).map_err(sql)?,
                fact,
                row.get(3).map_err(sql)?,
            ));
        }
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT k.value, f.started_at, f.till FROM keys k \
             JOIN report_facts f ON f.instance = k.instance \
             WHERE k.name = ?3 AND f.kind = 2 AND f.till IS NOT NULL \
             AND (?1 IS NULL OR f.process = ?1) AND (?2 IS NULL OR f.started_at >= ?2)",
        )
        .map_err(sql)?;
    let mut rows = stmt.query(params![process, since, key]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let from: i64 = row.get(1).map_err(sql)?;
        let to: i64 = row.get(2).map_err(sql)?;
        out.key_cycles.push((
            row.get(0).map_err(sql)?,
            crate::store::instant(from),
            crate::store::instant(to),
        ));
    }
    Ok(out)
}

/// Counts summed by (process, kind, subject), without allocating per row: the names are kept
/// once each.
#[derive(Default)]
struct Sums {
    processes: HashMap<String, usize>,
    subjects: HashMap<String, usize>,
    sums: HashMap<(usize, i64, usize), i64>,
}

impl Sums {
    fn add(&mut self, process: &str, kind: i64, subject: &str, n: i64) {
        let p = intern(&mut self.processes, process);
        let s = intern(&mut self.subjects, subject);
        *self.sums.entry((p, kind, s)).or_insert(0) += n;
    }

    /// `(process, kind, subject, sum)` in that order, as `GROUP BY` gave them.
    fn into_sorted(self) -> Vec<(String, i64, String, i64)> {
        let names = |map: HashMap<String, usize>| {
            let mut names = vec![String::new(); map.len()];
            for (name, i) in map {
                names[i] = name;
            }
            names
        };
        let (processes, subjects) = (names(self.processes), names(self.subjects));
        let mut out: Vec<(String, i64, String, i64)> = self
            .sums
            .into_iter()
            .map(|((p, kind, s), n)| (processes[p].clone(), kind, subjects[s].clone(), n))
            .collect();
        out.sort();
        out
    }
}

fn intern(map: &mut HashMap<String, usize>, name: &str) -> usize {
    if let Some(&i) = map.get(name) {
        return i;
    }
    let i = map.len();
    map.insert(name.to_owned(), i);
    i
}
