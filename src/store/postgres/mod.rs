//! [`PostgresStore`]: a store on a PostgreSQL server, shared by any number of engines
//! (replicas) on any number of hosts.
//!
//! Layout (`schema.rs`, `v1.sql`): one row per instance (its state as JSON, without the audit
//! trail, its earliest due timer and the lease on it), one row per commit in `procflow_records`,
//! the definitions' YAML texts, the business keys each instance holds, the kept and unmatched
//! messages, and the sequence instance ids come from. `conn.rs` connects, pools connections,
//! runs one transaction per call and types the server's failures.

mod conn;
mod facts;
mod ops;
pub(crate) mod schema;
mod text;
mod wake;

use chrono::{DateTime, Utc};
use postgres::types::ToSql;

use super::{
    ANY_OFFER, Commit, Offer, Store, StoreError, StoredDef, StoredInstance, decode_message,
    decode_records, decode_state, encode_message,
};
use crate::ids::{DefKey, InstanceId, RoleId};
use crate::model::{ParkedMessage, Record};
use conn::{Conn, Fail, Outcome, Pool, Server};

/// A store on a PostgreSQL server (crate feature `postgres`), shared safely by threads, by
/// processes and by hosts: every engine on the same database sees every instance it stores.
///
/// ```no_run
/// use procflow::PostgresStore;
/// let store = PostgresStore::connect("postgres://procflow:secret@db.internal:5432/procflow")?;
/// # Ok::<(), procflow::StoreError>(())
/// ```
///
/// - **Commits**: each [`Store::commit`] is one transaction, conditional on the version the call
///   read (an `UPDATE … WHERE row_version = $read`); a commit another engine overtook fails with
///   [`StoreError::Conflict`] and stores nothing. A commit returns once the server has committed
///   it, with the server's own durability (`synchronous_commit`, on by default: in the
///   write-ahead log on the server's disk).
/// - **A lost connection**: a call whose connection breaks fails with
///   [`StoreError::ConnectionLost`] (retryable) and stores nothing; the pool's idle
///   connections are dropped and the next call connects anew. When the connection breaks during
///   the `COMMIT` itself, the store reads the instance's version back on a new connection: a
///   commit found stored returns `Ok`, one found absent fails with `ConnectionLost`; when the
///   server cannot be asked either (it is down), the call fails with `ConnectionLost` and the
///   commit may be stored: the engine's next call on the instance then conflicts and reads it
///   again, so nothing is overwritten.
/// - **Other failures** are typed and name the server and the database:
///   [`StoreError::Unreachable`], [`StoreError::Denied`], [`StoreError::ServerFull`],
///   [`StoreError::ForeignDatabase`] (another application's database is left untouched),
///   [`StoreError::NewerDatabaseSchema`], [`StoreError::Server`].
/// - **Ids** come from the sequence `procflow_ids`: never handed out twice, across engines.
/// - **Due timers** are claimed with a lease ([`Store::claim_due`]), so that among the engines
///   sharing the database one fires each timer.
pub struct PostgresStore {
    server: Server,
    pool: Pool,
    /// Who this handle is in timer claims: the process and a per-process counter.
    me: String,
    /// How long a commit holds the follow-ups it leaves for this handle.
    lease: std::time::Duration,
    /// What this handle shares with its listening thread (`wake.rs`).
    shared: std::sync::Arc<wake::Shared>,
    /// This handle's number in the process (for deferred commits, `ops.rs`).
    handle: u64,
    /// The definitions commits compute report facts with.
    defs: super::DefCache,
    /// The commits waiting to be written in a group (`ops.rs`).
    group: super::group::Queue<std::sync::Arc<ops::Row>, ops::Verdict>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("server", &self.server.name)
            .field("database", &self.server.database)
            .finish_non_exhaustive()
    }
}

/// Advisory lock key serialising id reservations (`PFlw` + 2).
const IDS_LOCK: i64 = 0x5046_6C77_0002;

impl PostgresStore {
    /// Connects to the database `url` names (`postgres://user:password@host:port/database`, or
    /// `postgres:///database?host=/run/postgresql` for a Unix socket, or the key=value form),
    /// creating the procflow schema in an empty database and migrating an older one.
    ///
    /// # Errors
    /// [`StoreError::Unreachable`] (nothing listens, the name does not resolve),
    /// [`StoreError::Denied`] (a wrong password, a missing database), [`StoreError::ForeignDatabase`]
    /// (another application's tables: nothing is written), [`StoreError::NewerDatabaseSchema`],
    /// [`StoreError::Server`] for a URL that does not parse or any other failure.
    pub fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let server = Server::parse(url)?;
        let (first, current) = conn::where_it_may_block(|| {
            let mut first = server.connect()?;
            schema::prepare(&mut first.client, &server)?;
            let current: String = first
                .client
                .query_one("SELECT current_schema()::text", &[])
                .and_then(|row| row.try_get(0))
                .map_err(|e| server.err(e))?;
            Ok::<_, StoreError>((first, current))
        })?;
        static HANDLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = HANDLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let me = format!(
            "{}:{}:{n}:{}",
            host.trim(),
            std::process::id(),
            nanos(Utc::now())
        );
        Ok(PostgresStore {
            pool: Pool::new(first),
            server,
            me,
            lease: std::time::Duration::from_secs(30),
            shared: std::sync::Arc::new(wake::Shared::new(&current)),
            handle: n + 1,
            defs: super::DefCache::default(),
            group: super::group::Queue::new(ops::GROUP_LEADERS, ops::GROUP_MAX),
        })
    }

    /// How long a commit that leaves follow-ups holds them for this store handle before
    /// another handle may claim and run them ([`Store::claim_outbox`]): its engine runs them
    /// right after the commit, so only a handle whose engine died lets a lease run out.
    /// 30 s unless set.
    #[must_use]
    pub fn with_lease(mut self, lease: std::time::Duration) -> PostgresStore {
        self.lease = lease;
        self
    }

    /// The server, as errors name it (`host:port`, or the socket's folder and port).
    pub fn server(&self) -> &str {
        &self.server.name
    }

    /// The database.
    pub fn database(&self) -> &str {
        &self.server.database
    }

    fn write<T: Send>(
        &self,
        f: impl FnMut(&mut Conn) -> Result<T, Fail> + Send,
    ) -> Result<T, StoreError> {
        self.pool
            .transaction(&self.server, false, f)
            .map_err(Outcome::into_error)
    }

    fn read_tx<T: Send>(
        &self,
        f: impl FnMut(&mut Conn) -> Result<T, Fail> + Send,
    ) -> Result<T, StoreError> {
        self.pool
            .transaction(&self.server, true, f)
            .map_err(Outcome::into_error)
    }

    /// Rows `(id, version, state)` of a query, with their audit trails (one more query).
    fn with_audit(
        &self,
        conn: &mut Conn,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<StoredInstance>, Fail> {
        let stmt = conn.statement(sql)?;
        let rows = conn.client.query(&stmt, params)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut heads = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            let state: &str = row.try_get(2)?;
            ids.push(id);
            heads.push((id, version, state));
        }
        let mut audits: std::collections::HashMap<i64, Vec<Record>> =
            std::collections::HashMap::with_capacity(ids.len());
        if !ids.is_empty() {
            let stmt = conn.statement(
                "SELECT instance, batch FROM procflow_records WHERE instance = ANY($1) \
                 ORDER BY instance, first",
            )?;
            for row in conn.client.query(&stmt, &[&ids])? {
                let id: i64 = row.try_get(0)?;
                let batch: &str = row.try_get(1)?;
                decode_records(id as u64, batch, audits.entry(id).or_default())
                    .map_err(|e| self.locate(e))?;
            }
        }
        for (id, version, state) in heads {
            out.push(self.instance(id, version, state, audits.remove(&id).unwrap_or_default())?);
        }
        Ok(out)
    }

    /// [`PostgresStore::instance`] with its audit trail decoded from its batches, in order.
    fn with_batches(
        &self,
        id: i64,
        version: i64,
        state: &str,
        batches: &[String],
    ) -> Result<StoredInstance, StoreError> {
        let mut audit = Vec::new();
        for batch in batches {
            decode_records(id as u64, batch, &mut audit).map_err(|e| self.locate(e))?;
        }
        self.instance(id, version, state, audit)
    }

    fn instance(
        &self,
        id: i64,
        version: i64,
        state: &str,
        audit: Vec<Record>,
    ) -> Result<StoredInstance, StoreError> {
        let version = u64::try_from(version).map_err(|_| {
            self.server
                .decode(format!("instance i{id}"), "a negative version")
        })?;
        let instance = decode_state(id as u64, state, audit).map_err(|e| self.locate(e))?;
        Ok(StoredInstance { instance, version })
    }

    fn locate(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Decode { what, detail } => self.server.decode(what, detail),
            other => other,
        }
    }

    /// After a `COMMIT` whose outcome is unknown: whether `commit` is stored, read back on a
    /// new connection (tried for a few seconds).
    fn resolve(
        &self,
        commit: &Commit<'_>,
        state: &str,
        lost: StoreError,
    ) -> Result<(), StoreError> {
        let id = commit.instance.id().get() as i64;
        let expect = commit.new_version() as i64;
        for attempt in 0..20u32 {
            if attempt > 0 {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            let found = self.read_tx(|conn| {
                let stmt = conn.statement(
                    "SELECT row_version, state = $2 FROM procflow_instances WHERE id = $1",
                )?;
                let row = conn.client.query_opt(&stmt, &[&id, &state])?;
                Ok(match row {
                    Some(row) => Some((row.try_get::<_, i64>(0)?, row.try_get::<_, bool>(1)?)),
                    None => None,
                })
            });
            match found {
                Ok(Some((version, same))) if version == expect && same => return Ok(()),
                Ok(_) => {
                    return Err(self
                        .server
                        .lost(format!("{lost}; the commit was found not stored")));
                }
                Err(e) if e.is_retryable() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(self.server.lost(format!(
            "{lost}; the server could not be asked whether the commit was stored: \
             the engine's next call on instance {} reads it again",
            commit.instance.id()
        )))
    }
}

fn ms(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn ids_of(rows: Vec<postgres::Row>) -> Result<Vec<(InstanceId, u64)>, Fail> {
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        out.push((InstanceId(id as u64), version as u64));
    }
    Ok(out)
}

impl Store for PostgresStore {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        let version = i64::from(def.key.version);
        self.write(|conn| {
            let stmt = conn.statement(
                "INSERT INTO procflow_definitions (id, version, text) VALUES ($1, $2, $3) \
                 ON CONFLICT (id, version) DO NOTHING",
            )?;
            conn.client
                .execute(&stmt, &[&def.key.id, &version, &def.text])?;
            let stmt = conn.statement(
                "SELECT text = $3 FROM procflow_definitions WHERE id = $1 AND version = $2",
            )?;
            let same: bool = conn
                .client
                .query_one(&stmt, &[&def.key.id, &version, &def.text])?
                .try_get(0)?;
            if same {
                Ok(())
            } else {
                Err(Fail::Store(StoreError::DefinitionChanged {
                    key: def.key.clone(),
                }))
            }
        })
    }

    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        self.read_tx(|conn| {
            let stmt = conn.statement(
                "SELECT id, version, text FROM procflow_definitions ORDER BY id, version",
            )?;
            let mut out = Vec::new();
            for row in conn.client.query(&stmt, &[])? {
                let version: i64 = row.try_get(1)?;
                out.push(StoredDef {
                    key: DefKey {
                        id: row.try_get(0)?,
                        version: u32::try_from(version).map_err(|_| {
                            self.server.decode("a definition", "version out of range")
                        })?,
                    },
                    text: row.try_get(2)?,
                });
            }
            Ok(out)
        })
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        self.commit_one(commit)
    }

    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let Ok(key) = i64::try_from(id.get()) else {
            return Ok(None);
        };
        // One statement (its own snapshot): the row and its audit batches in order.
        let row = self.pool.read_once(&self.server, |conn| {
            let stmt = conn.statement(
                "SELECT i.row_version, i.state, \
                 ARRAY(SELECT r.batch FROM procflow_records r WHERE r.instance = i.id \
                       ORDER BY r.first) \
                 FROM procflow_instances i WHERE i.id = $1",
            )?;
            let Some(row) = conn.client.query_opt(&stmt, &[&key])? else {
                return Ok(None);
            };
            let version: i64 = row.try_get(0)?;
            let state: String = row.try_get(1)?;
            let batches: Vec<String> = row.try_get(2)?;
            Ok(Some((version, state, batches)))
        })?;
        let Some((version, state, batches)) = row else {
            return Ok(None);
        };
        self.with_batches(key, version, &state, &batches).map(Some)
    }

    fn read_many(&self, ids: &[InstanceId]) -> Result<Vec<StoredInstance>, StoreError> {
        let keys: Vec<i64> = ids
            .iter()
            .filter_map(|id| i64::try_from(id.get()).ok())
            .collect();
        self.read_tx(|conn| {
            self.with_audit(
                conn,
                "SELECT id, row_version, state FROM procflow_instances WHERE id = ANY($1) \
                 ORDER BY id",
                &[&keys],
            )
        })
    }

    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.read_tx(|conn| {
            self.with_audit(
                conn,
                "SELECT id, row_version, state FROM procflow_instances WHERE running ORDER BY id",
                &[],
            )
        })
    }

    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let since_ns = since.map(nanos);
        let mut out = self.read_tx(|conn| {
            self.with_audit(
                conn,
                "SELECT id, row_version, state FROM procflow_instances \
                 WHERE ($1::text IS NULL OR process = $1) \
                 AND ($2::bigint IS NULL OR started_at >= $2)",
                &[&process, &since_ns],
            )
        })?;
        out.retain(|s| since.is_none_or(|at| s.instance.started_at() >= at));
        out.sort_by_key(|s| (s.instance.started_at(), s.instance.id()));
        Ok(out)
    }

    fn report_facts(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
        key: Option<&str>,
    ) -> Result<Option<super::StoredFacts>, StoreError> {
        let since = since.map(nanos);
        self.read_tx(|conn| facts::read(conn, process, since, key).map(Some))
    }

    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        self.pool.read_once(&self.server, |conn| {
            let stmt = conn.statement(
                "SELECT id, row_version FROM procflow_instances \
                 WHERE running AND ($1::text IS NULL OR process = $1) ORDER BY id",
            )?;
            ids_of(conn.client.query(&stmt, &[&process])?)
        })
    }

    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let now = now.timestamp_millis();
        self.pool.read_once(&self.server, |conn| {
            let stmt = conn.statement(
                "SELECT id, row_version FROM procflow_instances \
                 WHERE running AND next_due IS NOT NULL AND next_due <= $1 ORDER BY id",
            )?;
            ids_of(conn.client.query(&stmt, &[&now])?)
        })
    }

    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.read_tx(|conn| {
            self.with_audit(
                conn,
                "SELECT id, row_version, state FROM procflow_instances \
                 WHERE outbox_until IS NOT NULL \
                 AND (state::jsonb #> '{outbox,pending,0}') IS NOT NULL ORDER BY id",
                &[],
            )
        })
    }

    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        let Ok(count) = i64::try_from(count.max(1)) else {
            return Err(StoreError::Server {
                server: self.server.name.clone(),
                database: self.server.database.clone(),
                detail: format!("cannot reserve {count} ids"),
            });
        };
        self.write(|conn| {
            // Consecutive ids, with the other reservers (of one id or of many) kept out
            // between reading the sequence and moving it on.
            let lock = conn.statement("SELECT pg_advisory_xact_lock($1)")?;
            conn.client.execute(&lock, &[&IDS_LOCK])?;
            let next = conn.statement("SELECT nextval('procflow_ids')")?;
            let first: i64 = conn.client.query_one(&next, &[])?.try_get(0)?;
            if count > 1 {
                let set = conn.statement("SELECT setval('procflow_ids', $1)")?;
                conn.client.execute(&set, &[&(first + count - 1)])?;
            }
            Ok(first.max(1) as u64)
        })
    }

    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.keyed(
            "SELECT instance FROM procflow_keys WHERE name = $1 AND value = $2 ORDER BY instance",
            key,
            value,
        )
    }

    fn running_by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.keyed(
            "SELECT k.instance FROM procflow_keys k JOIN procflow_instances i ON i.id = k.instance \
             WHERE k.name = $1 AND k.value = $2 AND i.running ORDER BY k.instance",
            key,
            value,
        )
    }

    fn read_running_by_key(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<Vec<StoredInstance>>, StoreError> {
        // One statement (its own snapshot): the rows and their audit batches in order.
        let rows = self.pool.read_once(&self.server, |conn| {
            let stmt = conn.statement(
                "SELECT i.id, i.row_version, i.state, \
                 ARRAY(SELECT r.batch FROM procflow_records r WHERE r.instance = i.id \
                       ORDER BY r.first) \
                 FROM procflow_keys k JOIN procflow_instances i ON i.id = k.instance \
                 WHERE k.name = $1 AND k.value = $2 AND i.running ORDER BY i.id",
            )?;
            let mut out = Vec::new();
            for row in conn.client.query(&stmt, &[&key, &text::stored(value)])? {
                let id: i64 = row.try_get(0)?;
                let version: i64 = row.try_get(1)?;
                let state: String = row.try_get(2)?;
                let batches: Vec<String> = row.try_get(3)?;
                out.push((id, version, state, batches));
            }
            Ok(out)
        })?;
        rows.iter()
            .map(|(id, version, state, batches)| self.with_batches(*id, *version, state, batches))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    fn offered(&self, to: &[Offer]) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let offers: Vec<String> = to.iter().map(Offer::render).collect();
        self.offered_in(&offers, &[]).map(Some)
    }

    fn offered_anywhere(
        &self,
        roles: &[RoleId],
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let roles: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
        self.offered_in(&roles, &roles).map(Some)
    }

    fn unoffered(
        &self,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let fetch = |after: i64, limit: i64| {
            self.pool.read_once(&self.server, |conn| {
                let stmt = conn.statement(
                    "SELECT i.id, i.row_version, i.state FROM procflow_offers o \
                     JOIN procflow_instances i ON i.id = o.instance \
                     WHERE o.offer = '*' AND o.instance > $1 ORDER BY o.instance LIMIT $2",
                )?;
                let mut out = Vec::new();
                for row in conn.client.query(&stmt, &[&after, &limit])? {
                    out.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
                }
                Ok(out)
            })
        };
        crate::store::unoffered_rows(after, limit, fetch, |id, version, state| {
            self.instance(id, version, state, Vec::new())
        })
    }

    fn reoffer(&self, offers: &[(InstanceId, u64, Vec<Offer>)]) -> Result<usize, StoreError> {
        let mut ids = Vec::with_capacity(offers.len());
        let mut versions = Vec::with_capacity(offers.len());
        // Each instance's offers as one JSON array, so that the three arrays line up.
        let mut lists = Vec::with_capacity(offers.len());
        for (id, version, list) in offers {
            let (Ok(id), Ok(version)) = (i64::try_from(id.get()), i64::try_from(*version)) else {
                continue;
            };
            let rendered: Vec<String> = list.iter().map(Offer::render).collect();
            ids.push(id);
            versions.push(version);
            lists.push(serde_json::to_string(&rendered).unwrap_or_default());
        }
        let changed = self.write(|conn| {
            // Each instance still at its version and still carrying `*`: its row lists its
            // offers, `*` goes, its offers come.
            let stmt = conn.statement(
                "WITH t AS (SELECT t.id, t.v, \
                   ARRAY(SELECT jsonb_array_elements_text(t.j::jsonb)) AS offers \
                   FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS t (id, v, j)), \
                 u AS (UPDATE procflow_instances i SET offers = t.offers \
                   FROM t WHERE i.id = t.id AND i.row_version = t.v \
                   AND EXISTS (SELECT 1 FROM procflow_offers w \
                               WHERE w.offer = '*' AND w.instance = i.id) \
                   RETURNING i.id, i.offers), \
                 d AS (DELETE FROM procflow_offers \
                   WHERE offer = '*' AND instance IN (SELECT id FROM u)), \
                 n AS (INSERT INTO procflow_offers (offer, instance) \
                   SELECT o, u.id FROM u, unnest(u.offers) AS o ON CONFLICT DO NOTHING) \
                 SELECT count(*) FROM u",
            )?;
            let row = conn.client.query_one(&stmt, &[&ids, &versions, &lists])?;
            Ok(row.try_get::<_, i64>(0)?)
        })?;
        Ok(usize::try_from(changed).unwrap_or(0))
    }

    fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let now = now.timestamp_millis();
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let claimed = self.write(|conn| {
            // Leases count on the server's clock, the same for every replica; due instants on
            // the engines' clock, as `due` does.
            let stmt = conn.statement(
                "WITH server AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms), \
                 due AS (SELECT id FROM procflow_instances, server \
                   WHERE running AND next_due IS NOT NULL AND next_due <= $1 \
                   AND (claim_until IS NULL OR claim_until < server.ms OR claimed_by = $3) \
                   ORDER BY next_due LIMIT 1000 FOR UPDATE OF procflow_instances SKIP LOCKED) \
                 UPDATE procflow_instances i SET claim_until = server.ms + $2, claimed_by = $3 \
                 FROM due, server WHERE i.id = due.id RETURNING i.id, i.row_version",
            )?;
            ids_of(conn.client.query(&stmt, &[&now, &lease, &self.me])?)
        })?;
        let mut claimed = claimed;
        claimed.sort_unstable();
        Ok(Some(claimed))
    }

    fn park(&self, message: &ParkedMessage) -> Result<(), StoreError> {
        let body = encode_message(message);
        let id = message.id as i64;
        self.write(|conn| {
            let stmt = conn.statement(
                "INSERT INTO procflow_messages (id, unmatched, body) VALUES ($1, false, $2) \
                 ON CONFLICT (id) DO UPDATE SET unmatched = false, body = EXCLUDED.body",
            )?;
            conn.client.execute(&stmt, &[&id, &body])?;
            Ok(())
        })
    }

    fn settle(&self, id: u64, unmatched: Option<&ParkedMessage>) -> Result<(), StoreError> {
        let kept = id as i64;
        let record = unmatched.map(|m| (m.id as i64, encode_message(m)));
        let expired = unmatched.is_some_and(|m| m.until.is_some());
        self.write(|conn| {
            let stmt =
                conn.statement("DELETE FROM procflow_messages WHERE id = $1 AND NOT unmatched")?;
            let ended = conn.client.execute(&stmt, &[&kept])?;
            // An expired kept message another engine delivered meanwhile is not unmatched.
            if ended == 0 && expired {
                return Err(Fail::Store(StoreError::Taken { message: id }));
            }
            if let Some((id, body)) = &record {
                let stmt = conn.statement(
                    "INSERT INTO procflow_messages (id, unmatched, body) VALUES ($1, true, $2) \
                     ON CONFLICT (id) DO UPDATE SET unmatched = true, body = EXCLUDED.body",
                )?;
                conn.client.execute(&stmt, &[id, body])?;
            }
            Ok(())
        })
    }

    fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        self.messages(false)
    }

    fn claim_outbox(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.claim_left(lease)
    }

    fn next_wake(&self) -> Result<Option<super::StoreWake>, StoreError> {
        self.wake_next()
    }

    fn watch(&self, wake: super::StoreWatch) -> bool {
        self.add_watch(wake)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn defer(&self) -> bool {
        self.start_deferring();
        true
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.flush_deferred()
    }

    fn unmatched(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        self.messages(true)
    }
}

impl PostgresStore {
    /// The running instances, with their versions and in id order, that carry one of
    /// `offers`, an offer `role@unit` for one of `scoped_roles` and any unit, or the offer
    /// every query matches ([`ANY_OFFER`]). One statement. The scoped ones are a range of the
    /// offers' index each (from `role@` to `roleA`, `A` following `@`: the offers compare
    /// byte by byte, schema 6).
    fn offered_in(
        &self,
        offers: &[String],
        scoped_roles: &[String],
    ) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let offers: Vec<&str> = offers
            .iter()
            .map(String::as_str)
            .chain([ANY_OFFER])
            .collect();
        let from: Vec<String> = scoped_roles.iter().map(|r| format!("{r}@")).collect();
        let till: Vec<String> = scoped_roles.iter().map(|r| format!("{r}A")).collect();
        self.pool.read_once(&self.server, |conn| {
            let stmt = if from.is_empty() {
                conn.statement(
                    "SELECT DISTINCT i.id, i.row_version FROM procflow_offers o \
                     JOIN procflow_instances i ON i.id = o.instance \
                     WHERE o.offer = ANY ($1::text[]) AND i.running ORDER BY i.id",
                )?
            } else {
                // The instances are looked up by the ids the offers give (an array): joined,
                // the planner guesses a range of a parameter to hold a ninth of the offers and
                // scans every instance (60 ms over 200,000 for an actor offered none).
                conn.statement(
                    "SELECT id, row_version FROM procflow_instances \
                     WHERE running AND id = ANY (ARRAY( \
                      SELECT instance FROM procflow_offers WHERE offer = ANY ($1::text[]) \
                      UNION \
                      SELECT o.instance FROM unnest($2::text[], $3::text[]) AS r (lo, hi) \
                      JOIN procflow_offers o ON o.offer >= r.lo AND o.offer < r.hi)) \
                     ORDER BY id",
                )?
            };
            let rows = if from.is_empty() {
                conn.client.query(&stmt, &[&offers])?
            } else {
                conn.client.query(&stmt, &[&offers, &from, &till])?
            };
            ids_of(rows)
        })
    }

    /// The instance ids a key query (`$1` the key's name, `$2` its value) gives.
    fn keyed(
        &self,
        sql: &'static str,
        key: &str,
        value: &str,
    ) -> Result<Vec<InstanceId>, StoreError> {
        self.pool.read_once(&self.server, |conn| {
            let stmt = conn.statement(sql)?;
            let mut out = Vec::new();
            for row in conn.client.query(&stmt, &[&key, &text::stored(value)])? {
                let id: i64 = row.try_get(0)?;
                out.push(InstanceId(id as u64));
            }
            Ok(out)
        })
    }

    fn messages(&self, unmatched: bool) -> Result<Vec<ParkedMessage>, StoreError> {
        let bodies: Vec<String> = self.read_tx(|conn| {
            let stmt = conn
                .statement("SELECT body FROM procflow_messages WHERE unmatched = $1 ORDER BY id")?;
            let mut out = Vec::new();
            for row in conn.client.query(&stmt, &[&unmatched])? {
                out.push(row.try_get(0)?);
            }
            Ok(out)
        })?;
        bodies
            .iter()
            .map(|b| decode_message(b).map_err(|e| self.locate(e)))
            .collect()
    }
}
