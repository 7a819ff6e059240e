//! Waking replicas: `LISTEN`/`NOTIFY` on a channel of the store's schema.
//!
//! A commit that arms a timer earlier than any announced one still to come announces it
//! (`NOTIFY` with the instant); every store handle that has watchers ([`Store::watch`]) keeps
//! one connection listening on the channel and tells them. Announcing only what is earlier
//! than the announced horizon keeps `NOTIFY` (which serialises the commits that use it on the
//! server) off the hot path: a replica woken for the horizon ticks and then asks the store for
//! its next due instant ([`Store::next_wake`]), which covers the later timers.
//!
//! **Invariant:** the horizon only ever holds an instant some handle announced (or heard
//! announced); it is forgotten once an engine's clock passes it, or a second after it was set.
//!
//! [`Store::watch`]: crate::Store::watch
//! [`Store::next_wake`]: crate::Store::next_wake

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::conn::Server;
use crate::store::{StoreWake, StoreWatch};

/// No instant announced.
const NONE: i64 = i64::MAX;

/// How long an announced instant stands for the later ones, in real time, at most.
const FORGET_AFTER: Duration = Duration::from_secs(1);

/// What a store handle shares with its listening thread.
pub(super) struct Shared {
    /// The channel: `procflow_` and the schema (or a hash of a long one).
    pub(super) channel: String,
    /// The earliest announced due instant (epoch ms, the engines' clock), or [`NONE`].
    horizon: AtomicI64,
    /// When the horizon was set, in nanoseconds since `epoch`.
    horizon_set: AtomicU64,
    epoch: Instant,
    watchers: Mutex<Vec<StoreWatch>>,
    listening: AtomicBool,
    stopped: AtomicBool,
}

impl Shared {
    pub(super) fn new(schema: &str) -> Shared {
        let channel = if schema.len() <= 48
            && schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            format!("procflow_{schema}")
        } else {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            schema.hash(&mut h);
            format!("procflow_{:016x}", h.finish())
        };
        Shared {
            channel,
            horizon: AtomicI64::new(NONE),
            horizon_set: AtomicU64::new(0),
            epoch: Instant::now(),
            watchers: Mutex::new(Vec::new()),
            listening: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a commit arming a timer at `due` (epoch ms), made when the engine's clock read
    /// `now` (epoch ms, when the commit says), must announce it.
    pub(super) fn must_announce(&self, due: i64, now: Option<i64>) -> bool {
        let h = self.horizon.load(Ordering::Acquire);
        if h == NONE || due < h {
            return true;
        }
        let passed = now.is_some_and(|now| now >= h);
        let stale = self
            .elapsed()
            .saturating_sub(self.horizon_set.load(Ordering::Relaxed))
            > FORGET_AFTER.as_nanos() as u64;
        passed || stale
    }

    /// `due` was announced (by this handle: `own`, or heard from another).
    pub(super) fn announced(&self, due: i64, own: bool) {
        let mut h = self.horizon.load(Ordering::Acquire);
        loop {
            if !own && due >= h {
                return;
            }
            match self
                .horizon
                .compare_exchange(h, due, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => h = now,
            }
        }
        self.horizon_set.store(self.elapsed(), Ordering::Relaxed);
    }

    fn tell(&self, wake: StoreWake) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|w| w(wake));
    }

    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Adds a watcher, starting the listening thread when it is the first.
pub(super) fn watch(shared: &Arc<Shared>, server: &Server, wake: StoreWatch) -> bool {
    shared
        .watchers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(wake);
    if !shared.listening.swap(true, Ordering::AcqRel) {
        let (shared, server) = (Arc::clone(shared), server.clone());
        let spawned = std::thread::Builder::new()
            .name("procflow-listen".into())
            .spawn(move || listen(&shared, &server));
        if spawned.is_err() {
            return false;
        }
    }
    true
}

/// The listening thread: one connection, `LISTEN` on the channel, watchers told of each
/// announced instant; tells them to look at the store once it listens, and again after
/// reconnecting when the connection broke (what was announced meanwhile is lost). Ends when the store handle is dropped.
fn listen(shared: &Shared, server: &Server) {
    let listen = format!("LISTEN \"{}\"", shared.channel);
    while !shared.stopped() {
        let mut conn = match server.connect() {
            Ok(conn) => conn,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(250));
                continue;
            }
        };
        if conn.client.batch_execute(&listen).is_err() {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        // What was announced before this connection listened (the first time: while the
        // thread started) is not heard: the watchers look at the store now.
        shared.tell(StoreWake {
            due: None,
            work_in: Some(Duration::ZERO),
        });
        while !shared.stopped() {
            let mut notes = conn.client.notifications();
            let next = notes.timeout_iter(Duration::from_millis(250)).next();
            match next {
                Ok(Some(note)) => {
                    let Some(ms) = note
                        .payload()
                        .strip_prefix('t')
                        .and_then(|v| v.parse::<i64>().ok())
                    else {
                        continue;
                    };
                    shared.announced(ms, false);
                    shared.tell(StoreWake {
                        due: chrono::DateTime::from_timestamp_millis(ms),
                        work_in: None,
                    });
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
    }
}
