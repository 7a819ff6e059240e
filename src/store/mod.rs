//! Persistence: the [`Store`] an engine commits every call to, and the stores that ship with
//! procflow ([`MemoryStore`], and [`SqliteStore`] as the embedded durable default).
//!
//! The engine changes an instance only inside one call on one locked instance; when the call has
//! changed anything, the engine hands the store one [`Commit`] (the instance's new state, the
//! audit records the call added, its next timer instant and the version the call started from)
//! before the call returns. A store that refuses the commit makes the call fail with nothing
//! changed, in memory or in the store.
//!
//! **Versions.** Every stored instance carries a version, 1 after its start and one more per
//! commit. A commit names the version it read; a store refuses it with
//! [`StoreError::Conflict`] when the stored version is another, so two engines sharing a store
//! never overwrite each other: the second one reloads and the caller may retry.

mod facts;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod group;
mod keys;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::path::PathBuf;

use chrono::{DateTime, Utc};

#[cfg(any(feature = "tokio", feature = "postgres"))]
thread_local! {
    /// Set while a call runs where the async façade put it to block ([`may_block`]).
    static MAY_BLOCK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` marked as running where a synchronous store may block the thread: the async
/// façade's offload (a blocking-pool thread, `block_in_place`), which a store cannot tell from
/// a runtime's worker by itself.
#[cfg(feature = "tokio")]
pub(crate) fn may_block<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            MAY_BLOCK.with(|m| m.set(self.0));
        }
    }
    let _reset = Reset(MAY_BLOCK.with(|m| m.replace(true)));
    f()
}

/// Whether this thread may block in a synchronous client of its own runtime (the PostgreSQL
/// driver's): it runs no tokio runtime, or [`may_block`] marked it.
#[cfg(feature = "postgres")]
pub(crate) fn may_block_here() -> bool {
    MAY_BLOCK.with(std::cell::Cell::get) || tokio::runtime::Handle::try_current().is_err()
}

// The rows and the definition cache serve the database stores, the counts reports too.
#[cfg(feature = "sqlite")]
pub(crate) use facts::FactRow;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use facts::{DefCache, encode_facts, instant};
pub use facts::{Fact, SpanRow, StoredFacts};
#[cfg(any(feature = "sqlite", feature = "postgres", feature = "report"))]
pub(crate) use facts::{InstanceFacts, facts};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) use keys::ANY_OFFER;
pub use keys::{BusinessKey, Offer};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteOptions, SqliteStore};

use crate::ids::{DefKey, InstanceId, RoleId};
use crate::model::{Instance, ParkedMessage, Record};

/// Where an engine keeps its definitions, instances, audit trails and timers.
///
/// Implementations must be safe to call from many threads; each method is one transaction.
pub trait Store: Send + Sync {
    /// Stores a definition's YAML text under its id and version. Storing the same text again is
    /// a no-op (hosts deploy at every start).
    ///
    /// # Errors
    /// [`StoreError::DefinitionChanged`] when another text is stored under this id and version;
    /// any failure of the medium.
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError>;

    /// Every stored definition, every version, ordered by id then version.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError>;

    /// Commits one engine call's changes to one instance, atomically.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the stored version is not `commit.version`; any failure of
    /// the medium. Either way nothing of the commit is stored.
    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError>;

    /// One instance with its whole audit trail, or `None` when the store does not know it.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError>;

    /// The instances of `ids` the store knows, each once with its whole audit trail, in id order:
    /// what [`Store::read`] gives for each, in one round trip where the medium allows (a work
    /// list reads the instances offered to its actor this way). The default reads them one by
    /// one.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn read_many(&self, ids: &[InstanceId]) -> Result<Vec<StoredInstance>, StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.read(id)?);
        }
        Ok(out)
    }

    /// Every running instance with its audit trail: what an engine resumes when it opens.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn running(&self) -> Result<Vec<StoredInstance>, StoreError>;

    /// The running instances (of `process`, or of every process) with their stored versions,
    /// by id: what an engine that does not hold every instance reads to list them (work lists,
    /// [`Engine::instances`](crate::Engine::instances)) without decoding them.
    ///
    /// The default reads [`Store::running`]; the shipped stores answer from an index.
    ///
    /// # Errors
    /// A failure of the medium.
    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        Ok(self
            .running()?
            .into_iter()
            .filter(|s| process.is_none_or(|p| s.instance.def().is_some_and(|d| d.id == p)))
            .map(|s| (s.instance.id(), s.version))
            .collect())
    }

    /// Instances (running and completed) of `process` (or of every process) started at or after
    /// `since`, with their audit trails, oldest first: what reports read.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError>;

    /// What a report counts of the instances [`Store::history`] would return, summed in the
    /// store from the facts it keeps per instance ([`Fact`]): the counts by process, fact and
    /// subject, every span, and with `key`, the process-wide counts and cycles by the key's
    /// value (from the store's business-key index). `None` (the default): the store keeps no
    /// facts and a report decodes the instances instead.
    ///
    /// # Errors
    /// A failure of the medium.
    fn report_facts(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
        key: Option<&str>,
    ) -> Result<Option<StoredFacts>, StoreError> {
        let _ = (process, since, key);
        Ok(None)
    }

    /// The running instances with a timer due at or before `now`, with their stored versions.
    ///
    /// # Errors
    /// A failure of the medium.
    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError>;

    /// Every instance, running or completed, whose stored state holds follow-ups that have yet
    /// to run ([`Instance::pending`]), with its audit trail: what an engine that opens the store
    /// runs after a crash.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError>;

    /// Reserves `count` consecutive instance ids and returns the first. Ids are never handed out
    /// twice, also not to two engines sharing the store.
    ///
    /// # Errors
    /// A failure of the medium.
    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError>;

    /// The instances, running or not, holding business key `key` with the canonical value
    /// `value` ([`BusinessKey::render`]), in id order: the keys the last commit that carried
    /// [`Commit::keys`] gave each instance.
    ///
    /// # Errors
    /// A failure of the medium.
    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError>;

    /// The running instances among [`Store::by_key`]'s, in id order: where an engine looks
    /// for the receivers of a message it does not hold. It may name instances that are no
    /// longer running (the engine checks each one it reads); the default is `by_key` itself, the
    /// shipped stores leave out finished instances (a customer's history) in the query.
    ///
    /// # Errors
    /// A failure of the medium.
    fn running_by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        self.by_key(key, value)
    }

    /// The running instances among [`Store::running_by_key`]'s, each read whole (as
    /// [`Store::read`] gives it), in id order, in one round trip: what an engine sharing the
    /// store reads for the receivers of a message (it reads every candidate, held or not).
    /// `None` (the default): the engine asks `running_by_key` and reads each one.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn read_running_by_key(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<Vec<StoredInstance>>, StoreError> {
        let _ = (key, value);
        Ok(None)
    }

    /// The running instances, with their stored versions and in id order, that may have an open
    /// task offered to one of `to`: the instances the last commit carrying [`Commit::offers`]
    /// gave one of them, and those stored before the store indexed offers (which match every
    /// query until then). Where an engine that does not hold every instance, or shares the
    /// store, looks for the work list of an actor holding the roles `to` names; it checks each
    /// instance it reads, so the answer may name more than the list shows, never less.
    ///
    /// `None` (the default): the store keeps no such index, and a work list reads every
    /// running instance the engine does not hold.
    ///
    /// # Errors
    /// A failure of the medium.
    fn offered(&self, to: &[Offer]) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let _ = to;
        Ok(None)
    }

    /// [`Store::offered`] for an engine without an organisation, which cannot tell the units
    /// an actor's work list reaches: the running instances that may have an open task offered
    /// to one of `roles`, unscoped or scoped to any unit (`role` and every `role@unit`), and
    /// those stored before the store indexed offers.
    ///
    /// `None` (the default): such a work list reads every running instance the engine does not
    /// hold, when a definition scopes a role to a unit.
    ///
    /// # Errors
    /// A failure of the medium.
    fn offered_anywhere(
        &self,
        roles: &[RoleId],
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let _ = roles;
        Ok(None)
    }

    /// Up to `limit` instances, in id order after `after`, that still carry the offer every
    /// [`Store::offered`] query matches (stored before the store indexed offers, and with the
    /// same offers since): their state and stored version, **without their audit trail**. What
    /// an engine reads to give them their offers ([`Store::reoffer`],
    /// [`Engine::backfill_offers`](crate::Engine::backfill_offers)). An instance whose state
    /// does not decode is left out (it keeps the offer; a call on it says why) and the next
    /// ones are given in its place, so that damaged instances cannot stop the backfill: an
    /// empty answer means none after `after` is left to backfill.
    ///
    /// The default: none (a store that keeps no such offer).
    ///
    /// # Errors
    /// A failure of the medium.
    fn unoffered(
        &self,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        let _ = (after, limit);
        Ok(Vec::new())
    }

    /// Gives each instance listed the offers listed with it in place of the offer every query
    /// matches, where its stored version is still the one given (the offers were computed from
    /// that version) and it still carries that offer; the others are left as they are. Gives
    /// how many it changed. Versions do not change: the instance's state is the same.
    ///
    /// The default changes nothing.
    ///
    /// # Errors
    /// A failure of the medium; nothing is changed then.
    fn reoffer(&self, offers: &[(InstanceId, u64, Vec<Offer>)]) -> Result<usize, StoreError> {
        let _ = offers;
        Ok(0)
    }

    /// Keeps a message engine-wide (`keep_for`: it matched nobody) until [`Store::settle`].
    /// Keeping one with the id of a kept one replaces it.
    ///
    /// The default keeps nothing: an engine on a store that does not override these four
    /// methods forgets kept messages (and unmatched ones) when it stops.
    ///
    /// # Errors
    /// A failure of the medium.
    fn park(&self, message: &ParkedMessage) -> Result<(), StoreError> {
        let _ = message;
        Ok(())
    }

    /// Ends a kept message: taken (`unmatched: None`), or expired and recorded as unmatched
    /// (then `unmatched` is the message, kept from now on; one that was never kept, `until`
    /// `None`, need not have been kept before). In one transaction.
    ///
    /// # Errors
    /// [`StoreError::Taken`], recording nothing, when an expired message (`until` set) is kept
    /// no more: another engine sharing the store delivered it meanwhile. A failure of the
    /// medium.
    fn settle(&self, id: u64, unmatched: Option<&ParkedMessage>) -> Result<(), StoreError> {
        let _ = (id, unmatched);
        Ok(())
    }

    /// The kept messages, by id.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        Ok(Vec::new())
    }

    /// The messages recorded as unmatched, by id.
    ///
    /// # Errors
    /// A failure of the medium, or stored data that does not decode.
    fn unmatched(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        Ok(Vec::new())
    }

    /// For stores shared by several engines at once: claims, for this store handle, the
    /// running instances with a timer due at or before `now` that no other handle holds a live
    /// claim on, for `lease`, and returns them with their stored versions. A commit to an
    /// instance ends the claim on it; a claim whose lease ran out (its engine died) can be
    /// taken by another. An engine's `tick` then fires only the timers of the instances it
    /// claimed, so that each fires in one engine.
    ///
    /// `None` (the default): the store does not claim; every engine fires what is due, and a
    /// second engine firing the same timer from an older copy gets a
    /// [`StoreError::Conflict`].
    ///
    /// # Errors
    /// A failure of the medium.
    fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let _ = (now, lease);
        Ok(None)
    }

    /// For stores shared by several engines: claims, for this store handle and for `lease`,
    /// the instances whose follow-ups ([`Instance::pending`]) are left unrun by another handle
    /// (a commit that leaves follow-ups holds them for its own handle for a lease, and the
    /// commit that records them run ends it: when the lease runs out, its engine died), and
    /// returns them with their stored versions. The engine then runs them, as it does those
    /// it finds when it opens a store.
    ///
    /// `None` (the default): the store does not claim; follow-ups a crash left run when an
    /// engine next opens the store.
    ///
    /// # Errors
    /// A failure of the medium.
    fn claim_outbox(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        let _ = lease;
        Ok(None)
    }

    /// When there is next something for this engine to claim in the store ([`StoreWake`]),
    /// whichever engine armed it: asked when other engines share the store, or when the engine
    /// keeps a bounded cache and so does not hold every instance with a timer. `None` (the
    /// default): the store does not say; an engine looks at its own timers and polls.
    ///
    /// # Errors
    /// A failure of the medium.
    fn next_wake(&self) -> Result<Option<StoreWake>, StoreError> {
        Ok(None)
    }

    /// For stores shared by several engines: calls `wake` (from a thread of the store) when
    /// another engine sharing the store made something fall due sooner than the engines
    /// expected (it armed a timer earlier than any announced), and after the store lost and
    /// regained its view of the others (`StoreWake::work_in` of zero: look now). `wake`
    /// returns `false` when it no longer wants to hear. Gives whether the store will call it:
    /// `false` (the default), it never will.
    fn watch(&self, wake: StoreWatch) -> bool {
        let _ = wake;
        false
    }

    /// Whether other engines change the stored instances while this one runs (a store that
    /// replicas share): the engine then looks a message's receivers up in the store
    /// ([`Store::by_key`]) besides those it holds. `false` (the default).
    fn is_shared(&self) -> bool {
        false
    }

    /// Lets the commits this thread makes next return before they are durable, until
    /// [`Store::flush`] on the same thread: a batch of commits (a tick's firings) then waits
    /// for the disk once. Each commit is still atomic, conditional on its version and seen by
    /// other engines at once; only a crash of the medium before the flush may lose it. Gives
    /// whether the store defers (`false`, the default: every commit is durable when it
    /// returns, and `flush` does nothing).
    fn defer(&self) -> bool {
        false
    }

    /// Makes every commit this thread made since [`Store::defer`] durable, and ends deferring.
    ///
    /// # Errors
    /// A failure of the medium: the deferred commits may be lost.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a store watcher ([`Store::watch`]) is called with; it returns whether it still wants
/// to hear.
pub type StoreWatch = Box<dyn Fn(StoreWake) -> bool + Send + Sync>;

/// When a shared store next has work for an engine ([`Store::next_wake`], [`Store::watch`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreWake {
    /// The earliest timer due, by the engines' clock, that this engine may claim.
    pub due: Option<DateTime<Utc>>,
    /// How long from now until follow-ups become claimable (another engine's lease runs out);
    /// zero: now.
    pub work_in: Option<std::time::Duration>,
}

/// A definition as a store keeps it: its key and the YAML text it was compiled from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDef {
    /// Id and version.
    pub key: DefKey,
    /// The YAML text.
    pub text: String,
}

/// An instance as a store returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredInstance {
    /// The state, audit trail included.
    pub instance: Instance,
    /// The stored version: 1 after the start, one more per commit.
    pub version: u64,
}

/// One engine call's changes to one instance.
#[derive(Debug)]
pub struct Commit<'a> {
    /// The instance's new state. Stores keep its audit trail apart: `records` holds what this
    /// call added to it.
    pub instance: &'a Instance,
    /// The definition the instance runs.
    pub def: &'a DefKey,
    /// The audit records this call added, in order.
    pub records: &'a [Record],
    /// The position of `records[0]` in the instance's audit trail.
    pub first_record: usize,
    /// The version the call read: 0 for a start (the instance must not exist yet).
    pub version: u64,
    /// The earliest pending timer of the instance, if any.
    pub next_due: Option<DateTime<Utc>>,
    /// The instance's business keys ([`BusinessKey`]) when this commit changed them (a start
    /// that holds any, a call that set a key variable): the store replaces the keys it indexes
    /// for the instance with these. `None`: they did not change.
    pub keys: Option<&'a [BusinessKey]>,
    /// The roles the instance's open tasks are offered to ([`Offer`]), sorted and without
    /// repeats, when this commit changed them (a task opened, closed or escalated to another
    /// role, a scope variable set): the store replaces the offers it indexes for the instance
    /// with these, for [`Store::offered`]. `None`: they did not change.
    pub offers: Option<&'a [Offer]>,
    /// On a store shared by several engines ([`Store::is_shared`]): the id of the kept message
    /// ([`ParkedMessage`]) this commit delivers. The store removes it in the commit's
    /// transaction, and refuses the commit with [`StoreError::Taken`] when it is no longer kept
    /// (another engine delivered it, or recorded it unmatched): a kept message reaches one
    /// instance, once. Always `None` on other stores, which hear of the delivery through
    /// [`Store::settle`] after the commit.
    pub takes: Option<u64>,
}

impl Commit<'_> {
    /// The version the instance has once this commit is stored.
    pub fn new_version(&self) -> u64 {
        self.version + 1
    }
}

/// Why a store could not do what was asked. Nothing was changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "fields", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoreError {
    /// The store's file does not exist (and was not to be created).
    #[error("{}: no such store file", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// Another process holds the file locked for longer than the store waits.
    #[error("{}: the store is locked by another process", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a procflow store, or is damaged.
    #[error("{}: not a procflow store, or damaged: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file was written by a newer procflow.
    #[error("{}: schema version {found} is newer than this procflow reads ({supported})", path.display())]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The store's file (or its write-ahead log) was deleted, moved or replaced while the
    /// store had it open: its path no longer names the file the store writes to. The store
    /// refuses every further call, so that none is acknowledged and lost; reopen it.
    #[error("{}: {what} was {how} while the store had it open; reopen the store", path.display())]
    Moved {
        /// The file.
        path: PathBuf,
        /// `the store file` or `its write-ahead log (-wal file)`.
        what: &'static str,
        /// `deleted` or `replaced`.
        how: &'static str,
    },
    /// The disk (or the store's size limit) is full.
    #[error("{}: the disk is full", path.display())]
    Full {
        /// The file.
        path: PathBuf,
    },
    /// The kept message a commit delivers ([`Commit::takes`]) is kept no more: another engine
    /// sharing the store delivered it, or recorded it unmatched.
    #[error("kept message {message} was taken by another engine sharing the store")]
    Taken {
        /// The kept message's id ([`ParkedMessage::id`]).
        message: u64,
    },
    /// The stored instance has another version than the one the call read: another engine
    /// changed it.
    #[error(
        "instance {instance} changed in the store (version {found:?}, this engine read {expected})"
    )]
    Conflict {
        /// The instance.
        instance: InstanceId,
        /// The version the call read.
        expected: u64,
        /// The stored version (`None`: not stored).
        found: Option<u64>,
    },
    /// Another text is stored under this id and version.
    #[error("definition {key} is stored with another text; deploy a new version")]
    DefinitionChanged {
        /// The definition.
        key: DefKey,
    },
    /// Stored data that does not decode.
    #[error("stored {what} does not decode: {detail}")]
    Decode {
        /// What (e.g. `instance i42`).
        what: String,
        /// The decoder's message.
        detail: String,
    },
    /// Any other failure of the medium.
    #[error("{}: {detail}", path.display())]
    Other {
        /// The file (empty for an in-memory store).
        path: PathBuf,
        /// The medium's message.
        detail: String,
    },
    /// A database server could not be reached: nothing listens at the address (a refused
    /// connection, a missing socket), the name does not resolve, or the server is starting or
    /// shutting down. Nothing was changed; retry later.
    #[error("database server {server} (database {database}) cannot be reached: {detail}")]
    Unreachable {
        /// The server: `host:port` or the Unix socket's folder and port.
        server: String,
        /// The database.
        database: String,
        /// The driver's message.
        detail: String,
    },
    /// The server refused the credentials (a wrong password, an unknown role) or the role may
    /// not use the database, or the database does not exist.
    #[error("database server {server} refused access to database {database}: {detail}")]
    Denied {
        /// The server.
        server: String,
        /// The database.
        database: String,
        /// The server's message.
        detail: String,
    },
    /// The connection to the server broke during the call (the server restarted, the network
    /// failed). Nothing of the call is stored (a commit whose outcome the store could not
    /// learn by reading the stored version back is reported as this too only when it was
    /// found not stored); the call may be retried.
    #[error("lost the connection to database server {server} (database {database}): {detail}")]
    ConnectionLost {
        /// The server.
        server: String,
        /// The database.
        database: String,
        /// The driver's message.
        detail: String,
    },
    /// The server's disk is full (or a quota is reached): nothing of the call was stored.
    #[error("database server {server} (database {database}) is out of disk space: {detail}")]
    ServerFull {
        /// The server.
        server: String,
        /// The database.
        database: String,
        /// The server's message.
        detail: String,
    },
    /// The database holds another application's tables and no procflow schema: it is left
    /// untouched.
    #[error("database {database} on {server} is not a procflow store: {detail}")]
    ForeignDatabase {
        /// The server.
        server: String,
        /// The database.
        database: String,
        /// What was found.
        detail: String,
    },
    /// The database's procflow schema was written by a newer procflow: it is left untouched.
    #[error(
        "database {database} on {server}: schema version {found} is newer than this procflow \
         reads ({supported})"
    )]
    NewerDatabaseSchema {
        /// The server.
        server: String,
        /// The database.
        database: String,
        /// Its schema version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// Any other failure reported by a database server.
    #[error("database server {server} (database {database}): {detail}")]
    Server {
        /// The server.
        server: String,
        /// The database.
        database: String,
        /// The server's message.
        detail: String,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed without anyone changing anything: a
    /// server that could not be reached, or a connection lost during the call (nothing of the
    /// call was stored). A [`StoreError::Conflict`] is not: the caller must read again first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. }
                | StoreError::ConnectionLost { .. }
                | StoreError::Locked { .. }
        )
    }
}

/// The state of an instance as stores serialize it: [`Instance::encode`].
pub(crate) fn encode_state(instance: &Instance) -> String {
    instance.encode()
}

/// [`Store::unoffered`] for a database: `fetch(after, limit)` gives up to `limit` rows (id,
/// version, state) of instances carrying the offer `*` after id `after`, in id order, and
/// `decode` makes one an instance. A row that does not decode is left out (it keeps `*`; a call
/// on it says why) and the next rows are fetched in its place, so that damaged rows cannot end
/// a backfill early.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn unoffered_rows(
    after: Option<InstanceId>,
    limit: usize,
    mut fetch: impl FnMut(i64, i64) -> Result<Vec<(i64, i64, String)>, StoreError>,
    decode: impl Fn(i64, i64, &str) -> Result<StoredInstance, StoreError>,
) -> Result<Vec<StoredInstance>, StoreError> {
    let mut cursor = after.map_or(0, |id| i64::try_from(id.get()).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    while out.len() < limit {
        let wanted = i64::try_from(limit - out.len()).unwrap_or(i64::MAX);
        let rows = fetch(cursor, wanted)?;
        let Some(last) = rows.last().map(|(id, _, _)| *id) else {
            break;
        };
        cursor = last;
        out.extend(
            rows.iter()
                .filter_map(|(id, version, state)| decode(*id, *version, state).ok()),
        );
    }
    Ok(out)
}

/// Decodes what [`encode_state`] wrote and puts the audit trail back.
pub(crate) fn decode_state(
    id: u64,
    state: &str,
    audit: Vec<Record>,
) -> Result<Instance, StoreError> {
    Instance::decode(state, audit).map_err(|e| StoreError::Decode {
        what: format!("instance i{id}"),
        detail: e.to_string(),
    })
}

/// Encodes audit records as stores keep them: [`Record::encode_batch`].
/// A kept or unmatched message as stores keep it: JSON.
pub(crate) fn encode_message(message: &ParkedMessage) -> String {
    // Plain data with string keys: serializing cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

/// Decodes what [`encode_message`] wrote.
pub(crate) fn decode_message(text: &str) -> Result<ParkedMessage, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Decode {
        what: "a kept message".into(),
        detail: e.to_string(),
    })
}

pub(crate) fn encode_records(records: &[Record]) -> String {
    Record::encode_batch(records)
}

/// Decodes what [`encode_records`] wrote, appending to `into`.
pub(crate) fn decode_records(
    id: u64,
    text: &str,
    into: &mut Vec<Record>,
) -> Result<(), StoreError> {
    let records = Record::decode_batch(text).map_err(|e| StoreError::Decode {
        what: format!("audit records of instance i{id}"),
        detail: e.to_string(),
    })?;
    into.extend(records);
    Ok(())
}

/// A shared store is a store: engines (and a report) can use one store handle at once.
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn save_definition(&self, def: &StoredDef) -> Result<(), StoreError> {
        (**self).save_definition(def)
    }

    fn definitions(&self) -> Result<Vec<StoredDef>, StoreError> {
        (**self).definitions()
    }

    fn commit(&self, commit: &Commit<'_>) -> Result<(), StoreError> {
        (**self).commit(commit)
    }

    fn read(&self, id: InstanceId) -> Result<Option<StoredInstance>, StoreError> {
        (**self).read(id)
    }

    fn read_many(&self, ids: &[InstanceId]) -> Result<Vec<StoredInstance>, StoreError> {
        (**self).read_many(ids)
    }

    fn running(&self) -> Result<Vec<StoredInstance>, StoreError> {
        (**self).running()
    }

    fn running_ids(&self, process: Option<&str>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        (**self).running_ids(process)
    }

    fn history(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        (**self).history(process, since)
    }

    fn report_facts(
        &self,
        process: Option<&str>,
        since: Option<DateTime<Utc>>,
        key: Option<&str>,
    ) -> Result<Option<StoredFacts>, StoreError> {
        (**self).report_facts(process, since, key)
    }

    fn due(&self, now: DateTime<Utc>) -> Result<Vec<(InstanceId, u64)>, StoreError> {
        (**self).due(now)
    }

    fn outbox(&self) -> Result<Vec<StoredInstance>, StoreError> {
        (**self).outbox()
    }

    fn reserve_ids(&self, count: u64) -> Result<u64, StoreError> {
        (**self).reserve_ids(count)
    }

    fn by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        (**self).by_key(key, value)
    }

    fn running_by_key(&self, key: &str, value: &str) -> Result<Vec<InstanceId>, StoreError> {
        (**self).running_by_key(key, value)
    }

    fn read_running_by_key(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Option<Vec<StoredInstance>>, StoreError> {
        (**self).read_running_by_key(key, value)
    }

    fn offered(&self, to: &[Offer]) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        (**self).offered(to)
    }

    fn offered_anywhere(
        &self,
        roles: &[RoleId],
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        (**self).offered_anywhere(roles)
    }

    fn unoffered(
        &self,
        after: Option<InstanceId>,
        limit: usize,
    ) -> Result<Vec<StoredInstance>, StoreError> {
        (**self).unoffered(after, limit)
    }

    fn reoffer(&self, offers: &[(InstanceId, u64, Vec<Offer>)]) -> Result<usize, StoreError> {
        (**self).reoffer(offers)
    }

    fn park(&self, message: &ParkedMessage) -> Result<(), StoreError> {
        (**self).park(message)
    }

    fn settle(&self, id: u64, unmatched: Option<&ParkedMessage>) -> Result<(), StoreError> {
        (**self).settle(id, unmatched)
    }

    fn parked(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        (**self).parked()
    }

    fn unmatched(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        (**self).unmatched()
    }

    fn claim_due(
        &self,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        (**self).claim_due(now, lease)
    }

    fn claim_outbox(
        &self,
        lease: std::time::Duration,
    ) -> Result<Option<Vec<(InstanceId, u64)>>, StoreError> {
        (**self).claim_outbox(lease)
    }

    fn next_wake(&self) -> Result<Option<StoreWake>, StoreError> {
        (**self).next_wake()
    }

    fn watch(&self, wake: StoreWatch) -> bool {
        (**self).watch(wake)
    }

    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }

    fn defer(&self) -> bool {
        (**self).defer()
    }

    fn flush(&self) -> Result<(), StoreError> {
        (**self).flush()
    }
}
