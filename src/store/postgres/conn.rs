//! Connections: the server a store talks to (and how its failures become typed
//! [`StoreError`]s naming it), the small pool of idle connections, and one transaction per call.
//!
//! **Invariant:** a connection goes back to the pool only outside any transaction; one that
//! failed in a way that may have left it broken is dropped.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Statement};

use crate::store::StoreError;

/// The server and database a store uses, as errors name them, and how to connect.
#[derive(Clone)]
pub(crate) struct Server {
    /// `host:port`, or the Unix socket's folder and port.
    pub(crate) name: String,
    pub(crate) database: String,
    config: Config,
}

impl Server {
    /// Reads a connection URL (`postgres://user:password@host:port/database`, or the key=value
    /// form); a URL that does not parse names no server.
    pub(crate) fn parse(url: &str) -> Result<Server, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::Server {
            server: "(unreadable URL)".into(),
            database: String::new(),
            detail: format!("not a PostgreSQL connection URL: {e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("procflow");
        }
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(host)) => format!("{host}:{port}"),
            #[cfg(unix)]
            Some(postgres::config::Host::Unix(dir)) => format!("{}:{port}", dir.display()),
            None => format!("localhost:{port}"),
        };
        let database = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
            .to_owned();
        Ok(Server {
            name,
            database,
            config,
        })
    }

    /// A new connection.
    pub(crate) fn connect(&self) -> Result<Conn, StoreError> {
        let client =
            where_it_may_block(|| self.config.connect(NoTls)).map_err(|e| self.connect_err(e))?;
        Ok(Conn {
            client,
            statements: Vec::new(),
        })
    }

    fn connect_err(&self, e: postgres::Error) -> StoreError {
        if e.as_db_error().is_none() {
            // No answer from a server: nothing listens there, or the name does not resolve.
            return self.unreachable(e.to_string());
        }
        self.err(e)
    }

    fn unreachable(&self, detail: String) -> StoreError {
        StoreError::Unreachable {
            server: self.name.clone(),
            database: self.database.clone(),
            detail,
        }
    }

    pub(crate) fn foreign(&self, detail: impl Into<String>) -> StoreError {
        StoreError::ForeignDatabase {
            server: self.name.clone(),
            database: self.database.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn lost(&self, detail: impl Into<String>) -> StoreError {
        StoreError::ConnectionLost {
            server: self.name.clone(),
            database: self.database.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn decode(
        &self,
        what: impl std::fmt::Display,
        e: impl std::fmt::Display,
    ) -> StoreError {
        StoreError::Decode {
            what: format!("{what} in database {} on {}", self.database, self.name),
            detail: e.to_string(),
        }
    }

    /// Maps a failure of the server or of the connection to the store's error.
    pub(crate) fn err(&self, e: postgres::Error) -> StoreError {
        let server = self.name.clone();
        let database = self.database.clone();
        let Some(db) = e.as_db_error() else {
            return if is_connection(&e) {
                StoreError::ConnectionLost {
                    server,
                    database,
                    detail: e.to_string(),
                }
            } else {
                StoreError::Server {
                    server,
                    database,
                    detail: e.to_string(),
                }
            };
        };
        let detail = db.message().to_owned();
        let code = db.code();
        if *code == SqlState::DISK_FULL
            || *code == SqlState::INSUFFICIENT_RESOURCES
            || *code == SqlState::OUT_OF_MEMORY
            || *code == SqlState::PROGRAM_LIMIT_EXCEEDED && detail.contains("space")
        {
            StoreError::ServerFull {
                server,
                database,
                detail,
            }
        } else if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            || *code == SqlState::INVALID_CATALOG_NAME
            || *code == SqlState::INSUFFICIENT_PRIVILEGE
        {
            StoreError::Denied {
                server,
                database,
                detail,
            }
        } else if *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::CONNECTION_FAILURE
            || *code == SqlState::CONNECTION_EXCEPTION
            || *code == SqlState::TOO_MANY_CONNECTIONS
        {
            StoreError::ConnectionLost {
                server,
                database,
                detail,
            }
        } else {
            StoreError::Server {
                server,
                database,
                detail: format!("{detail} ({})", code.code()),
            }
        }
    }
}

/// Whether `e` is the connection failing (closed, or an I/O error), not the server refusing.
pub(crate) fn is_connection(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    // The driver reports a server that hung up mid-query as an unexpected end of stream.
    e.as_db_error().is_none() && e.to_string().contains("closed")
}

/// One connection and the statements prepared on it.
pub(crate) struct Conn {
    pub(crate) client: Client,
    statements: Vec<(&'static str, Statement)>,
}

impl Conn {
    /// `sql` prepared on this connection (once).
    pub(crate) fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some((_, s)) = self
            .statements
            .iter()
            .find(|(text, _)| std::ptr::eq(*text, sql) || *text == sql)
        {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.push((sql, s.clone()));
        Ok(s)
    }
}

/// Why a call inside a transaction failed.
pub(crate) enum Fail {
    /// The server or the connection.
    Pg(postgres::Error),
    /// A verdict (a conflict, a value that does not decode).
    Store(StoreError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

/// Idle connections, at most [`Pool::IDLE`] kept.
pub(crate) struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    const IDLE: usize = 32;

    pub(crate) fn new(first: Conn) -> Pool {
        Pool {
            idle: Mutex::new(vec![first]),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Conn>> {
        // Only whole connections are pushed and popped: a poisoned pool is still a pool.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection (`true`: it was pooled and may have died since) or a new one.
    pub(crate) fn take(&self, server: &Server) -> Result<(Conn, bool), StoreError> {
        let idle = self.lock().pop();
        if let Some(conn) = idle
            && !conn.client.is_closed()
        {
            return Ok((conn, true));
        }
        Ok((server.connect()?, false))
    }

    pub(crate) fn put(&self, conn: Conn) {
        if conn.client.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < Pool::IDLE {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (after one was found dead: the server restarted).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// Runs `f`, which reads with one statement, on a pooled connection outside any
    /// transaction (the statement is its own: one round trip instead of three). A pooled
    /// connection found dead is replaced by a new one, up to twice (a read is safe to repeat).
    pub(crate) fn read_once<T: Send>(
        &self,
        server: &Server,
        mut f: impl FnMut(&mut Conn) -> Result<T, Fail> + Send,
    ) -> Result<T, StoreError> {
        where_it_may_block(|| self.read_once_here(server, &mut f))
    }

    fn read_once_here<T>(
        &self,
        server: &Server,
        f: &mut impl FnMut(&mut Conn) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (mut conn, pooled) = self.take(server)?;
            match f(&mut conn) {
                Ok(out) => {
                    self.put(conn);
                    return Ok(out);
                }
                Err(Fail::Store(e)) => {
                    self.put(conn);
                    return Err(e);
                }
                Err(Fail::Pg(e)) => {
                    let e = server.err(e);
                    if matches!(e, StoreError::ConnectionLost { .. }) {
                        self.clear();
                        if pooled && tries < 3 {
                            continue;
                        }
                    } else {
                        self.put(conn);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Runs `f` in one transaction (`BEGIN` … `COMMIT`) on a pooled connection. A pooled
    /// connection found dead at `BEGIN` is replaced once by a new one (nothing was sent).
    /// A failure of the `COMMIT` itself is returned as `Err(Ok(e))`: its outcome is unknown.
    pub(crate) fn transaction<T: Send>(
        &self,
        server: &Server,
        read_only: bool,
        f: impl FnMut(&mut Conn) -> Result<T, Fail> + Send,
    ) -> Result<T, Outcome> {
        let begin = if read_only {
            "BEGIN READ ONLY"
        } else {
            "BEGIN"
        };
        self.transaction_as(server, begin, f)
    }

    /// [`Pool::transaction`], begun with `begin` (which may set the transaction's options).
    pub(crate) fn transaction_as<T: Send>(
        &self,
        server: &Server,
        begin: &str,
        mut f: impl FnMut(&mut Conn) -> Result<T, Fail> + Send,
    ) -> Result<T, Outcome> {
        where_it_may_block(|| self.transaction_here(server, begin, &mut f))
    }

    fn transaction_here<T>(
        &self,
        server: &Server,
        begin: &str,
        f: &mut impl FnMut(&mut Conn) -> Result<T, Fail>,
    ) -> Result<T, Outcome> {
        let mut tries = 0;
        let mut conn = loop {
            tries += 1;
            let (mut conn, pooled) = self.take(server).map_err(Outcome::Failed)?;
            match conn.client.batch_execute(begin) {
                Ok(()) => break conn,
                Err(e) => {
                    let e = server.err(e);
                    // A pooled connection the server has closed since (it restarted): nothing
                    // was done; drop the idle ones and connect anew.
                    if pooled && tries < 3 && matches!(e, StoreError::ConnectionLost { .. }) {
                        self.clear();
                        continue;
                    }
                    return Err(Outcome::Failed(e));
                }
            }
        };
        match f(&mut conn) {
            Ok(out) => match conn.client.batch_execute("COMMIT") {
                Ok(()) => {
                    self.put(conn);
                    Ok(out)
                }
                Err(e) => {
                    let e = server.err(e);
                    if matches!(e, StoreError::ConnectionLost { .. }) {
                        self.clear();
                        return Err(Outcome::Unknown(e));
                    }
                    let _ = conn.client.batch_execute("ROLLBACK");
                    self.put(conn);
                    Err(Outcome::Failed(e))
                }
            },
            Err(fail) => {
                let broken = conn.client.batch_execute("ROLLBACK").is_err();
                if !broken {
                    self.put(conn);
                }
                Err(Outcome::Failed(match fail {
                    Fail::Pg(e) => server.err(e),
                    Fail::Store(e) => e,
                }))
            }
        }
    }
}

impl Pool {
    /// Runs `f`, one statement, outside any transaction: the server commits it by itself, so
    /// it costs one round trip. A failure of the connection is [`Outcome::Unknown`]: the
    /// statement may have been committed.
    pub(crate) fn autocommit<T: Send>(
        &self,
        server: &Server,
        f: impl FnOnce(&mut Conn) -> Result<T, Fail> + Send,
    ) -> Result<T, Outcome> {
        where_it_may_block(|| self.autocommit_here(server, f))
    }

    fn autocommit_here<T>(
        &self,
        server: &Server,
        f: impl FnOnce(&mut Conn) -> Result<T, Fail>,
    ) -> Result<T, Outcome> {
        let (mut conn, _) = self.take(server).map_err(Outcome::Failed)?;
        match f(&mut conn) {
            Ok(out) => {
                self.put(conn);
                Ok(out)
            }
            Err(Fail::Store(e)) => {
                self.put(conn);
                Err(Outcome::Failed(e))
            }
            Err(Fail::Pg(e)) => {
                let e = server.err(e);
                if matches!(e, StoreError::ConnectionLost { .. }) {
                    self.clear();
                    return Err(Outcome::Unknown(e));
                }
                self.put(conn);
                Err(Outcome::Failed(e))
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing a connection blocks on the driver's runtime too.
        let idle = std::mem::take(&mut *self.lock());
        where_it_may_block(move || drop(idle));
    }
}

/// Runs `f`, which uses the synchronous driver, where it may block: on this thread, or, when
/// this thread runs a tokio runtime's tasks (there the driver panics, and the process aborts
/// as the connection it unwinds through blocks again), on a thread of its own for the call (a
/// host calling the engine from async code without the async façade; the façade's offload
/// marks its threads, `store::may_block`).
pub(super) fn where_it_may_block<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if crate::store::may_block_here() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// How a transaction failed.
pub(crate) enum Outcome {
    /// Nothing of it was stored.
    Failed(StoreError),
    /// The connection broke at `COMMIT`: it may or may not be stored.
    Unknown(StoreError),
}

impl Outcome {
    pub(crate) fn into_error(self) -> StoreError {
        match self {
            Outcome::Failed(e) | Outcome::Unknown(e) => e,
        }
    }
}
