//! The report facts of each instance ([`Fact`](crate::store::Fact)): since schema 11 a JSON
//! array in the instance's row (`facts`), written whole by every commit with the row, and read
//! by [`Store::report_facts`](crate::Store::report_facts) in one scan of `instances` (schema 7
//! to 10 kept them as rows of a table of their own, which a commit read, compared and rewrote).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::{corrupt_value, nanos, sql_err};
use crate::def::ProcessDef;
use crate::store::{FactRow, InstanceFacts, StoreError, StoredFacts, decode_records, decode_state};

/// One fact as the column keeps it: `[kind, subject, n, till]` (what schema 11's migration
/// builds with `json_array`).
type Stored = (i64, String, i64, Option<i64>);

/// The `facts` column of an instance whose facts are `rows`.
pub(super) fn encode(rows: &[FactRow]) -> String {
    crate::store::encode_facts(rows, std::borrow::Cow::Borrowed)
}

/// The facts the `facts` column at `column` of instance `id`'s `row` holds (none for `NULL`);
/// a column that does not decode is a damaged store.
fn decode(
    path: &Path,
    id: i64,
    row: &rusqlite::Row<'_>,
    column: usize,
) -> Result<Vec<Stored>, StoreError> {
    let value = row.get_ref(column).map_err(|e| sql_err(path, e))?;
    let text = value
        .as_str_or_null()
        .map_err(|e| corrupt_value(path, id, e))?;
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("the report facts of instance {id} do not decode: {e}"),
    })
}

/// A store older than schema 7 gets its facts: computed for every stored instance (its state
/// and audit trail decoded, on its stored definition). An instance whose definition is not
/// stored, or no longer compiles, counts as skipped; a state that does not decode fails the
/// migration (a report would fail on it too).
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
        .prepare("SELECT id, process, def_version, state FROM instances ORDER BY id")
        .map_err(sql)?;
    let mut audit = conn
        .prepare("SELECT batch FROM records WHERE instance = ?1 ORDER BY first")
        .map_err(sql)?;
    let mut rows = select.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let id: i64 = row.get(0).map_err(sql)?;
        let process: String = row.get(1).map_err(sql)?;
        let version: i64 = row.get(2).map_err(sql)?;
        let facts = match defs.get(&(process.clone(), version)).cloned().flatten() {
            None => InstanceFacts::skipped(),
            Some(def) => {
                let state = row.get_ref(3).map_err(sql)?;
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
        conn.prepare_cached("UPDATE instances SET facts = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, encode(&facts.rows())]))
            .map_err(sql)?;
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
    // One scan of the instances, summed here (SQLite would sort the rows to group them).
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, process, started_at, facts FROM instances \
             WHERE (?1 IS NULL OR process = ?1) AND (?2 IS NULL OR started_at >= ?2)",
        )
        .map_err(sql)?;
    let mut sums = Sums::default();
    // The cycles (the end a `Completed` row carries) after the other spans, as before.
    let mut cycles: Vec<(String, i64, i64)> = Vec::new();
    let mut rows = stmt.query(params![process, since]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let id: i64 = row.get(0).map_err(sql)?;
        let name = row.get_ref(1).map_err(sql)?;
        let name = name.as_str().map_err(|e| corrupt_value(path, id, e))?;
        let started_at: i64 = row.get(2).map_err(sql)?;
        for (kind, subject, n, till) in decode(path, id, row, 3)? {
            if kind < 100 {
                sums.add(name, kind, &subject, n);
                if kind == crate::store::Fact::Completed.code()
                    && let Some(till) = till
                {
                    cycles.push((name.to_owned(), started_at, till));
                }
            } else if let Some(till) = till {
                out.span(name.to_owned(), kind, subject, n, till);
            }
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
    // By the key's value: the instance counts, the breaches and the cycles of the instances
    // that carry it.
    let mut stmt = conn
        .prepare_cached(
            "SELECT k.value, i.id, i.process, i.started_at, i.facts FROM keys k \
             JOIN instances i ON i.id = k.instance WHERE k.name = ?3 \
             AND (?1 IS NULL OR i.process = ?1) AND (?2 IS NULL OR i.started_at >= ?2)",
        )
        .map_err(sql)?;
    let mut counts: BTreeMap<(String, String, i64), i64> = BTreeMap::new();
    let mut rows = stmt.query(params![process, since, key]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let value: String = row.get(0).map_err(sql)?;
        let id: i64 = row.get(1).map_err(sql)?;
        let name: String = row.get(2).map_err(sql)?;
        let started_at: i64 = row.get(3).map_err(sql)?;
        for (kind, _, n, till) in decode(path, id, row, 4)? {
            use crate::store::Fact::{Cancelled, Completed, KeyBreached, Open};
            let Some(fact @ (Completed | Open | Cancelled | KeyBreached)) =
                crate::store::Fact::from_code(kind)
            else {
                continue;
            };
            *counts
                .entry((value.clone(), name.clone(), kind))
                .or_insert(0) += n;
            if fact == Completed
                && let Some(till) = till
            {
                out.key_cycles.push((
                    value.clone(),
                    crate::store::instant(started_at),
                    crate::store::instant(till),
                ));
            }
        }
    }
    for ((value, name, kind), n) in counts {
        if let Some(fact) = crate::store::Fact::from_code(kind) {
            out.key_counts.push((value, name, fact, n));
        }
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
