//! Text from callers as PostgreSQL text: a business key's value (a string variable) and a
//! report fact's subject (an actor's id, for actor facts) may hold U+0000, which PostgreSQL's
//! `text` cannot (SQLite and memory keep it). A value holding U+0000, or the escape U+0001, is
//! stored as U+0001 followed by the value with U+0001 written twice and U+0000 as U+0001 `0`;
//! every other value as it is. So the stored text of a value is unique (no value stored as it
//! is begins with U+0001), and lookups compare stored texts.
//!
//! **Invariant:** every key value written to or compared in `procflow_keys.value`, and every
//! subject written to the report facts, goes through [`stored`]; every one read
//! from them through [`read`].

use std::borrow::Cow;

const ESCAPE: char = '\u{1}';

/// The text a key's value is stored as.
pub(super) fn stored(value: &str) -> Cow<'_, str> {
    if !value.contains(['\u{0}', ESCAPE]) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 4);
    out.push(ESCAPE);
    for c in value.chars() {
        match c {
            '\u{0}' => out.extend([ESCAPE, '0']),
            ESCAPE => out.extend([ESCAPE, ESCAPE]),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The value a stored text stands for.
pub(super) fn read(text: String) -> String {
    let Some(escaped) = text.strip_prefix(ESCAPE) else {
        return text;
    };
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != ESCAPE {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('\u{0}'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{read, stored};

    #[test]
    fn values_round_trip_and_stay_apart() {
        let values = [
            "",
            "C-1",
            "a\u{0}b",
            "\u{0}",
            "\u{1}",
            "\u{1}0",
            "a\u{1}\u{0}",
            "\u{1}\u{1}",
            "中\u{0}文",
        ];
        for v in values {
            assert!(!stored(v).contains('\u{0}'), "{v:?}");
            assert_eq!(read(stored(v).into_owned()), v, "{v:?}");
        }
        let texts: std::collections::BTreeSet<String> =
            values.iter().map(|v| stored(v).into_owned()).collect();
        assert_eq!(texts.len(), values.len());
        assert_eq!(stored("C-1"), "C-1");
    }
}
