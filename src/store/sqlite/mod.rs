//! [`SqliteStore`]: the embedded durable store, one SQLite file in write-ahead-log mode.
//!
//! Layout: one row per instance (its state as JSON, without the audit trail, and its report
//! facts, see `facts.rs`), one row per commit in `records` (the JSON array of the records the
//! commit added, appended under a sequence; the instance's row names its newest batch and each
//! batch the one before it), the definitions' YAML
//! texts, a counter for id blocks, and the business keys each instance holds (`keys`).
//! `schema.rs` recognises and migrates the file; `write.rs` commits, alone or in groups.

mod checkpoint;
mod facts;
mod file;
mod messages;
mod schema;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::group::Queue;
use super::{
    ANY_OFFER, Commit, DefCache, Offer, Store, StoreError, StoredDef, StoredFacts, StoredInstance,
    decode_records, decode_state,
};
use crate::ids::{DefKey, InstanceId, RoleId};
use crate::model::Record;
use file::{Anchor, FileId, Files};
use write::{Prepared, Writer};

/// What a successful [`Store::commit`] of a [`SqliteStore`] survives.
///
/// Both modes use SQLite's write-ahead log, and in both a crash of any kind leaves the file
/// consistent: every commit is either whole or absent, never partly stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// Every commit is on the disk (the log is fsynced) before `commit` returns: a commit that
    /// returned `Ok` survives a killed process, an operating-system crash and a power loss
    /// (as far as the disk honours fsync). SQLite's `synchronous = FULL`. The default.
    #[default]
    Full,
    /// A commit is in the operating system's cache before `commit` returns, and the log is
    /// fsynced only at checkpoints: a commit that returned `Ok` survives a killed process, but
    /// an operating-system crash or power loss may lose the commits since the last checkpoint
    /// (the store then holds an earlier consistent state). SQLite's `synchronous = NORMAL`.
    Process,
}

/// How to open a [`SqliteStore`]: the one-call paths are [`SqliteStore::open`] and
/// [`SqliteStore::create`].
///
/// ```no_run
/// use std::time::Duration;
/// use procflow::{Durability, SqliteStore};
///
/// let store = SqliteStore::options()
///     .durability(Durability::Process)
///     .busy_timeout(Duration::from_secs(1))
///     .create("procflow.db")?;
/// # Ok::<(), procflow::StoreError>(())
/// ```
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    durability: Durability,
    group_commit: bool,
    busy_timeout: Duration,
    max_size: Option<u64>,
    shared: bool,
    lease: Duration,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            durability: Durability::Full,
            group_commit: true,
            busy_timeout: Duration::from_secs(5),
            max_size: None,
            shared: false,
            lease: Duration::from_secs(30),
        }
    }
}

impl SqliteOptions {
    /// The defaults: [`Durability::Full`], group commit on, a 5 s busy timeout, no size limit.
    pub fn new() -> SqliteOptions {
        SqliteOptions::default()
    }

    /// What a commit survives. [`Durability::Full`] by default.
    pub fn durability(&mut self, durability: Durability) -> &mut SqliteOptions {
        self.durability = durability;
        self
    }

    /// Whether concurrent commits share one transaction, each in its own savepoint (`true`), or
    /// each commit is its own transaction (`false`, for comparison); see [`SqliteStore`]. This
    /// is enabled by default.
    pub fn group_commit(&mut self, on: bool) -> &mut SqliteOptions {
        self.group_commit = on;
        self
    }

    /// How long an operation waits for another process's lock before failing with
    /// [`StoreError::Locked`]. 5 seconds by default.
    pub fn busy_timeout(&mut self, timeout: Duration) -> &mut SqliteOptions {
        self.busy_timeout = timeout;
        self
    }

    /// Caps the file's size (see [`SqliteStore::limit_size`]). No limit by default.
    pub fn limit_size(&mut self, bytes: u64) -> &mut SqliteOptions {
        self.max_size = Some(bytes);
        self
    }

    /// Whether other engines (other processes) use the file while this one runs: then the
    /// store says so ([`Store::is_shared`]), and an engine on it treats it as replicas treat
    /// a PostgreSQL store: it answers about an instance from the stored version, looks a
    /// message's receivers up in the store, keeps messages for later in the store alone (each
    /// taken once, in the receiver's commit: [`Commit::takes`](crate::Commit::takes)), offers
    /// them to instances other engines started, fires only the due timers it claimed
    /// ([`Store::claim_due`]: each fires in one process), and runs the follow-ups a dead
    /// process left once their lease ran out ([`SqliteOptions::lease`],
    /// [`Store::claim_outbox`]). Each costs a read (a claim, a write) of the file that an
    /// engine alone on it spares. Off by default.
    pub fn shared(&mut self, on: bool) -> &mut SqliteOptions {
        self.shared = on;
        self
    }

    /// On a shared file: how long a commit that leaves follow-ups (the outbox) holds them for
    /// this handle before another handle may claim and run them
    /// ([`Store::claim_outbox`]). Its engine runs them right after the commit, so only a
    /// handle whose process died lets a lease run out. 30 s by default.
    pub fn lease(&mut self, lease: Duration) -> &mut SqliteOptions {
        self.lease = lease;
        self
    }

    /// Opens an existing store file, running pending migrations; see [`SqliteStore::open`].
    ///
    /// # Errors
    /// [`StoreError::Missing`] when the file does not exist; see [`SqliteStore::open`].
    pub fn open(&self, path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::with(path.as_ref(), false, self)
    }

    /// Opens a store file, creating a new store when no file exists at `path`; see
    /// [`SqliteStore::create`].
    ///
    /// # Errors
    /// See [`SqliteStore::open`].
    pub fn create(&self, path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::with(path.as_ref(), true, self)
    }
}

/// The embedded durable store: one SQLite file (plus its `-wal` and `-shm` companions while
/// open), shared safely by threads and by processes.
///
/// - **Durability**: see [`Durability`]; [`Durability::Full`] by default.
/// - **Group commit**: concurrent [`Store::commit`] calls are committed together, one
///   transaction with one savepoint per commit, so threads share the cost of a transaction
///   (and of its fsync) and a conflicting commit fails alone. A lone caller commits at once in
///   its own thread.
/// - **Reads** use their own connections and never wait behind a write.
/// - **Errors** name the file; a file locked by another process for longer than the busy
///   timeout gives [`StoreError::Locked`], a full disk (or [`SqliteStore::limit_size`])
///   [`StoreError::Full`], and in either case nothing of the failed call is stored.
/// - **Tuning**: new files use 1 KiB pages and the log is checkpointed once it reaches 32 MiB
///   (on one thread with [`Durability::Process`], about 25,000 starts per second against
///   17,000 with 4 KiB pages, in a release build on a 2-core machine); a thread of the store
///   copies the log into the file every 1,024 commits meanwhile and syncs the file, so that the
///   commit that finds the log full has little left to copy or write out (correlating on
///   1,000,000 waiting instances: 19.1 k to 20.9 k messages per second against 13.3 k to
///   14.3 k without the thread). The write connection
///   keeps a 2 MiB page cache: a larger one made commits that split B-tree pages pay a scan
///   of the whole cache (see `WRITER_CACHE_KIB`).
/// - **Timers**: due instants are kept in epoch milliseconds, rounded up, so
///   [`Store::due`] may report a timer up to a millisecond late, never early.
/// - **Its files**: every transaction checks (with a `stat` of the file and of its `-wal`,
///   about 1.3 µs together) that the path still names the file the store opened. Once the file (or its
///   log) is deleted, moved or replaced while the store is open, every later call fails,
///   with [`StoreError::Moved`], and nothing more is acknowledged: a commit to a file nobody opens again would
///   be lost at the next start. Reopen the store. The store also takes its `-wal` and `-shm`
///   files off the path (after copying the log into its file, wherever that is now), so that
///   they are never replayed into a file put at the path, and leaves them alone when they are
///   another store's.
pub struct SqliteStore {
    path: PathBuf,
    /// The files as opened, checked by every transaction.
    anchor: Anchor,
    writer: Mutex<Writer>,
    queue: Queue<Prepared, Result<(), StoreError>>,
    group: bool,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    busy_timeout: Duration,
    /// The definitions commits compute report facts with.
    defs: DefCache,
    /// Copies the log into the file in the background (`None`: no thread could start).
    checkpointer: Option<checkpoint::Checkpointer>,
    /// Other engines use the file too ([`SqliteOptions::shared`]).
    shared: bool,
    /// Who this handle is in timer claims: the process and a per-process counter.
    me: String,
    /// How long a commit holds the follow-ups it leaves, on a shared file.
    lease: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("group_commit", &self.group)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// The write-ahead log is checkpointed into the file once it reaches this many bytes
/// (measured: smaller logs checkpoint too often on the linear workload).
const CHECKPOINT_BYTES: i64 = 32 << 20;

/// The write connection's page cache, in KiB (negative: SQLite's unit for a size in KiB).
/// Small on purpose: when a commit splits a B-tree page and reorders the siblings'
/// page numbers, SQLite parks a page at the lock-byte page's number (page 1,048,577 with 1 KiB
/// pages, in `balance_nonroot`), and the end of that commit then truncates the page cache by
/// scanning its whole hash table (`pager_end_transaction` → `pcache1TruncateUnsafe`), a cost
/// that grows with the cache. Commits that insert at scattered keys (the `records` and `keys`
/// of instances updated in random order, as `--workload correlate` does) split often: with
/// 16 MiB this scan was 27% of a correlation's time on SQLite. Measured (throughput
/// `--workload correlate --instances 100000`, 2026-12-04): 2 MiB beats 16 MiB and 4 MiB;
/// the linear workload is no slower. The operating system's file cache keeps the rest warm.
/// (Measured before schema 5, which appends the records and so splits far less often.
/// Measured again 2026-12-06 with 1,000,000 waiting, one run each with a fuzzer niced beside:
/// 2 MiB 15.1 k messages/s, 16 MiB 15.8 k, 64 MiB 13.7 k: no size worth the memory.)
const WRITER_CACHE_KIB: i64 = -2_048;

impl SqliteStore {
    /// On a shared file, runs the claiming `sql` (`?1` the end of the lease, `?2` this handle,
    /// `?3` the system clock now, in epoch milliseconds; `?4` `due`, the engine's now, when
    /// given) in one write transaction: the claimed instances, with their versions, by id.
    /// `None` on a file this engine has alone.
    fn claim(
        &self,
        sql: &str,
        lease: Duration,
        due: Option<i64>,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        if !self.shared {
            return Ok(None);
        }
        let path = &self.path;
        let (wall, until) = (wall_millis(Duration::ZERO), wall_millis(lease));
        let mut claimed = self.write_with(|tx| {
            let mut stmt = tx.prepare_cached(sql).map_err(|e| sql_err(path, e))?;
            match due {
                Some(due) => id_versions(
                    &mut stmt,
                    rusqlite::params![until, self.me, wall, due],
                    path,
                ),
                None => id_versions(&mut stmt, rusqlite::params![until, self.me, wall], path),
            }
        })?;
        claimed.sort_unstable();
        Ok(Some(claimed))
    }

    /// The instance ids a key query (`?1` the key's name, `?2` its value) gives.
    fn keyed(&self, sql: &str, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        let path = &self.path;
        self.read_with(|conn| {
            let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_err(path, e))?;
            let ids = stmt
                .query_map((key, value), |row| row.get::<_, i64>(0))
                .and_then(|rows| rows.collect::<Result<Vec<i64>, _>>())
                .map_err(|e| sql_err(path, e))?;
            Ok(ids
                .into_iter()
                .filter_map(|id| u64::try_from(id).ok().map(InstanceId::new))
                .collect())
        })
    }

    /// Opens an existing store file with the default [`SqliteOptions`], running pending
    /// migrations.
    ///
    /// The file is first looked at read-only, and written only once it is known to be a
    /// procflow store: anything else (an empty file, another application's SQLite database,
    /// also an empty one, a file that is no database) is refused, and neither it nor its `-wal`
    /// and `-shm` files are changed or created.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when the file does not exist; [`StoreError::Corrupt`] when it is
    /// not a procflow store (left untouched, see above) or is damaged;
    /// [`StoreError::NewerSchema`]; [`StoreError::Locked`]; any failure of the medium.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteOptions::new().open(path)
    }

    /// Opens a store file with the default [`SqliteOptions`], creating a new store when no
    /// file exists at `path`. An existing file is opened as by [`SqliteStore::open`]: it must be
    /// a procflow store (an empty file is not one).
    ///
    /// A new store is built complete in a temporary file beside `path` and then linked to
    /// `path`, so no process ever finds a partly created store there, and two processes creating
    /// the same store at once both open the one that was linked first.
    ///
    /// # Errors
    /// See [`SqliteStore::open`].
    pub fn create(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteOptions::new().create(path)
    }

    /// Options to open a store with.
    pub fn options() -> SqliteOptions {
        SqliteOptions::new()
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Caps the file at about `bytes` (rounded down to whole pages, and never below its current
    /// size): a commit that would grow it further fails with [`StoreError::Full`] and stores
    /// nothing, as on a full disk. No limit by default. Unlike the other settings (see
    /// [`SqliteOptions`]), this one may change while the store is open: an operator who made
    /// room raises it.
    pub fn limit_size(&mut self, bytes: u64) -> &mut SqliteStore {
        let writer = self.writer.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = set_max_size(&writer.conn, bytes) {
            writer.deferred = Some(sql_err(&self.path, e));
        }
        self
    }

    fn with(path: &Path, create: bool, options: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        let absolute = std::path::absolute(&path).map_err(|e| file::io_err(&path, &e))?;
        let stat = |at: &Path| file::stat(at).map_err(|e| file::io_err(&path, &e));
        let mut meta = stat(&absolute)?;
        if meta.is_none() && create {
            // `false`: another process linked its new store first; it is opened below.
            file::create(&path, schema::initialize)?;
            meta = stat(&absolute)?;
        }
        let Some(meta) = meta else {
            return Err(StoreError::Missing { path });
        };
        let refuse = |detail: &str| StoreError::Corrupt {
            path: path.clone(),
            detail: detail.into(),
        };
        if !meta.is_file() {
            return Err(refuse("not a regular file"));
        }
        if meta.len() == 0 {
            return Err(refuse(
                "an empty file (0 bytes), not a procflow store: a new store is only created \
                 where no file exists",
            ));
        }
        let id = FileId::from_metadata(&meta);
        let files = Files::new(&path)?;
        // Read-only: a file that is not a procflow store is refused before anything writes it.
        schema::recognize(&files, options.busy_timeout)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(&files.db, flags).map_err(|e| {
                match file::stat(&files.db) {
                    Ok(None) => StoreError::Missing { path: path.clone() },
                    _ => sql_err(&path, e),
                }
            })?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| sql_err(&path, e))?;
        schema::prepare(&mut conn, &path)?;
        set_durability(&conn, options.durability).map_err(|e| sql_err(&path, e))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            CHECKPOINT_BYTES / page_size(&conn, &path)?,
        )
        .map_err(|e| sql_err(&path, e))?;
        conn.pragma_update(None, "journal_size_limit", CHECKPOINT_BYTES)
            .map_err(|e| sql_err(&path, e))?;
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)
            .map_err(|e| sql_err(&path, e))?;
        if let Some(bytes) = options.max_size {
            set_max_size(&conn, bytes).map_err(|e| sql_err(&path, e))?;
        }
        conn.set_prepared_statement_cache_capacity(32);
        // The file SQLite opened must be the one recognised: the path must still name it.
        let anchor = Anchor::new(files, id)?;
        // Its checkpoints must sync as the writer's commits do: one that did not could let the
        // writer reuse the log before the frames it copied are on the disk.
        let checkpointer = Connection::open_with_flags(&anchor.files.db, flags)
            .ok()
            .filter(|c| set_durability(c, options.durability).is_ok())
            .zip(std::fs::File::open(&anchor.files.db).ok())
            .and_then(|(conn, file)| checkpoint::Checkpointer::start(conn, file));
        let store = SqliteStore {
            writer: Mutex::new(Writer {
                conn,
                deferred: None,
            }),
            queue: Queue::new(1, usize::MAX),
            group: options.group_commit,
            readers: Mutex::new(Vec::new()),
            busy_timeout: options.busy_timeout,
            defs: DefCache::default(),
            checkpointer,
            anchor,
            path,
            shared: options.shared,
            lease: options.lease,
            me: {
                static HANDLES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = HANDLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}:{n}", std::process::id())
            },
        };
        // Open one reader now, so a file readers cannot use fails here rather than later.
        let reader = store.reader()?;
        store.put_back(reader);
        Ok(store)
    }

    /// An idle read connection, or a new one.
    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = lock(&self.readers).pop() {
            return Ok(conn);
        }
        // A new connection opens whatever the path names now: only the store's file will do.
        self.anchor.check()?;
        let path = &self.path;
        let conn = Connection::open_with_flags(
            &self.anchor.files.db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, e))?;
        if let Err(e) = self.anchor.check() {
            // Replaced between the check and the open: leave that file as it is.
            let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
            return Err(e);
        }
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| sql_err(path, e))?;
        conn.execute_batch("PRAGMA query_only = 1; PRAGMA cell_size_check = 1;")
            .map_err(|e| sql_err(path, e))?;
        conn.pragma_update(None, "cache_size", -8_192)
            .map_err(|e| sql_err(path, e))?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    fn put_back(&self, conn: Connection) {
        // A connection left inside a transaction (after an error) is dropped instead.
        if conn.is_autocommit() {
            lock(&self.readers).push(conn);
        }
    }

    /// Runs `f` in one write transaction on the writer's connection (outside group commit: for
    /// the rare writes), committed when `f` succeeds and the file is still in place.
    pub(super) fn write_with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let mut writer = write::lock(&self.writer);
        writer.ready(&self.anchor)?;
        let tx = writer
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err(path, e))?;
        let out = f(&tx)?;
        if let Err(e) = self.anchor.check() {
            drop(tx);
            self.anchor.release_log(&writer.conn);
            return Err(e);
        }
        tx.commit().map_err(|e| sql_err(path, e))?;
        Ok(out)
    }

    /// The running instances, with their versions and in id order, that carry one of
    /// `offers`, an offer `role@unit` for one of `scoped_roles` and any unit, or the offer
    /// every query matches ([`ANY_OFFER`]). One read transaction; each query walks the
    /// offers' primary key (the offers compare bytewise, so `role@…` lies between `role@` and
    /// `role` followed by `A`, the character after `@`).
    fn offered_in(
        &self,
        offers: &[String],
        scoped_roles: &[String],
    ) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let path = &self.path;
        let mut found = std::collections::BTreeMap::new();
        self.read_with(|conn| {
            let mut exact = conn
                .prepare_cached(
                    "SELECT o.instance, i.row_version FROM offers o \
                     JOIN instances i ON i.id = o.instance \
                     WHERE o.offer = ?1 AND i.running = 1",
                )
                .map_err(|e| sql_err(path, e))?;
            let mut scoped = conn
                .prepare_cached(
                    "SELECT o.instance, i.row_version FROM offers o \
                     JOIN instances i ON i.id = o.instance \
                     WHERE o.offer >= ?1 AND o.offer < ?2 AND i.running = 1",
                )
                .map_err(|e| sql_err(path, e))?;
            let mut add = |mut rows: rusqlite::Rows<'_>| -> Result<(), StoreError> {
                while let Some(row) = rows.next().map_err(|e| sql_err(path, e))? {
                    let id: i64 = row.get(0).map_err(|e| sql_err(path, e))?;
                    let version: i64 = row.get(1).map_err(|e| sql_err(path, e))?;
                    if let (Ok(id), Ok(version)) = (u64::try_from(id), u64::try_from(version)) {
                        found.insert(id, version);
                    }
                }
                Ok(())
            };
            for offer in offers.iter().map(String::as_str).chain([ANY_OFFER]) {
                add(exact.query([offer]).map_err(|e| sql_err(path, e))?)?;
            }
            for role in scoped_roles {
                let range = [format!("{role}@"), format!("{role}A")];
                add(scoped.query(range).map_err(|e| sql_err(path, e))?)?;
            }
            Ok(())
        })?;
        Ok(found
            .into_iter()
            .map(|(id, version)| (InstanceId::new(id), version))
            .collect())
    }

    /// Runs `f` in a read transaction on a read connection.
    fn read_with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.anchor.check()?;
        let mut conn = self.reader()?;
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Deferred)
                .map_err(|e| sql_err(&self.path, e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| sql_err(&self.path, e))?;
            Ok(out)
        })();
        self.put_back(conn);
        result
    }

    /// The audit trail of instance `id`, whose newest batch is `last` (schema 8): the batches
    /// are read from the newest back along their `prev` links, then decoded oldest first.
    ///
    /// A link must point to an earlier batch (a smaller sequence number) of the same instance,
    /// so a damaged chain ends, reported as corrupt, instead of looping. A batch that does not
    /// start before the later one read already was replaced by it (stores replace a batch that
    /// starts where a stored one does): it is skipped, as a store keyed by position would keep
    /// the later one alone.
    fn audit(
        &self,
        conn: &Connection,
        id: i64,
        last: Option<i64>,
    ) -> Result<Vec<Record>, StoreError> {
        let path = &self.path;
        let sql = |e| sql_err(path, e);
        let broken = |detail: String| StoreError::Corrupt {
            path: path.clone(),
            detail: format!("the audit trail of instance i{id}: {detail}"),
        };
        let mut stmt = conn
            .prepare_cached("SELECT instance, first, prev, batch FROM records WHERE seq = ?1")
            .map_err(sql)?;
        let mut batches: Vec<String> = Vec::new();
        let (mut at, mut before) = (last, i64::MAX);
        while let Some(seq) = at {
            let mut rows = stmt.query([seq]).map_err(sql)?;
            let Some(row) = rows.next().map_err(sql)? else {
                return Err(broken(format!("batch {seq} is missing")));
            };
            let instance: i64 = row.get(0).map_err(sql)?;
            let first: i64 = row.get(1).map_err(sql)?;
            let prev: Option<i64> = row.get(2).map_err(sql)?;
            if instance != id {
                return Err(broken(format!("batch {seq} is instance i{instance}'s")));
            }
            if prev.is_some_and(|p| p >= seq) {
                return Err(broken(format!("batch {seq} links to a later one")));
            }
            if first < before {
                let batch = row.get_ref(3).map_err(sql)?;
                let text = batch.as_str().map_err(|e| corrupt_value(path, id, e))?;
                batches.push(text.to_owned());
                before = first;
            }
            at = prev;
        }
        let mut audit = Vec::new();
        for text in batches.iter().rev() {
            decode_records(id as u64, text, &mut audit).map_err(|e| self.locate(e))?;
        }
        Ok(audit)
    }

    /// An instance from its row's id, version and state, and its audit trail.
    fn instance(
        &self,
        id: i64,
        version: i64,
        state: &str,
        audit: Vec<Record>,
    ) -> Result<StoredInstance, StoreError> {
        let version = u64::try_from(version).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("instance i{id} has version {version}"),
        })?;
        let instance = decode_state(id as u64, state, audit).map_err(|e| self.locate(e))?;
        Ok(StoredInstance { instance, version })
    }

    /// Names the file in a decoding error.
    fn locate(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Decode { what, detail } => StoreError::Decode {
                what: format!("{what} in {}", self.path.display()),
                detail,
            },
            other => other,
        }
    }

    /// Rows `(id, version, state, last_batch)` of a query, and their audit trails read one by
    /// one.
    fn rows_with_audit(
        &self,
        conn: &Connection,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let path = &self.path;
        let mut stmt = conn.prepare_cached(sql).map_err(|e| sql_err(path, e))?;
        let mut rows = stmt.query(params).map_err(|e| sql_err(path, e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| sql_err(path, e))? {
            let id: i64 = row.get(0).map_err(|e| sql_err(path, e))?;
            let version: i64 = row.get(1).map_err(|e| sql_err(path, e))?;
            let last: Option<i64> = row.get(3).map_err(|e| sql_err(path, e))?;
            let state = row.get_ref(2).map_err(|e| sql_err(path, e))?;
            let state = state.as_str().map_err(|e| corrupt_value(path, id, e))?;
            let audit = self.audit(conn, id, last)?;
            out.push(self.instance(id, version, state, audit)?);
        }
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        let path = &self.path;
        self.write_with(|tx| {
            let stored: Option<String> = tx
                .prepare_cached("SELECT text FROM definitions WHERE id = ?1 AND version = ?2")
                .and_then(|mut s| {
                    s.query_row((&def.key.id, def.key.version), |row| row.get(0))
                        .optional()
                })
                .map_err(|e| sql_err(path, e))?;
            match stored {
                Some(text) if text == def.text => Ok(()),
                Some(_) => Err(StoreError::DefinitionChanged {
                    key: def.key.clone(),
                }),
                None => tx
                    .prepare_cached(
                        "INSERT INTO definitions (id, version, text) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute((&def.key.id, def.key.version, &def.text)))
                    .map(|_| ())
                    .map_err(|e| sql_err(path, e)),
            }
        })
    }

    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        self.read_with(|conn| {
            let path = &self.path;
            let mut stmt = conn
                .prepare_cached("SELECT id, version, text FROM definitions ORDER BY id, version")
                .map_err(|e| sql_err(path, e))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok(StoredDef {
                        key: DefKey {
                            id: row.get(0)?,
                            version: row.get(1)?,
                        },
                        text: row.get(2)?,
                    })
                })
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(|e| sql_err(path, e))?;
            Ok(rows)
        })
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        let facts = self.defs.facts(commit.def, commit.instance, || {
            self.read_with(|conn| {
                conn.prepare_cached("SELECT text FROM definitions WHERE id = ?1 AND version = ?2")
                    .and_then(|mut s| {
                        s.query_row((&commit.def.id, commit.def.version), |row| row.get(0))
                            .optional()
                    })
                    .map_err(|e| sql_err(&self.path, e))
            })
        })?;
        // On a shared file, the follow-ups a commit leaves are this handle's for a lease.
        let outbox = self
            .shared
            .then(|| (wall_millis(self.lease), self.me.clone()));
        let item = Prepared::new(commit, &facts, &self.path, outbox)?;
        let result = if self.group {
            self.queue.commit(
                None,
                item,
                |items| {
                    let items: Vec<&Prepared> = items.iter().collect();
                    write::lock(&self.writer).commit_batch(&items, &self.anchor)
                },
                || {
                    Err(StoreError::Other {
                        path: self.path.clone(),
                        detail: "the committing thread panicked".into(),
                    })
                },
            )
        } else {
            let mut results = write::lock(&self.writer).commit_batch(&[&item], &self.anchor);
            results.pop().unwrap_or(Ok(()))
        };
        if let (Ok(()), Some(c)) = (&result, &self.checkpointer) {
            c.nudge();
        }
        result
    }

    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        let Ok(key) = i64::try_from(id.get()) else {
            return Ok(None);
        };
        self.read_with(|conn| {
            let mut found = self.rows_with_audit(
                conn,
                "SELECT id, row_version, state, last_batch FROM instances WHERE id = ?1",
                [key],
            )?;
            Ok(found.pop())
        })
    }

    fn read_many(&self, ids: &[InstanceId]) -> Result<Vec<StoredInstance>, StoreError> {
        let mut keys: Vec<i64> = ids
            .iter()
            .filter_map(|id| i64::try_from(id.get()).ok())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        // One read transaction: every instance as of one snapshot.
        self.read_with(|conn| {
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                out.extend(self.rows_with_audit(
                    conn,
                    "SELECT id, row_version, state, last_batch FROM instances WHERE id = ?1",
                    [key],
                )?);
            }
            Ok(out)
        })
    }

    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        self.read_with(|conn| {
            self.rows_with_audit(
                conn,
                "SELECT id, row_version, state, last_batch FROM instances WHERE running = 1 \
                 ORDER BY id",
                [],
            )
        })
    }

    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let mut out = self.read_with(|conn| {
            self.rows_with_audit(
                conn,
                "SELECT id, row_version, state, last_batch FROM instances \
                 WHERE (?1 IS NULL OR process = ?1) AND (?2 IS NULL OR started_at >= ?2)",
                (process, since.map(nanos)),
            )
        })?;
        // The column is clamped to the nanosecond range: the decoded instant decides.
        out.retain(|s| since.is_none_or(|at| s.instance.started_at() >= at));
        out.sort_by_key(|s| (s.instance.started_at(), s.instance.id()));
        Ok(out)
    }

    fn report_facts(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
        key: Option<&str>,
    ) -> Result<Option<StoredFacts>, StoreError> {
        self.read_with(|conn| facts::read(conn, &self.path, process, since, key).map(Some))
    }

    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let path = &self.path;
        self.read_with(|conn| {
            // The partial index `instances_running` answers without reading the states.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, row_version FROM instances \
                     WHERE running = 1 AND (?1 IS NULL OR process = ?1) ORDER BY id",
                )
                .map_err(|e| sql_err(path, e))?;
            id_versions(&mut stmt, [process], path)
        })
    }

    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        let path = &self.path;
        let mut due = self.read_with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, row_version FROM instances \
                     WHERE running = 1 AND next_due IS NOT NULL AND next_due <= ?1",
                )
                .map_err(|e| sql_err(path, e))?;
            id_versions(&mut stmt, [now.timestamp_millis()], path)
        })?;
        due.sort_unstable();
        Ok(due)
    }

    fn is_shared(&self) -> bool {
        self.shared
    }

    /// On a shared file, claims up to 1,000 instances with a timer due, the earliest first,
    /// that no other handle holds a live claim on (leases on the system clock, which the
    /// processes on one machine share); `None` on a file this engine has alone.
    fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.claim(
            "UPDATE instances SET claim_until = ?1, claimed_by = ?2 \
             WHERE id IN (SELECT id FROM instances \
               WHERE running = 1 AND next_due IS NOT NULL AND next_due <= ?4 \
               AND (claim_until IS NULL OR claim_until <= ?3 OR claimed_by = ?2) \
               ORDER BY next_due LIMIT 1000) \
             RETURNING id, row_version",
            lease,
            Some(now.timestamp_millis()),
        )
    }

    /// On a shared file, claims up to 1,000 instances whose follow-ups' lease ran out (their
    /// process died before running them); `None` on a file this engine has alone.
    fn claim_outbox(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        self.claim(
            "UPDATE instances SET outbox_until = ?1, outbox_by = ?2 \
             WHERE id IN (SELECT id FROM instances \
               WHERE outbox_until IS NOT NULL AND outbox_until <= ?3 \
               ORDER BY outbox_until LIMIT 1000) \
             RETURNING id, row_version",
            lease,
            None,
        )
    }

    fn next_wake(&self) -> Result<Option<crate::store::StoreWake>, StoreError> {
        let path = &self.path;
        // The earliest no live claim holds (claims are made on a shared file only): the
        // due index in order, to the first one.
        let wall = wall_millis(Duration::ZERO);
        let (due, lease): (Option<i64>, Option<i64>) = self.read_with(|conn| {
            let due = conn
                .prepare_cached(
                    "SELECT next_due FROM instances WHERE running = 1 AND next_due IS NOT NULL \
                     AND (claim_until IS NULL OR claim_until <= ?1) ORDER BY next_due LIMIT 1",
                )
                .and_then(|mut stmt| stmt.query_row([wall], |row| row.get(0)).optional())
                .map_err(|e| sql_err(path, e))?;
            // When the earliest lease on follow-ups runs out (leases exist on a shared file).
            let lease = conn
                .prepare_cached(
                    "SELECT min(outbox_until) FROM instances WHERE outbox_until IS NOT NULL",
                )
                .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
                .map_err(|e| sql_err(path, e))?;
            Ok((due, lease))
        })?;
        Ok(Some(crate::store::StoreWake {
            due: due.and_then(DateTime::from_timestamp_millis),
            work_in: lease.map(|at: i64| {
                Duration::from_millis(u64::try_from(at.saturating_sub(wall) + 1).unwrap_or(0))
            }),
        }))
    }

    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        let path = &self.path;
        // Only an engine that opens the store asks, so a scan is enough.
        let ids = self.read_with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM instances \
                     WHERE json_extract(state, '$.outbox.pending[0]') IS NOT NULL ORDER BY id",
                )
                .map_err(|e| sql_err(path, e))?;
            let ids = stmt
                .query_map([], |row| row.get::<_, i64>(0))
                .map_err(|e| sql_err(path, e))?
                .collect::<Result<Vec<i64>, _>>()
                .map_err(|e| sql_err(path, e))?;
            Ok(ids)
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(stored) = self.read(InstanceId::new(id as u64))? {
                out.push(stored);
            }
        }
        Ok(out)
    }

    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        let path = &self.path;
        self.write_with(|tx| {
            let next: Option<i64> = tx
                .query_row(
                    "SELECT value FROM counters WHERE name = 'next_id'",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| sql_err(path, e))?;
            let Some(next) = next else {
                return Err(StoreError::Corrupt {
                    path: path.clone(),
                    detail: "the id counter is missing".into(),
                });
            };
            let first = next.max(1);
            let Some(after) = i64::try_from(count)
                .ok()
                .and_then(|count| first.checked_add(count))
            else {
                return Err(StoreError::Other {
                    path: path.clone(),
                    detail: format!("cannot reserve {count} more ids after {first}"),
                });
            };
            tx.execute(
                "UPDATE counters SET value = ?1 WHERE name = 'next_id'",
                [after],
            )
            .map_err(|e| sql_err(path, e))?;
            // `first` is at least 1.
            Ok(first as u64)
        })
    }

    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.keyed(
            "SELECT instance FROM keys WHERE name = ?1 AND value = ?2 ORDER BY instance",
            key,
            value,
        )
    }

    fn running_by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.keyed(
            "SELECT k.instance FROM keys k JOIN instances i ON i.id = k.instance \
             WHERE k.name = ?1 AND k.value = ?2 AND i.running = 1 ORDER BY k.instance",
            key,
            value,
        )
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
        let path = &self.path;
        let fetch = |after: i64, limit: i64| {
            self.read_with(|conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT i.id, i.row_version, i.state FROM offers o \
                         JOIN instances i ON i.id = o.instance \
                         WHERE o.offer = ?1 AND o.instance > ?2 ORDER BY o.instance LIMIT ?3",
                    )
                    .map_err(|e| sql_err(path, e))?;
                stmt.query_map((ANY_OFFER, after, limit), |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .and_then(Iterator::collect::<Result<Vec<(i64, i64, String)>, _>>)
                .map_err(|e| sql_err(path, e))
            })
        };
        crate::store::unoffered_rows(after, limit, fetch, |id, version, state| {
            self.instance(id, version, state, Vec::new())
        })
    }

    fn reoffer(&self, offers: &[(InstanceId, u64, Vec<Offer>)]) -> Result<usize, StoreError> {
        self.write_with(|tx| write::reoffer(tx, offers).map_err(|e| sql_err(&self.path, e)))
    }

    fn park(&self, message: &crate::model::ParkedMessage) -> Result<(), StoreError> {
        self.park_message(message)
    }

    fn settle(
        &self,
        id: u64,
        unmatched: Option<&crate::model::ParkedMessage>,
    ) -> Result<(), StoreError> {
        self.settle_message(id, unmatched)
    }

    fn parked(&self) -> Result<Vec<crate::model::ParkedMessage>, StoreError> {
        self.messages(false)
    }

    fn unmatched(&self) -> Result<Vec<crate::model::ParkedMessage>, StoreError> {
        self.messages(true)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(c) = &mut self.checkpointer {
            c.stop();
        }
        let writer = self.writer.get_mut().unwrap_or_else(|e| e.into_inner());
        if !writer.conn.is_autocommit() {
            let _ = writer.conn.execute_batch("ROLLBACK");
        }
        // SQLite leaves the log of a moved file at the path: take it off (see `release_log`).
        if !self.anchor.file_is_here() {
            self.anchor.release_log(&writer.conn);
            return;
        }
        // The last connection to close checkpoints the log into the file and deletes the `-wal`
        // and `-shm` files by name: not when those names are another process's new ones.
        if self.anchor.may_clean_up_on_close() {
            return;
        }
        let _ = writer
            .conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
        let readers = self.readers.get_mut().unwrap_or_else(|e| e.into_inner());
        for conn in readers.iter() {
            let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Idle connections only: a poisoned pool is still a pool.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_durability(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    let level = match durability {
        Durability::Full => "FULL",
        Durability::Process => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)
}

fn set_max_size(conn: &Connection, bytes: u64) -> rusqlite::Result<()> {
    let page: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
    let pages = bytes / u64::try_from(page.max(512)).unwrap_or(4096);
    let pages = i64::try_from(pages.max(1)).unwrap_or(i64::MAX);
    conn.pragma_update(None, "max_page_count", pages)
}

fn page_size(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    let page: i64 = conn
        .pragma_query_value(None, "page_size", |row| row.get(0))
        .map_err(|e| sql_err(path, e))?;
    Ok(page.max(512))
}

/// Nanoseconds since the epoch, clamped to the range of `i64` (about the years 1677 to 2262).
fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// A due instant as stored: epoch milliseconds, rounded up so that a timer is never reported
/// due before its instant.
fn due_millis(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
}

/// Maps a SQLite failure to the store's error for the file.
fn sql_err(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked { path },
        Some(ErrorCode::DiskFull) => StoreError::Full { path },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path,
            detail: e.to_string(),
        },
        _ => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt {
                path,
                detail: e.to_string(),
            },
            e => StoreError::Other {
                path,
                detail: e.to_string(),
            },
        },
    }
}

fn corrupt_value(path: &Path, id: i64, e: rusqlite::types::FromSqlError) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("instance i{id}: {e}"),
    }
}

/// The `(id, row_version)` rows `stmt` selects with `params`, as instance ids and versions.
fn id_versions(
    stmt: &mut rusqlite::CachedStatement<'_>,
    params: impl rusqlite::Params,
    path: &Path,
) -> Result<Vec<(InstanceId, u64)>, StoreError> {
    let rows = stmt
        .query_map(params, |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| sql_err(path, e))?;
    rows.into_iter()
        .map(
            |(id, version)| match (u64::try_from(id), u64::try_from(version)) {
                (Ok(id), Ok(version)) => Ok((InstanceId(id), version)),
                _ => Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("instance {id} has version {version}"),
                }),
            },
        )
        .collect()
}

/// The system clock's instant `ahead` from now, in epoch milliseconds: what the leases of a
/// shared file count in (the processes of one machine share that clock, not their engines').
fn wall_millis(ahead: Duration) -> i64 {
    Utc::now()
        .timestamp_millis()
        .saturating_add(i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX))
}
