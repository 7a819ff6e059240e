//! Reports over a database store: the figures a store sums from the facts it keeps per instance
//! (`Store::report_facts`, SQLite and PostgreSQL) are exactly those of decoding every instance
//! (`Report::from_store_decoded`), for every option (process, since, by key, a calendar), on a
//! store an engine filled: two versions of a process with deadlines, escalations, timeouts,
//! denials, overrides, a send-back, cancelled cases and business keys. The same suite runs on
//! the memory store (which keeps no facts: both ways decode) and on PostgreSQL when a server is
//! there (see `common/pg.rs`).

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use procflow::{
    Actor, BusinessCalendar, Engine, ManualClock, MemoryStore, ProcessDef, Report, ReportOptions,
    SqliteStore, Store, TaskId, Vars,
};

#[cfg(feature = "postgres")]
#[path = "common/pg.rs"]
mod pg;

/// `review` is due in 2h, escalates to `boss` an hour after the breach and times out after 6h to
/// `apologise`; the process is due in 8h. Keys: the customer.
const CLAIMS_V1: &str = r#"
id: claims
version: 1
name: Claims
name_zh: 理赔
calendar: office
roles:
  clerk: { name: Clerk, name_zh: 柜员 }
  lead: { name: Lead }
  boss: { name: Boss }
  audit: { name: Audit }
keys: [customer]
variables:
  customer: { type: string }
sla:
  due: 8h
  accountable: lead
  informed: [audit]
  escalate: [{ after: 1h, action: notify, to: boss }]
nodes:
  start: { kind: start, next: review }
  review:
    kind: user_task
    name: Review the claim
    raci: { responsible: [clerk], accountable: lead, informed: [audit] }
    due: 2h
    escalate: [{ after: 1h, action: notify, to: boss }]
    timeout: { after: 6h, to: apologise }
    next: check
  check:
    kind: user_task
    name: Check
    raci: { responsible: [lead], accountable: lead }
    send_back: [review]
    next: done
  apologise:
    kind: user_task
    name: Apologise
    raci: { responsible: [clerk], accountable: lead }
    next: done
  done: { kind: end }
"#;

/// One task; keys: the customer too.
const PLAIN: &str = r#"
id: plain
version: 1
name: Plain
roles: { r: { name: R }, a: { name: A } }
keys: [customer]
variables:
  customer: { type: string }
nodes:
  start: { kind: start, next: work }
  work: { kind: user_task, name: Work, raci: { responsible: [r], accountable: a }, next: done }
  done: { kind: end }
"#;

/// Monday 2026-01-05 09:00 UTC.
fn t0() -> DateTime<Utc> {
    "2026-01-05T09:00:00Z".parse().unwrap()
}

fn office() -> BusinessCalendar {
    BusinessCalendar::from_file("process-defs/calendars/china.yaml").unwrap()
}

fn claims_v2() -> String {
    CLAIMS_V1
        .replace("version: 1", "version: 2")
        .replace("name: Check", "name: Check again")
}

fn open_tasks(engine: &Engine, id: procflow::InstanceId) -> Vec<TaskId> {
    engine
        .tasks(id)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect()
}

fn customer(c: &str) -> Vars {
    let mut v = Vars::new();
    v.insert("customer".into(), json!(c));
    v
}

/// Drives a day of claims on an engine over `store`.
fn fill(store: Arc<dyn Store>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let mut b = Engine::builder();
    b.clock(Arc::clone(&clock)).calendar("office", office());
    let engine = b.open(store).unwrap();
    engine
        .deploy(ProcessDef::from_yaml(CLAIMS_V1).unwrap())
        .unwrap();
    engine
        .deploy(ProcessDef::from_yaml(PLAIN).unwrap())
        .unwrap();
    let at = |d: Duration| {
        clock.set(t0() + d);
        engine.tick(t0() + d);
    };
    let m = Duration::minutes;
    let ann = Actor::new("ann", ["clerk", "r"]);
    let bob = Actor::new("bob", ["clerk"]);
    let eve = Actor::new("eve", ["audit"]);
    let lena = Actor::new("lena", ["lead"]);
    let v1: Vec<_> = ["acme", "acme", "globex", "initech"]
        .iter()
        .map(|c| engine.start("claims", customer(c)).unwrap())
        .collect();
    at(m(30));
    engine.claim(open_tasks(&engine, v1[0])[0], &ann).unwrap();
    at(m(60));
    engine.claim(open_tasks(&engine, v1[1])[0], &bob).unwrap();
    assert!(
        engine
            .complete(open_tasks(&engine, v1[2])[0], &eve, Vars::new())
            .is_err()
    );
    at(m(90));
    engine
        .complete(open_tasks(&engine, v1[0])[0], &ann, Vars::new())
        .unwrap();
    // The check sends i1 back to review once.
    let check = open_tasks(&engine, v1[0])[0];
    engine
        .send_back(check, &lena, "review", "missing receipt")
        .unwrap();
    engine
        .deploy(ProcessDef::from_yaml(&claims_v2()).unwrap())
        .unwrap();
    // Left alone: its review times out (6h) to `apologise`.
    engine.start("claims", customer("hooli")).unwrap();
    let v2: Vec<_> = ["acme", "umbrella"]
        .iter()
        .map(|c| engine.start("claims", customer(c)).unwrap())
        .collect();
    at(m(120));
    at(m(180));
    at(m(210));
    engine
        .complete(open_tasks(&engine, v1[1])[0], &bob, Vars::new())
        .unwrap();
    at(m(240));
    // An override by the accountable lead.
    engine
        .complete(open_tasks(&engine, v1[2])[0], &lena, Vars::new())
        .unwrap();
    engine.cancel(v2[1], &lena, "duplicate").unwrap();
    at(m(300));
    let p: Vec<_> = ["acme", "globex"]
        .iter()
        .map(|c| engine.start("plain", customer(c)).unwrap())
        .collect();
    at(m(320));
    engine
        .complete(open_tasks(&engine, p[0])[0], &ann, Vars::new())
        .unwrap();
    for id in [v1[0], v1[1], v1[2], v2[0]] {
        for task in open_tasks(&engine, id) {
            let _ = engine.complete(task, &lena, Vars::new());
        }
    }
    at(m(360));
    at(Duration::hours(30));
}

/// Every option a report takes, each compared both ways.
fn assert_same(store: &dyn Store) {
    let options = [
        ReportOptions::default(),
        ReportOptions::default().process("claims"),
        ReportOptions::default().process("plain"),
        ReportOptions::default().since(t0() + Duration::minutes(60)),
        ReportOptions::default().by_key("customer"),
        ReportOptions::default()
            .process("claims")
            .by_key("customer")
            .since(t0() + Duration::minutes(1)),
        ReportOptions::default().calendar("office", office()),
        ReportOptions::default().by_key("nobody_has_it"),
    ];
    for options in options {
        let decoded = Report::from_store_decoded(store, &options).unwrap();
        let summed = Report::from_store(store, &options).unwrap();
        assert_eq!(summed, decoded, "{options:?}");
        assert_eq!(summed.to_csv(), decoded.to_csv());
        assert_eq!(summed.to_table(), decoded.to_table());
    }
    // Not a report of nothing: the day's figures are there.
    let all = Report::from_store(store, &ReportOptions::default().by_key("customer")).unwrap();
    let claims = all.process("claims").unwrap();
    assert_eq!(
        (claims.started, claims.cancelled, claims.versions.clone()),
        (7, 1, vec![1, 2])
    );
    assert!(claims.completed >= 2, "{claims:?}");
    assert!(claims.sla_breached >= 1, "{claims:?}");
    assert!(claims.cycle_time.count >= 2, "{claims:?}");
    let review = all.node("claims", "review").unwrap();
    assert!(review.breaches >= 1 && review.denials == 1, "{review:?}");
    assert!(review.timeouts >= 1 && review.reworks == 1, "{review:?}");
    assert!(review.waiting.count >= 3 && review.handling.count >= 2);
    assert!(all.role("claims", "boss").unwrap().escalations >= 1);
    assert_eq!(all.actor("claims", "eve").unwrap().denials, 1);
    assert!(all.actor("claims", "lena").unwrap().overrides >= 1);
    let acme = all.keys.iter().find(|k| k.value == "acme").unwrap();
    assert_eq!(acme.processes, ["claims", "plain"]);
    assert_eq!(acme.started, 4);
}

#[test]
fn memory_store_reports_the_same_both_ways() {
    let store = Arc::new(MemoryStore::new());
    fill(store.clone());
    assert!(store.report_facts(None, None, None).unwrap().is_none());
    assert_same(&*store);
}

/// Turns a store of schema 11 back into the tables of schema 10: the facts as rows of a table
/// of their own instead of a column of the instance's row.
const TO_V10: &str = "
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
INSERT INTO report_facts (instance, seq, process, started_at, kind, subject, n, till)
    SELECT i.id, j.key, i.process, i.started_at, json_extract(j.value, '$[0]'),
        json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]'), json_extract(j.value, '$[3]')
    FROM instances i, json_each(i.facts) j;
ALTER TABLE instances DROP COLUMN facts;
";

/// Turns a store of schema 10 back into the tables of schema 7: `records` with an index by
/// (instance, position) and no links, no `last_batch`, the `GROUP BY` index of the facts, no
/// offers, no timer claims or follow-up leases.
const TO_V7: &str = "
CREATE TABLE records_v7 (
    seq INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL,
    first INTEGER NOT NULL,
    batch TEXT NOT NULL
);
INSERT INTO records_v7 (seq, instance, first, batch) SELECT seq, instance, first, batch FROM records;
DROP TABLE records;
ALTER TABLE records_v7 RENAME TO records;
CREATE UNIQUE INDEX records_instance ON records (instance, first);
ALTER TABLE instances DROP COLUMN last_batch;
CREATE INDEX report_facts_groups ON report_facts (process, kind, subject, started_at, n);
DROP TABLE offers;
ALTER TABLE instances DROP COLUMN offers;
ALTER TABLE instances DROP COLUMN claim_until;
ALTER TABLE instances DROP COLUMN claimed_by;
DROP INDEX instances_outbox_lease;
ALTER TABLE instances DROP COLUMN outbox_until;
ALTER TABLE instances DROP COLUMN outbox_by;
";

/// An empty folder of this test process named after `name`, and the path of a store in it.
fn fresh_dir(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("procflow-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.db");
    (dir, path)
}

#[test]
fn sqlite_store_sums_the_figures_decoding_gives() {
    let (dir, path) = fresh_dir("store");
    let store = Arc::new(SqliteStore::create(&path).unwrap());
    fill(store.clone());
    assert!(store.report_facts(None, None, None).unwrap().is_some());
    assert_same(&*store);
    // Reopened, the facts are read back as stored.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_same(&store);
    drop(store);
    // A store of schema 10 (the facts as rows of their own) moves them into the instances'
    // rows when opened, and reports the same.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{TO_V10} UPDATE meta SET value = 10 WHERE key = 'schema_version';"
        ))
        .unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM report_facts", [], |r| r.get(0))
            .unwrap();
        assert!(rows > 0, "the facts were moved back into rows");
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_same(&store);
    drop(store);
    // A store of schema 7 (the audit batches found by an index, the facts by a `GROUP BY`
    // index) moves to schema 8 when opened, and reports the same.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{TO_V10} {TO_V7} UPDATE meta SET value = 7 WHERE key = 'schema_version';"
        ))
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_same(&store);
    drop(store);
    // A store of schema 6 (no facts) gets them from its instances when opened.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "{TO_V10} {TO_V7} DROP TABLE report_facts; \
             UPDATE meta SET value = 6 WHERE key = 'schema_version';"
        ))
        .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_same(&store);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn damaged_facts_in_a_sqlite_row_are_a_typed_error_naming_the_instance() {
    let (dir, path) = fresh_dir("damaged");
    fill(Arc::new(SqliteStore::create(&path).unwrap()));
    let id: i64 = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let id = conn
            .query_row("SELECT max(id) FROM instances", [], |r| r.get(0))
            .unwrap();
        conn.execute(
            "UPDATE instances SET facts = '[[2, \"\"' WHERE id = ?1",
            [id],
        )
        .unwrap();
        id
    };
    let store = SqliteStore::open(&path).unwrap();
    for key in [None, Some("customer")] {
        match store.report_facts(None, None, key) {
            Err(procflow::StoreError::Corrupt { path: p, detail }) => {
                assert_eq!(p, path);
                assert!(detail.contains(&format!("instance {id}")), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_store_sums_the_figures_decoding_gives() {
    let Some(server) = pg::server() else { return };
    let url = server.fresh();
    let store = Arc::new(procflow::PostgresStore::connect(&url).unwrap());
    fill(store.clone());
    assert!(store.report_facts(None, None, None).unwrap().is_some());
    assert_same(&*store);
    drop(store);
    // A database of schema 3 (no facts) gets them from its instances when a store connects.
    server
        .client(&url)
        .batch_execute(
            "ALTER TABLE procflow_instances DROP COLUMN facts; DROP TABLE procflow_offers; \
             ALTER TABLE procflow_instances DROP COLUMN offers; \
             UPDATE procflow_meta SET value = '3' WHERE key = 'schema_version';",
        )
        .unwrap();
    let store = procflow::PostgresStore::connect(&url).unwrap();
    assert_same(&store);
}
