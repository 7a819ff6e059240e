//! The HTTP API and the web console (feature `server`): an axum [`Router`] over an [`Engine`],
//! mounted by a host or served by `procflow serve`.
//!
//! Every call names its actor with a bearer token ([`Tokens`]: token → person of the
//! [`Organisation`]); the person's roles come from the organisation and the engine checks them
//! exactly as in the library (RACI, scopes, four eyes, assignment). No anonymous call acts. The
//! library has no actor on `deploy` and `retry`: the server gives them to operators (a token
//! marked `operator: true`). Starting an instance, correlating a message and reading need any
//! known person.
//!
//! Errors are `application/problem+json` (RFC 9457) with `kind`, the typed error's variant.
//! Engine calls run where [`Server::offload`] says: by default on tokio's blocking pool
//! (`spawn_blocking`), the safe choice for a store that waits for the disk; an engine without a
//! durable store runs them inline (a call is microseconds of CPU). Either way a call the server
//! accepted runs to completion even if the client goes away. Bodies are bounded ([`Limits::max_body`]), reads
//! time out ([`Limits::read_timeout`]), request bodies must arrive within
//! [`Limits::body_timeout`], and over [`Limits::max_in_flight`] calls the server answers 503
//! with `Retry-After` before it touches anything.

mod api;
mod graph;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::asynch::Offload;
use crate::exec::Engine;
use crate::org::Organisation;
use crate::store::Store;

pub use graph::graph_svg;

/// The bearer tokens a server accepts, each naming a person of the organisation.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    map: HashMap<String, TokenEntry>,
}

/// What a token stands for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The person (an id of the organisation's `people`).
    pub person: String,
    /// Whether the token may deploy definitions and retry incidents.
    #[serde(default)]
    pub operator: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: indexmap::IndexMap<String, TokenEntry>,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// It could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It is not a token file.
    #[error("not a token file: {0}")]
    Format(String),
    /// A token names a person the organisation does not have.
    #[error("token '{token}' names '{person}', who is not a person of the organisation")]
    UnknownPerson {
        /// The token (its first characters).
        token: String,
        /// The person named.
        person: String,
    },
    /// A token is too short to be a secret.
    #[error("token '{0}' is shorter than 8 characters")]
    TooShort(String),
}

impl Tokens {
    /// No tokens: every call is refused.
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// Adds a token for `person`.
    pub fn insert(&mut self, token: impl Into<String>, person: impl Into<String>, operator: bool) {
        self.map.insert(
            token.into(),
            TokenEntry {
                person: person.into(),
                operator,
            },
        );
    }

    /// Reads a YAML token file, `tokens: { TOKEN: { person: ID, operator: BOOL } }`, checking
    /// every person against `org`.
    ///
    /// # Errors
    /// [`TokenError`].
    pub fn from_yaml(text: &str, org: &Organisation) -> Result<Tokens, TokenError> {
        let file: TokenFile =
            serde_saphyr::from_str(text).map_err(|e| TokenError::Format(e.to_string()))?;
        let mut out = Tokens::new();
        for (token, entry) in file.tokens {
            if token.len() < 8 {
                return Err(TokenError::TooShort(token));
            }
            if org.person(&entry.person).is_none() {
                return Err(TokenError::UnknownPerson {
                    token: token.chars().take(4).collect(),
                    person: entry.person,
                });
            }
            out.map.insert(token, entry);
        }
        Ok(out)
    }

    /// [`Tokens::from_yaml`] of a file.
    ///
    /// # Errors
    /// [`TokenError`].
    pub fn from_file(path: impl AsRef<Path>, org: &Organisation) -> Result<Tokens, TokenError> {
        Tokens::from_yaml(&std::fs::read_to_string(path)?, org)
    }

    fn get(&self, token: &str) -> Option<&TokenEntry> {
        self.map.get(token)
    }
}

/// The server's bounds.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest request body, in bytes (default 256 KiB).
    pub max_body: usize,
    /// How long a read may take before the server answers 503 (default 5 s).
    pub read_timeout: Duration,
    /// How long a request body may take to arrive (default 10 s).
    pub body_timeout: Duration,
    /// How many calls may be in flight; more are answered 503 with `Retry-After` (default 256).
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 256 * 1024,
            read_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            max_in_flight: 256,
        }
    }
}

/// The API and console, configured: [`Server::router`] gives the axum router.
pub struct Server {
    engine: Arc<Engine>,
    org: Arc<Organisation>,
    tokens: Tokens,
    store: Option<Arc<dyn Store>>,
    limits: Limits,
    offload: Offload,
}

impl Server {
    /// A server over `engine`, whose people are `org`'s, authenticated by `tokens`.
    pub fn new(engine: Arc<Engine>, org: Arc<Organisation>, tokens: Tokens) -> Server {
        Server {
            engine,
            org,
            tokens,
            store: None,
            limits: Limits::default(),
            offload: Offload::SpawnBlocking,
        }
    }

    /// Where engine calls run (default [`Offload::SpawnBlocking`]). [`Offload::Inline`] suits an
    /// engine on a [`MemoryStore`](crate::MemoryStore): no call waits for a disk, and a work-list
    /// read then costs no thread hand-over (`procflow serve --store memory` does this). With
    /// `Inline` or `BlockInPlace` a read runs to its end: [`Limits::read_timeout`] cannot cut it
    /// short.
    pub fn offload(mut self, offload: Offload) -> Server {
        self.offload = offload;
        self
    }

    /// The store the engine was opened on (the same one): reports, heatmaps and the process
    /// list read it. Without it those endpoints answer 501.
    pub fn store(mut self, store: Arc<dyn Store>) -> Server {
        self.store = Some(store);
        self
    }

    /// Sets the bounds.
    pub fn limits(mut self, limits: Limits) -> Server {
        self.limits = limits;
        self
    }

    /// The router: the API under `/api`, the OpenAPI document at `/openapi.json`, the console
    /// at `/`.
    pub fn router(self) -> Router {
        api::router(api::State {
            engine: self.engine,
            org: self.org,
            tokens: Arc::new(self.tokens),
            store: self.store,
            limits: self.limits.clone(),
            offload: self.offload,
            in_flight: Arc::new(tokio::sync::Semaphore::new(self.limits.max_in_flight)),
            deployed: Arc::default(),
        })
    }
}

/// The router of a [`Server`] with default limits and no store (reports answer 501).
pub fn router(engine: Arc<Engine>, org: Arc<Organisation>, tokens: Tokens) -> Router {
    Server::new(engine, org, tokens).router()
}

/// Every route of the router, as (method, path) with `{param}` placeholders: what the OpenAPI
/// document must list.
pub fn routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    api::ROUTES.iter().copied()
}

/// The OpenAPI document the server serves at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
