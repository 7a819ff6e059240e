//! The store's files on disk: where they are, which files they are (so that a store notices
//! when its path no longer names the file it has open: deleted, moved or replaced), and creating
//! a new store file in one step.
//!
//! **Invariants.** The store never opens the database file with anything but SQLite: closing any
//! other descriptor of it would drop the POSIX locks SQLite's connections in this process hold on
//! it. The companions (`-wal`, `-shm`) are only ever looked at with `stat`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags};

use super::sql_err;
use crate::store::StoreError;

/// Which file a path names, as far as the platform tells: device and inode on unix; elsewhere
/// the creation time, where the platform keeps one (existence only, otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    #[cfg(unix)]
    dev: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(not(unix))]
    created: Option<std::time::SystemTime>,
}

impl FileId {
    pub(super) fn from_metadata(meta: &std::fs::Metadata) -> FileId {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            FileId {
                created: meta.created().ok(),
            }
        }
    }

    /// The file `path` names now (following symbolic links); `None` when it names nothing.
    pub(super) fn of(path: &Path) -> io::Result<Option<FileId>> {
        Ok(stat(path)?.map(|meta| FileId::from_metadata(&meta)))
    }
}

/// The metadata of what `path` names; `None` when it names nothing (also when a directory on
/// the way is gone).
pub(super) fn stat(path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The paths of a store's files.
#[derive(Clone, Debug)]
pub(super) struct Files {
    /// The path the caller named: what errors show.
    pub(super) path: PathBuf,
    /// The same, absolute (a later change of the working directory changes nothing): what the
    /// store opens and checks.
    pub(super) db: PathBuf,
    /// The write-ahead log, where SQLite keeps it: beside the file with symbolic links resolved.
    pub(super) wal: PathBuf,
    /// SQLite's shared-memory index of the log.
    pub(super) shm: PathBuf,
}

impl Files {
    /// The files of the store at `path`, which exists (else the companions are taken beside
    /// `path` as given).
    pub(super) fn new(path: &Path) -> Result<Files, StoreError> {
        let db = std::path::absolute(path).map_err(|e| io_err(path, &e))?;
        let resolved = std::fs::canonicalize(&db).unwrap_or_else(|_| db.clone());
        let beside = |suffix: &str| {
            let mut name = resolved.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        Ok(Files {
            path: path.to_path_buf(),
            wal: beside("-wal"),
            shm: beside("-shm"),
            db,
        })
    }
}

/// Which of the store's files is no longer at its path.
#[derive(Clone, Copy, Debug)]
enum Gone {
    /// The database file.
    File,
    /// Its `-wal` file.
    Log,
}

/// The open store's files as they were once opened, and whether their paths still name them.
///
/// A store whose file is deleted, moved or replaced while open would go on committing to a file
/// nobody opens again, and acknowledge calls that are gone at the next start. Every transaction
/// therefore checks, with a `stat` of the file and one of its log, that the paths still name the
/// files it opened; once they do not, every later call fails. A write checks last, just before
/// its `COMMIT`; a group commit checks once for its whole batch.
///
/// Measured (release build, 2 shared cores, `examples/throughput --workload linear`): the two
/// `stat`s add about 1.3 µs of CPU per transaction, some 5 % of the cheapest commit
/// ([`Durability::Process`](super::Durability::Process), one thread, about 45,000 commits per
/// second) and 3 to 4 % with two threads; with [`Durability::Full`](super::Durability::Full)
/// (an fsync per commit) they are lost in the noise.
#[derive(Debug)]
pub(super) struct Anchor {
    pub(super) files: Files,
    file: FileId,
    /// The log (`None`: it did not exist when the store was opened, and is not checked).
    wal: Option<FileId>,
    shm: Option<FileId>,
    /// Why the store stopped: set once, reported by every later call.
    lost: OnceLock<StoreError>,
    /// Whether [`Anchor::release_log`] has run.
    released: AtomicBool,
}

impl Anchor {
    /// Records the files the store opened: `file` is the database file's identity from before
    /// SQLite opened it; it fails (as [`Anchor::check`] would) when the path names another file
    /// now.
    pub(super) fn new(files: Files, file: FileId) -> Result<Anchor, StoreError> {
        let id = |path: &Path| FileId::of(path).ok().flatten();
        let anchor = Anchor {
            wal: id(&files.wal),
            shm: id(&files.shm),
            file,
            files,
            lost: OnceLock::new(),
            released: AtomicBool::new(false),
        };
        anchor.check()?;
        Ok(anchor)
    }

    /// The path the caller named.
    pub(super) fn path(&self) -> &Path {
        &self.files.path
    }

    /// Why the store stopped, if it did (no `stat`).
    pub(super) fn lost(&self) -> Option<StoreError> {
        self.lost.get().cloned()
    }

    /// Fails when the store's path no longer names the file it has open, or its log path the
    /// log it writes: the store then refuses every later call. A `stat` that fails for another
    /// reason fails this call only.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if let Some(e) = self.lost.get() {
            return Err(e.clone());
        }
        let now = FileId::of(&self.files.db).map_err(|e| io_err(self.path(), &e))?;
        if now != Some(self.file) {
            return Err(self.lose(Gone::File, now.is_none()));
        }
        if let Some(wal) = self.wal {
            let now = FileId::of(&self.files.wal).map_err(|e| io_err(self.path(), &e))?;
            if now != Some(wal) {
                return Err(self.lose(Gone::Log, now.is_none()));
            }
        }
        Ok(())
    }

    /// Records (once) and returns why the store stopped: `what` is no longer at its path, and
    /// nothing is (`deleted`) or another file is.
    fn lose(&self, what: Gone, deleted: bool) -> StoreError {
        let path = self.path().to_path_buf();
        self.lost
            .get_or_init(|| StoreError::Moved {
                path,
                what: match what {
                    Gone::File => "the store file",
                    Gone::Log => "its write-ahead log (-wal file)",
                },
                how: if deleted { "deleted" } else { "replaced" },
            })
            .clone()
    }

    /// Whether the path still names the store's file (`true` when that cannot be told).
    pub(super) fn file_is_here(&self) -> bool {
        match FileId::of(&self.files.db) {
            Ok(now) => now == Some(self.file),
            Err(_) => true,
        }
    }

    /// Whether closing the store may checkpoint its log into its file and delete the `-wal` and
    /// `-shm` files at their paths, as SQLite does when the last connection closes a file still
    /// at its path: only when those paths name the store's own companions or nothing (after
    /// they were deleted, another process may have made new ones for the same file).
    pub(super) fn may_clean_up_on_close(&self) -> bool {
        let ours = |path: &Path, id: Option<FileId>| match FileId::of(path) {
            Ok(None) | Err(_) => true,
            Ok(Some(now)) => Some(now) == id,
        };
        ours(&self.files.wal, self.wal) && ours(&self.files.shm, self.shm)
    }

    /// Once the store's file is no longer at its path (deleted, moved or replaced), its `-wal`
    /// and `-shm` files still are, and SQLite leaves them there when it closes a moved file:
    /// the next connection to open the path would replay this store's log into whatever file
    /// is there then (a replacement, or a new store), and damage it. So this copies the log
    /// into the store's own file, wherever it is now (a moved file keeps its commits), through
    /// `conn`, the write connection outside a transaction, and removes the two files from the
    /// path when they are still the store's. Once per store; nothing while the file is here.
    pub(super) fn release_log(&self, conn: &Connection) {
        if self.file_is_here() || self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        // Best effort: a reader of another process may keep it from finishing; the log is
        // removed all the same, as no connection opening the path may read it.
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        for (path, id) in [(&self.files.wal, self.wal), (&self.files.shm, self.shm)] {
            if id.is_some() && FileId::of(path).ok().flatten() == id {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// `path` as an SQLite URI filename with the query `params`, for opening with
/// [`OpenFlags::SQLITE_OPEN_URI`]; `None` when the platform's path cannot be written as one.
pub(super) fn uri(path: &Path, params: &str) -> Option<String> {
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = path.to_str()?.replace('\\', "/").into_bytes();
    let mut out = String::from("file:");
    if bytes.first() == Some(&b'/') {
        // An empty authority: `file:///abs/path`.
        out.push_str("//");
    } else if cfg!(not(unix)) && path.is_absolute() {
        // `file:///C:/path`.
        out.push_str("///");
    }
    for &b in &bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) || (cfg!(not(unix)) && b == b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('?');
    out.push_str(params);
    Some(out)
}

/// Creates a new store at `path` unless a file is there, and tells whether this call made it.
///
/// The store is built complete in a temporary file beside `path` (by `init`, in rollback-journal
/// mode, then switched to write-ahead logging and closed, so that it is one file), then given
/// its name with a hard link, which fails when the name is taken. So no process ever finds a
/// partly created store at `path`, two processes creating one store at once both end up using
/// the one that was linked first, and a process killed while creating leaves at most a
/// temporary `.NAME.*.new` file, never an empty file at `path`.
pub(super) fn create(
    path: &Path,
    init: impl FnOnce(&mut Connection, &Path) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(StoreError::Other {
            path: path.to_path_buf(),
            detail: "not a file name".into(),
        });
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".{}-{}.new",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = path.with_file_name(temp_name);
    // A log without its file is what a store deleted while open can leave behind (killed
    // before it removed it): SQLite would replay it into the new store.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if stat(Path::new(&wal))
        .map_err(|e| io_err(path, &e))?
        .is_some_and(|meta| meta.len() > 0)
    {
        return Err(StoreError::Other {
            path: path.to_path_buf(),
            detail: format!(
                "no store file, but a write-ahead log {} (of a store deleted or moved while \
                 open): SQLite would replay it into a new store; move it away first",
                Path::new(&wal).display()
            ),
        });
    }
    let result = build(path, &temp, init).and_then(|()| publish(path, &temp));
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut file = temp.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    result
}

/// Builds the store in the new file `temp`.
fn build(
    path: &Path,
    temp: &Path,
    init: impl FnOnce(&mut Connection, &Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    // A fresh file, never a leftover of the same name; no connection has it open, so closing
    // this descriptor drops nobody's locks.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    options.open(temp).map_err(|e| io_err(path, &e))?;
    let mut conn = Connection::open_with_flags(
        temp,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(path, e))?;
    init(&mut conn, path)?;
    // The last connection checkpoints and deletes the log: one complete file is left.
    conn.close().map_err(|(_, e)| sql_err(path, e))
}

/// Gives `temp` the name `path` unless that is taken; tells whether it did.
fn publish(path: &Path, temp: &Path) -> Result<bool, StoreError> {
    let linked = match std::fs::hard_link(temp, path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        // A file system without hard links: a rename, which replaces whatever appeared at `path`
        // since this check (only a process creating the same store at the same instant).
        Err(_) => match stat(path).map_err(|e| io_err(path, &e))? {
            Some(_) => false,
            None => {
                std::fs::rename(temp, path).map_err(|e| io_err(path, &e))?;
                true
            }
        },
    };
    if linked {
        sync_dir(path);
    }
    Ok(linked)
}

/// Makes the new name durable (on unix; elsewhere the file system does, or cannot be asked).
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

pub(super) fn io_err(path: &Path, e: &io::Error) -> StoreError {
    StoreError::Other {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}
