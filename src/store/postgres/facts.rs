//! What a report counts of each instance ([`Fact`](crate::store::Fact)): since schema 7 a JSON
//! array in the instance's row (`facts`), written by every commit's statement with the row, and
//! summed by [`Store::report_facts`](crate::Store::report_facts) with `GROUP BY` over its
//! elements (schemas 4 to 6 kept them as rows of `procflow_report_facts`).

use std::collections::HashMap;
use std::sync::Arc;

use postgres::GenericClient;

use super::Server;
use super::conn::{Conn, Fail};
use crate::def::ProcessDef;
use crate::store::{
    Fact, InstanceFacts, StoreError, StoredFacts, decode_records, decode_state, instant,
};

/// The facts of every instance as rows (`instance, process, started_at, kind, subject, n,
/// till`), for the sums below.
macro_rules! fact_rows {
    () => {
        "(SELECT i.id AS instance, i.process, i.started_at, (e->>0)::bigint AS kind, \
         e->>1 AS subject, (e->>2)::bigint AS n, (e->>3)::bigint AS till \
         FROM procflow_instances i CROSS JOIN LATERAL jsonb_array_elements(i.facts) e) f"
    };
}

/// The sums and spans of [`Store::report_facts`](crate::Store::report_facts); `since` in
/// nanoseconds.
pub(super) fn read(
    conn: &mut Conn,
    process: Option<&str>,
    since: Option<i64>,
    key: Option<&str>,
) -> Result<StoredFacts, Fail> {
    let mut out = StoredFacts::default();
    let stmt = conn.statement(concat!(
        "SELECT process, kind, subject, sum(n)::bigint FROM ",
        fact_rows!(),
        " WHERE kind < 100 AND ($1::text IS NULL OR process = $1) \
         AND ($2::bigint IS NULL OR started_at >= $2) \
         GROUP BY process, kind, subject",
    ))?;
    for row in conn.client.query(&stmt, &[&process, &since])? {
        out.count(
            row.try_get(0)?,
            row.try_get(1)?,
            super::text::read(row.try_get(2)?),
            row.try_get(3)?,
        );
    }
    let stmt = conn.statement(concat!(
        "SELECT process, kind, subject, n, till FROM ",
        fact_rows!(),
        " WHERE kind >= 100 AND ($1::text IS NULL OR process = $1) \
         AND ($2::bigint IS NULL OR started_at >= $2) \
         UNION ALL SELECT process, 100::bigint, '', started_at, till FROM ",
        fact_rows!(),
        " WHERE kind = 2 AND till IS NOT NULL AND ($1::text IS NULL OR process = $1) \
         AND ($2::bigint IS NULL OR started_at >= $2)",
    ))?;
    for row in conn.client.query(&stmt, &[&process, &since])? {
        out.span(
            row.try_get(0)?,
            row.try_get(1)?,
            super::text::read(row.try_get(2)?),
            row.try_get(3)?,
            row.try_get(4)?,
        );
    }
    let Some(key) = key else {
        return Ok(out);
    };
    let stmt = conn.statement(concat!(
        "SELECT k.value, f.process, f.kind, sum(f.n)::bigint FROM procflow_keys k JOIN ",
        fact_rows!(),
        " ON f.instance = k.instance \
         WHERE k.name = $3 AND f.kind IN (2, 3, 4, 11) \
         AND ($1::text IS NULL OR f.process = $1) AND ($2::bigint IS NULL OR f.started_at >= $2) \
         GROUP BY k.value, f.process, f.kind",
    ))?;
    for row in conn.client.query(&stmt, &[&process, &since, &key])? {
        let kind: i64 = row.try_get(2)?;
        if let Some(fact) = Fact::from_code(kind) {
            out.key_counts.push((
                super::text::read(row.try_get(0)?),
                row.try_get(1)?,
                fact,
                row.try_get(3)?,
            ));
        }
    }
    let stmt = conn.statement(concat!(
        "SELECT k.value, f.started_at, f.till FROM procflow_keys k JOIN ",
        fact_rows!(),
        " ON f.instance = k.instance \
         WHERE k.name = $3 AND f.kind = 2 AND f.till IS NOT NULL \
         AND ($1::text IS NULL OR f.process = $1) AND ($2::bigint IS NULL OR f.started_at >= $2)",
    ))?;
    for row in conn.client.query(&stmt, &[&process, &since, &key])? {
        let from: i64 = row.try_get(1)?;
        let to: i64 = row.try_get(2)?;
        out.key_cycles.push((
            super::text::read(row.try_get(0)?),
            instant(from),
            instant(to),
        ));
    }
    Ok(out)
}

/// Schema 4 adds the table (which schema 7 moves into the instances' rows): compute the facts
/// of every stored instance (its state and audit trail decoded, on its stored definition), a
/// thousand instances at a time. An instance whose definition is not stored, or no longer
/// compiles, counts as skipped; a state that does not decode fails the migration (a report
/// would fail on it too).
pub(super) fn fill(tx: &mut impl GenericClient, server: &Server) -> Result<(), StoreError> {
    let err = |e| server.err(e);
    let mut defs: HashMap<(String, i64), Option<Arc<ProcessDef>>> = HashMap::new();
    for row in tx
        .query("SELECT id, version, text FROM procflow_definitions", &[])
        .map_err(err)?
    {
        let text: &str = row.try_get(2).map_err(err)?;
        defs.insert(
            (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?),
            ProcessDef::from_yaml(text).ok().map(Arc::new),
        );
    }
    let mut after = i64::MIN;
    loop {
        let rows = tx
            .query(
                "SELECT id, process, def_version, started_at, state FROM procflow_instances \
                 WHERE id > $1 ORDER BY id LIMIT 1000",
                &[&after],
            )
            .map_err(err)?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.try_get(0).map_err(err)?;
        let ids: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let mut audits: HashMap<i64, Vec<crate::model::Record>> = HashMap::new();
        for row in tx
            .query(
                "SELECT instance, batch FROM procflow_records WHERE instance = ANY($1) \
                 ORDER BY instance, first",
                &[&ids],
            )
            .map_err(err)?
        {
            let id: i64 = row.try_get(0).map_err(err)?;
            let batch: &str = row.try_get(1).map_err(err)?;
            decode_records(id as u64, batch, audits.entry(id).or_default())
                .map_err(|e| locate(server, e))?;
        }
        let (mut instances, mut processes, mut starts) = (Vec::new(), Vec::new(), Vec::new());
        let (mut kinds, mut subjects): (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
        let mut tills: Vec<Option<i64>> = Vec::new();
        let mut counts: Vec<i64> = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(err)?;
            let process: String = row.try_get(1).map_err(err)?;
            let version: i64 = row.try_get(2).map_err(err)?;
            let started_at: i64 = row.try_get(3).map_err(err)?;
            let facts = match defs.get(&(process.clone(), version)).cloned().flatten() {
                None => InstanceFacts::skipped(),
                Some(def) => {
                    let state: &str = row.try_get(4).map_err(err)?;
                    let audit = audits.remove(&id).unwrap_or_default();
                    let inst =
                        decode_state(id as u64, state, audit).map_err(|e| locate(server, e))?;
                    crate::store::facts(&def, &inst)
                }
            };
            for r in facts.rows() {
                instances.push(id);
                processes.push(process.clone());
                starts.push(started_at);
                kinds.push(r.kind);
                subjects.push(super::text::stored(&r.subject).into_owned());
                counts.push(r.n);
                tills.push(r.till);
            }
        }
        tx.execute(
            "INSERT INTO procflow_report_facts \
             (instance, process, started_at, kind, subject, n, till) \
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
             $5::text[], $6::bigint[], $7::bigint[])",
            &[
                &instances, &processes, &starts, &kinds, &subjects, &counts, &tills,
            ],
        )
        .map_err(err)?;
    }
}

fn locate(server: &Server, e: StoreError) -> StoreError {
    match e {
        StoreError::Decode { what, detail } => server.decode(what, detail),
        other => other,
    }
}
