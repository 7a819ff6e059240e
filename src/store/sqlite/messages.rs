//! Messages kept engine-wide (`keep_for`) and recorded unmatched: one row each in the
//! `messages` table (schema version 3), the message as JSON.

use rusqlite::Connection;

use super::{SqliteStore, sql_err};
use crate::model::ParkedMessage;
use crate::store::{StoreError, decode_message, encode_message};

impl SqliteStore {
    /// Runs `f` in one write transaction.
    fn write_messages(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> Result<(), StoreError> {
        self.write_with(|conn| f(conn).map_err(|e| sql_err(&self.path, e)))
    }

    pub(super) fn park_message(&self, m: &ParkedMessage) -> Result<(), StoreError> {
        let body = encode_message(m);
        self.write_messages(|conn| {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO messages (id, unmatched, body) VALUES (?1, 0, ?2)",
            )?
            .execute((m.id as i64, &body))
            .map(|_| ())
        })
    }

    pub(super) fn settle_message(
        &self,
        id: u64,
        unmatched: Option<&ParkedMessage>,
    ) -> Result<(), StoreError> {
        let mut taken = false;
        self.write_messages(|conn| {
            let ended = conn
                .prepare_cached("DELETE FROM messages WHERE id = ?1 AND unmatched = 0")?
                .execute([id as i64])?;
            if let Some(m) = unmatched {
                // An expired kept message another engine delivered meanwhile is not unmatched.
                if ended == 0 && m.until.is_some() {
                    taken = true;
                    return Ok(());
                }
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO messages (id, unmatched, body) VALUES (?1, 1, ?2)",
                )?
                .execute((m.id as i64, encode_message(m)))?;
            }
            Ok(())
        })?;
        if taken {
            return Err(StoreError::Taken { message: id });
        }
        Ok(())
    }

    pub(super) fn messages(&self, unmatched: bool) -> Result<Vec<ParkedMessage>, StoreError> {
        self.read_with(|conn| {
            let path = &self.path;
            let bodies: Vec<String> = conn
                .prepare_cached("SELECT body FROM messages WHERE unmatched = ?1 ORDER BY id")
                .and_then(|mut s| {
                    s.query_map([i64::from(unmatched)], |row| row.get(0))?
                        .collect::<Result<Vec<String>, _>>()
                })
                .map_err(|e| sql_err(path, e))?;
            bodies.iter().map(|b| decode_message(b)).collect()
        })
    }
}
