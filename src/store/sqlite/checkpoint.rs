//! The background checkpointer: a thread with a connection of its own that copies the
//! write-ahead log into the file while commits go on, so that the commit that finds the log
//! full (SQLite's automatic checkpoint, at [`CHECKPOINT_BYTES`](super::CHECKPOINT_BYTES)) has
//! only the last frames left to copy. On a store larger than the page cache each commit's pages
//! lie scattered over the file, and copying them back (a read of the log, a write into the
//! file, then an `fsync`) was a fifth of a commit's time on the writer's thread. The thread
//! also syncs the file after each of its checkpoints (SQLite syncs it only at one that reaches
//! the end of the log), so that the writer's sync finds few pages left to write.
//!
//! **Invariant:** the thread's connection is closed before the store's writer: the writer stays
//! the connection that closes last, and so the one that checkpoints and deletes the log.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::config::DbConfig;

/// How many commits the checkpointer lets pass between two checkpoints: about 5 MiB of log
/// for a commit of five 1 KiB pages.
const EVERY: u32 = 1024;

pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    /// Commits since the last checkpoint was asked for: counted without the lock, so that a
    /// commit pays an atomic add, and the lock only every [`EVERY`] commits.
    commits: AtomicU32,
    /// Whether the store is closing.
    stop: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // A flag: a poisoned lock still guards consistent data.
        self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Checkpointer {
    /// Starts the thread on `conn`, a connection to the store's file, and `file`, the file
    /// itself; `None` when no thread can be started (the automatic checkpoints then do all the
    /// work, as before).
    pub(super) fn start(conn: Connection, file: std::fs::File) -> Option<Checkpointer> {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("procflow-checkpoint".into())
            .spawn(move || run(&conn, &file, &theirs))
            .ok()?;
        Some(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Counts one commit; every [`EVERY`] commits the thread checkpoints.
    pub(super) fn nudge(&self) {
        if self.shared.commits.fetch_add(1, Ordering::Relaxed) + 1 == EVERY {
            // Under the lock: the thread checks the count under it before it waits.
            let _stop = self.shared.lock();
            self.shared.wake.notify_one();
        }
    }

    /// Stops the thread and closes its connection.
    pub(super) fn stop(&mut self) {
        *self.shared.lock() = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, file: &std::fs::File, shared: &Shared) {
    loop {
        let mut stop = shared.lock();
        while shared.commits.load(Ordering::Relaxed) < EVERY && !*stop {
            stop = shared.wake.wait(stop).unwrap_or_else(|e| e.into_inner());
        }
        if *stop {
            break;
        }
        shared.commits.store(0, Ordering::Relaxed);
        drop(stop);
        // Copies what it can without waiting for the writer or the readers; busy (another
        // checkpoint runs) or failing, it is asked again after the next commits.
        let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        // SQLite syncs the file only at a checkpoint that reaches the end of the log (the
        // writer's, under load): the pages copied here would all be written out then, on the
        // writer's thread. Writing them out now leaves that sync little to do.
        let _ = file.sync_data();
    }
    // Never the last connection to close: the writer checkpoints and deletes the log.
    let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
}
