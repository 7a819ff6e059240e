//! Reading YAML with locations: the one YAML reader ([`parse_yaml`], serde-saphyr with the
//! loader's limits), values that keep their line and column ([`At`]), mappings that keep repeated
//! keys ([`Entries`]), and the located problems every loader reports ([`LoadError`]).
//!
//! **Invariant:** this is the only module that knows the YAML backend. It is the bottom layer of
//! the loaders: definitions, calendars and scenarios use it; it uses nothing of theirs.

mod error;

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_saphyr::Spanned;

pub use error::{
    DurationError, DurationErrorKind, ErrorBody, LoadError, Location, Problem, ProblemKind,
};

/// A value with the location where the YAML wrote it.
#[derive(Clone, Debug)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) loc: Location,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<T>::deserialize(d)?;
        Ok(At {
            value: s.value,
            loc: location(&s.referenced),
        })
    }
}

fn location(l: &serde_saphyr::Location) -> Location {
    Location {
        line: u32::try_from(l.line()).unwrap_or(u32::MAX),
        column: u32::try_from(l.column()).unwrap_or(u32::MAX),
    }
}

/// A mapping kept as a list, so that a repeated key reaches the validator (which reports it with
/// both locations) instead of silently replacing the first entry.
pub(crate) struct Entries<T>(pub(crate) Vec<(At<String>, At<T>)>);

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<T>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<At<String>, At<T>>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// The most input the loader accepts, against hostile files (a definition is a few KB).
const MAX_BYTES: usize = 8 << 20;

/// Parses YAML text into any DTO with the loader's limits and error locations (scenario files
/// use it too).
///
/// # Errors
/// One [`Problem`] of kind [`ProblemKind::Syntax`].
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    if text.len() > MAX_BYTES {
        return Err(Problem {
            location: None,
            path: String::new(),
            kind: ProblemKind::Syntax(format!("file is larger than {MAX_BYTES} bytes")),
        });
    }
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough,
        // Comments are checked as YAML but not kept: nothing reads them, and keeping them costs.
        emit_comments: false,
        budget: serde_saphyr::budget! {
            max_events: 1_000_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_depth: 64,
            max_documents: 1,
        },
    };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|e| {
        let e = e.without_snippet();
        let location = e.location().map(|l| location(&l)).filter(|l| l.line > 0);
        let message = e.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        let message = strip_location(&message);
        let location = location.or_else(|| locate_duplicate(text, &message));
        Problem {
            location,
            path: String::new(),
            kind: ProblemKind::Syntax(message),
        }
    })
}

/// serde-saphyr's plain rendering ends with " at line L column C"; the location is kept apart.
fn strip_location(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_owned(),
        None => first.to_owned(),
    }
}

/// serde reports a repeated struct field ("duplicate field `id`") without a location; find the
/// repeated key in the text: the second line that starts, after indentation, with `key:`.
fn locate_duplicate(text: &str, message: &str) -> Option<Location> {
    let key = message
        .strip_prefix("duplicate field `")?
        .strip_suffix('`')?;
    let mut seen = 0;
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
        {
            seen += 1;
            if seen == 2 {
                let column = line.chars().count() - body.chars().count() + 1;
                return Some(Location {
                    line: i as u32 + 1,
                    column: column as u32,
                });
            }
        }
    }
    None
}

/// Collects a loader's problems, each located, so that all are reported at once.
pub(crate) struct Report(pub(crate) Vec<Problem>);

impl Report {
    pub(crate) fn add(&mut self, location: Location, path: impl Into<String>, kind: ProblemKind) {
        self.0.push(Problem {
            location: Some(location),
            path: path.into(),
            kind,
        });
    }
}

/// The most bytes an id may take: stores index ids (PostgreSQL at most 2,704 bytes per index
/// entry), work lists and graphs show them.
pub(crate) const MAX_ID_BYTES: usize = 128;

/// Node, role, variable, unit and skill ids: they appear in CEL conditions, Mermaid and DOT,
/// so `[a-z0-9_]+`, at most [`MAX_ID_BYTES`].
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The entries of a mapping whose ids pass `valid` and come first; an invalid or repeated id is
/// reported (a repeat naming where the id was first defined) and only the first entry kept.
pub(crate) fn unique<'a, T>(
    entries: &'a Entries<T>,
    what: &'static str,
    section: &str,
    valid: fn(&str) -> bool,
    report: &mut Report,
) -> Vec<(&'a At<String>, &'a At<T>)> {
    let mut seen: std::collections::HashMap<&str, Location> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (key, value) in &entries.0 {
        let path = format!("{section}.{}", key.value);
        if !valid(&key.value) {
            report.add(key.loc, &path, ProblemKind::InvalidId(key.value.clone()));
        }
        match seen.get(key.value.as_str()) {
            Some(first) => report.add(
                key.loc,
                &path,
                ProblemKind::Duplicate {
                    what,
                    id: key.value.clone(),
                    first: *first,
                },
            ),
            None => {
                seen.insert(&key.value, key.loc);
                out.push((key, value));
            }
        }
    }
    out
}
