//! Mutations of a YAML input: bytes, lines, YAML features, and the CEL expressions in `when:` and
//! `expr:` values. Each operation is a small function over the text; [`mutate`] stacks a few
//! picked at random and names them, so that a failure report says what was done.

use std::collections::BTreeSet;

use super::rng::Rng;

/// The largest input the fuzzer builds; a mutation that would grow past it is dropped.
pub(crate) const MAX_LEN: usize = 1 << 20;

/// Words gathered from the corpus, for replacing values, keys and identifiers.
#[derive(Debug, Default)]
pub(crate) struct Dict {
    values: Vec<String>,
    keys: Vec<String>,
    idents: Vec<String>,
}

impl Dict {
    /// Gathers the values, keys and CEL identifiers of the corpus texts.
    pub(crate) fn new<'a>(texts: impl IntoIterator<Item = &'a str>) -> Dict {
        let (mut values, mut keys, mut idents) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for text in texts {
            for site in sites(text) {
                let key = &text[site.key.0..site.key.1];
                let value = &text[site.value.0..site.value.1];
                keys.insert(key.to_owned());
                if !value.is_empty() && value.len() < 200 {
                    values.insert(value.to_owned());
                }
                if key == "when" || key == "expr" {
                    for word in unquote(value)
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .filter(|w| w.starts_with(|c: char| c.is_ascii_lowercase()))
                    {
                        if !matches!(word, "true" | "false" | "null" | "in" | "size") {
                            idents.insert(word.to_owned());
                        }
                    }
                }
            }
        }
        idents.extend(["v", "w", "items", "x", "undeclared"].map(String::from));
        Dict {
            values: values.into_iter().collect(),
            keys: keys.into_iter().collect(),
            idents: idents.into_iter().collect(),
        }
    }
}

/// Mutates `input` with one to four stacked operations; `other` is another corpus input of the
/// same kind, for crossover. Returns the result and the operations' names.
pub(crate) fn mutate(
    input: &[u8],
    other: &[u8],
    dict: &Dict,
    rng: &mut Rng,
) -> (Vec<u8>, Vec<&'static str>) {
    let mut data = input.to_vec();
    let mut names = Vec::new();
    // Mostly one operation: a single change of a valid input still loads now and then.
    let count = match rng.below(20) {
        0..=11 => 1,
        12..=16 => 2,
        17..=18 => 3,
        _ => 4,
    };
    for _ in 0..count {
        let (name, out) = one(&data, other, dict, rng);
        if out.len() <= MAX_LEN {
            data = out;
            names.push(name);
        }
    }
    (data, names)
}

/// One operation, picked by family: bytes, lines, YAML, CEL, dictionary.
fn one(data: &[u8], other: &[u8], dict: &Dict, rng: &mut Rng) -> (&'static str, Vec<u8>) {
    match rng.below(100) {
        0..=14 => bytes(data, other, rng),
        15..=34 => lines(data, other, rng),
        35..=64 => text_op(data, rng, |t, r| yaml(t, dict, r)),
        65..=89 => text_op(data, rng, |t, r| cel(t, dict, r)),
        _ => text_op(data, rng, |t, r| dictionary(t, dict, r)),
    }
}

/// Runs a text operation on the input read as UTF-8 (invalid bytes become U+FFFD).
fn text_op(
    data: &[u8],
    rng: &mut Rng,
    f: impl FnOnce(&str, &mut Rng) -> (&'static str, String),
) -> (&'static str, Vec<u8>) {
    let text = String::from_utf8_lossy(data);
    let (name, out) = f(&text, rng);
    (name, out.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------------------------

/// Bytes that mean something to YAML or CEL, and a few that mean trouble.
const INTERESTING: &[u8] = b":-{}[]\n \t&*!#\"'|>%@`,?\\\r\x00\x7f\xff\xc3\xe4.";

fn bytes(data: &[u8], other: &[u8], rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let mut d = data.to_vec();
    let len = d.len();
    let at = rng.below(len + 1);
    match rng.below(6) {
        0 if len > 0 => {
            let i = rng.below(len);
            d[i] ^= 1 << rng.below(8);
            ("byte-flip", d)
        }
        1 if len > 0 => {
            let i = rng.below(len);
            d[i] = *rng.pick(INTERESTING);
            ("byte-set", d)
        }
        2 => {
            let n = rng.range(1, 8);
            let insert: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.chance(3, 4) {
                        *rng.pick(INTERESTING)
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect();
            d.splice(at..at, insert);
            ("byte-insert", d)
        }
        3 if len > 0 => {
            let n = rng.size(64).max(1).min(len - at.min(len));
            d.drain(at..at + n);
            ("byte-delete", d)
        }
        4 if len > 0 => {
            let from = rng.below(len);
            let n = rng.size(256).min(len - from);
            let chunk = d[from..from + n].to_vec();
            d.splice(at..at, chunk);
            ("byte-copy", d)
        }
        _ if !other.is_empty() => {
            let from = rng.below(other.len());
            let n = rng.size(512).min(other.len() - from);
            d.splice(at..at, other[from..from + n].iter().copied());
            ("byte-crossover", d)
        }
        _ => {
            d.insert(at, b'\n');
            ("byte-newline", d)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------------------------

fn split_lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn indent_of(line: &[u8]) -> usize {
    line.iter().take_while(|&&b| b == b' ').count()
}

fn lines(data: &[u8], other: &[u8], rng: &mut Rng) -> (&'static str, Vec<u8>) {
    let mut ls = split_lines(data);
    if ls.is_empty() {
        return ("line-empty", b"\n".to_vec());
    }
    let n = ls.len();
    let i = rng.below(n);
    let name = match rng.below(8) {
        0 => {
            let copy = ls[i].clone();
            ls.insert(rng.below(n + 1), copy);
            "line-duplicate"
        }
        1 => {
            let k = rng.size(8).max(1).min(n - i);
            ls.drain(i..i + k);
            "line-delete"
        }
        2 => {
            let j = rng.below(n);
            ls.swap(i, j);
            "line-swap"
        }
        3 => {
            let line = ls.remove(i);
            let j = rng.below(ls.len() + 1);
            ls.insert(j, line);
            "line-move"
        }
        4 => {
            // Indent or dedent a line, or its whole block (the lines below indented deeper).
            let base = indent_of(&ls[i]);
            let end = if rng.chance(1, 2) {
                (i + 1..n)
                    .find(|&j| indent_of(&ls[j]) <= base && ls[j].len() > base)
                    .unwrap_or(n)
            } else {
                i + 1
            };
            let by = rng.range(1, 4);
            let deeper = rng.chance(1, 2);
            for line in &mut ls[i..end] {
                if deeper {
                    line.splice(0..0, std::iter::repeat_n(b' ', by));
                } else {
                    let k = indent_of(line).min(by);
                    line.drain(0..k);
                }
            }
            "line-indent"
        }
        5 => {
            let k = indent_of(&ls[i]);
            ls[i].splice(0..k.min(2), [b'\t']);
            "line-tab"
        }
        6 => {
            // Doubles a block: the line and the lines under it (a duplicate key, or a duplicate
            // list item).
            let base = indent_of(&ls[i]);
            let end = (i + 1..n).find(|&j| indent_of(&ls[j]) <= base).unwrap_or(n);
            let block: Vec<Vec<u8>> = ls[i..end].to_vec();
            ls.splice(end..end, block);
            "line-duplicate-block"
        }
        _ => {
            let theirs = split_lines(other);
            if theirs.is_empty() {
                ls.swap(i, rng.below(n));
            } else {
                let from = rng.below(theirs.len());
                let k = rng.size(16).max(1).min(theirs.len() - from);
                let replace = rng.size(4).min(n - i);
                ls.splice(i..i + replace, theirs[from..from + k].iter().cloned());
            }
            "line-crossover"
        }
    };
    (name, ls.concat())
}

// ---------------------------------------------------------------------------------------------
// Sites: `key: value` pairs on one line, block or flow
// ---------------------------------------------------------------------------------------------

/// A `key: value` on one line: byte ranges into the whole text. The value may be empty (a block
/// mapping follows), a quoted scalar, a flow collection, or a plain scalar.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site {
    pub(crate) key: (usize, usize),
    pub(crate) value: (usize, usize),
    /// The start of the line.
    pub(crate) line: usize,
}

/// Where a quoted scalar that opens at `i` ends (just past its closing quote, or the line end).
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() && b[j] != b'\n' {
        if quote == b'"' && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            if quote == b'\'' && b.get(j + 1) == Some(&b'\'') {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    j.min(b.len())
}

/// Where a flow collection that opens at `i` ends (just past its closing bracket, or the line
/// end).
fn skip_flow(b: &[u8], i: usize) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j < b.len() && b[j] != b'\n' {
        match b[j] {
            b'"' | b'\'' => {
                j = skip_quoted(b, j);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// Every `key: value` site of the text.
pub(crate) fn sites(text: &str) -> Vec<Site> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut line = 0;
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                i += 1;
                line = i;
                depth = 0;
            }
            b'"' | b'\'' => i = skip_quoted(b, i),
            b'#' if i == line || b[i - 1] == b' ' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b':' if matches!(b.get(i + 1), None | Some(b' ' | b'\n' | b'\r')) => {
                let mut k = i;
                while k > line && !matches!(b[k - 1], b' ' | b'\t' | b'{' | b'[' | b',') {
                    k -= 1;
                }
                let mut v = i + 1;
                while v < b.len() && b[v] == b' ' {
                    v += 1;
                }
                let end = value_end(b, v, depth);
                if k < i {
                    out.push(Site {
                        key: (k, i),
                        value: (v, end),
                        line,
                    });
                }
                // Look inside a flow value for more sites, unless it is long: nested long flow
                // values would make this quadratic.
                let flow = matches!(b.get(v), Some(b'{' | b'['));
                i = if !flow || end - v > 2_000 {
                    end.max(i + 1)
                } else {
                    i + 1
                };
            }
            _ => i += 1,
        }
    }
    out
}

/// Where the value that starts at `v` ends; `depth` is the flow nesting it sits in.
fn value_end(b: &[u8], v: usize, depth: usize) -> usize {
    match b.get(v) {
        None | Some(b'\n' | b'\r') => v,
        Some(b'"' | b'\'') => skip_quoted(b, v),
        Some(b'{' | b'[') => skip_flow(b, v),
        _ => {
            let mut j = v;
            let stops = |j: usize| {
                matches!(b[j], b'\n' | b'\r')
                    || (depth > 0 && matches!(b[j], b',' | b'}' | b']'))
                    || (b[j] == b'#' && b[j - 1] == b' ')
            };
            while j < b.len() && !stops(j) {
                j += 1;
            }
            while j > v && b[j - 1] == b' ' {
                j -= 1;
            }
            j
        }
    }
}

/// A scalar's text without its quotes.
pub(crate) fn unquote(value: &str) -> String {
    if value.starts_with('"') {
        serde_json::from_str::<String>(value)
            .unwrap_or_else(|_| value.trim_matches('"').replace("\\\"", "\""))
    } else if let Some(inner) = value.strip_prefix('\'') {
        inner.strip_suffix('\'').unwrap_or(inner).replace("''", "'")
    } else {
        value.to_owned()
    }
}

/// `text` as a double-quoted YAML scalar (JSON's escapes are YAML's).
pub(crate) fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

fn splice(text: &str, (start, end): (usize, usize), with: &str) -> String {
    let mut out = String::with_capacity(text.len() + with.len());
    out.push_str(&text[..start]);
    out.push_str(with);
    out.push_str(&text[end..]);
    out
}

/// A random site with a non-empty value, if there is one.
fn value_site(text: &str, rng: &mut Rng) -> Option<Site> {
    let all: Vec<Site> = sites(text)
        .into_iter()
        .filter(|s| s.value.1 > s.value.0)
        .collect();
    (!all.is_empty()).then(|| *rng.pick(&all))
}

/// A char boundary at or before `at`.
fn boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

// ---------------------------------------------------------------------------------------------
// YAML features
// ---------------------------------------------------------------------------------------------

const TAGS: &[&str] = &[
    "!!str ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!null ",
    "!!binary ",
    "!!map ",
    "!!seq ",
    "!!set ",
    "!!omap ",
    "!!timestamp ",
    "!custom ",
    "!<tag:yaml.org,2002:str> ",
    "! ",
    "!!python/object:x ",
    "!e!x ",
];

const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "99999999999999999999999999999999999999",
    "1e308",
    "1e400",
    "-1e400",
    "-0",
    "0.0",
    ".nan",
    ".inf",
    "-.inf",
    "0x7fffffff",
    "0o777",
    "0b101",
    "1_000",
    "1e-400",
    "2.5",
    "007",
];

const UNICODE: &[&str] = &[
    "中文",
    "处理客户投诉",
    "😀",
    "\u{202e}",
    "\u{200b}",
    "\u{feff}",
    "e\u{301}",
    "\u{ffff}",
    "\u{10ffff}",
    "\u{0}",
    "\u{1}",
    "\t",
    "\r",
    "\r\n",
    "\u{85}",
    "\u{2028}",
    "\u{2029}",
    "ǅ",
    "İ",
    "ß",
    "ﬃ",
    "\u{fffd}",
    "𝕏",
    "ا",
    "\u{1b}[31m",
];

const MARKERS: &[&str] = &[
    "---\n",
    "...\n",
    "--- |\n",
    "%YAML 1.2\n---\n",
    "%YAML 1.1\n---\n",
    "%TAG !e! tag:example.com,2000:\n---\n",
    "--- !!map\n",
    "\u{feff}",
    "---\n...\n---\n",
    "? complex\n: key\n",
    "<<: {}\n",
];

/// A string of `n` copies of a unit picked at random.
fn long_text(rng: &mut Rng, n: usize) -> String {
    let unit = *rng.pick(&[
        "a", "中", "😀", "x y", "\\", "'", "\"", ": ", "#", " ", "\u{301}", "ab1",
    ]);
    unit.repeat(n)
}

/// A value nested `n` levels, in one of YAML's styles; `indent` is the line's indentation.
fn nested(rng: &mut Rng, n: usize, indent: usize) -> String {
    match rng.below(5) {
        0 => format!("{}1{}", "[".repeat(n), "]".repeat(n)),
        1 => format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
        2 => format!("{}1", "- ".repeat(n.min(5000))),
        3 => {
            let n = n.min(400);
            let mut s = String::new();
            for d in 1..=n {
                s.push('\n');
                s.push_str(&" ".repeat(indent + 2 * d));
                s.push_str("b:");
            }
            s.push_str(" 1");
            s
        }
        _ => format!("{}1{}", "[{a: ".repeat(n / 2), "}]".repeat(n / 2)),
    }
}

fn yaml(text: &str, dict: &Dict, rng: &mut Rng) -> (&'static str, String) {
    let site = value_site(text, rng);
    let Some(site) = site else {
        let at = boundary(text, rng.below(text.len() + 1));
        return (
            "yaml-marker",
            splice(text, (at, at), rng.pick::<&str>(MARKERS)),
        );
    };
    let line_indent = text[site.line..].bytes().take_while(|&b| b == b' ').count();
    match rng.below(14) {
        0 => {
            // An anchor on one value, an alias to it in another.
            let all: Vec<Site> = sites(text)
                .into_iter()
                .filter(|s| s.value.1 > s.value.0)
                .collect();
            let later: Vec<&Site> = all.iter().filter(|s| s.value.0 > site.value.1).collect();
            let name = format!("a{}", rng.below(100));
            if later.is_empty() || rng.chance(1, 8) {
                let text = splice(text, site.value, &format!("*{name}"));
                return ("yaml-undefined-alias", text);
            }
            let target = **rng.pick(&later);
            let text = splice(text, target.value, &format!("*{name}"));
            let text = splice(&text, (site.value.0, site.value.0), &format!("&{name} "));
            ("yaml-anchor-alias", text)
        }
        1 => {
            // Aliases that expand exponentially (a "billion laughs").
            let (levels, width) = (rng.range(2, 10), rng.range(2, 10));
            let mut parts = vec![format!("&l0 [{}]", vec!["lol"; width].join(", "))];
            for l in 1..levels {
                let refs = vec![format!("*l{}", l - 1); width].join(", ");
                parts.push(format!("&l{l} [{refs}]"));
            }
            let value = format!("[{}]", parts.join(", "));
            ("yaml-alias-bomb", splice(text, site.value, &value))
        }
        2 => {
            // A merge key pulling an anchored mapping into a later one.
            let blocks: Vec<Site> = sites(text)
                .into_iter()
                .filter(|s| s.value.0 == s.value.1)
                .collect();
            if blocks.len() < 2 {
                return ("yaml-merge-empty", splice(text, site.value, "{ <<: {} }"));
            }
            let i = rng.below(blocks.len() - 1);
            let (a, b) = (blocks[i], blocks[rng.range(i + 1, blocks.len() - 1)]);
            let b_indent = text[b.line..].bytes().take_while(|&c| c == b' ').count();
            let merge = format!("\n{}<<: *m", " ".repeat(b_indent + 2));
            // The later edit first, so that the earlier offset stays right.
            let text = splice(text, (b.value.0, b.value.0), &merge);
            ("yaml-merge", splice(&text, (a.value.0, a.value.0), " &m"))
        }
        3 => flow_block(text, site, rng),
        4 => {
            let n = rng.size(300_000).max(1);
            let s = long_text(rng, n);
            let value = match rng.below(4) {
                0 => s,
                1 => quote(&s),
                2 => format!("'{}'", s.replace('\'', "''")),
                _ => {
                    let pad = " ".repeat(line_indent + 2);
                    let body: Vec<String> = s
                        .as_bytes()
                        .chunks(80)
                        .map(|c| format!("{pad}{}", String::from_utf8_lossy(c)))
                        .collect();
                    format!("|\n{}", body.join("\n"))
                }
            };
            ("yaml-long-string", splice(text, site.value, &value))
        }
        5 => {
            let n = rng.size(20_000).max(1);
            let value = nested(rng, n, line_indent);
            ("yaml-deep-nesting", splice(text, site.value, &value))
        }
        6 => (
            "yaml-huge-number",
            splice(text, site.value, rng.pick::<&str>(NUMBERS)),
        ),
        7 => {
            let u = rng.pick(UNICODE).repeat(rng.size(64).max(1));
            if rng.chance(1, 2) {
                let at = boundary(text, rng.below(text.len() + 1));
                ("yaml-unicode-insert", splice(text, (at, at), &u))
            } else {
                let old = &text[site.value.0..site.value.1];
                let new = if old.starts_with('"') {
                    quote(&(unquote(old) + &u))
                } else {
                    format!("{old}{u}")
                };
                ("yaml-unicode-value", splice(text, site.value, &new))
            }
        }
        8 => {
            // The same key twice: in a flow mapping, or as a copied line.
            let pair = text[site.key.0..site.value.1].to_owned();
            if text[site.line..site.key.0].contains('{') {
                (
                    "yaml-duplicate-key-flow",
                    splice(text, (site.value.1, site.value.1), &format!(", {pair}")),
                )
            } else {
                let line_end = text[site.value.1..]
                    .find('\n')
                    .map_or(text.len(), |e| site.value.1 + e + 1);
                let line = text[site.line..line_end].to_owned();
                let line = if line.ends_with('\n') {
                    line
                } else {
                    format!("\n{line}")
                };
                (
                    "yaml-duplicate-key",
                    splice(text, (line_end, line_end), &line),
                )
            }
        }
        9 => {
            let tag = *rng.pick(TAGS);
            ("yaml-tag", splice(text, (site.value.0, site.value.0), tag))
        }
        10 => {
            let at = if rng.chance(1, 2) { 0 } else { site.line };
            (
                "yaml-marker",
                splice(text, (at, at), rng.pick::<&str>(MARKERS)),
            )
        }
        11 => {
            // A key replaced by another key of the corpus (misplaced or unknown keys).
            let key = if rng.chance(7, 8) && !dict.keys.is_empty() {
                rng.pick(&dict.keys).clone()
            } else {
                let n = rng.size(5000).max(1);
                long_text(rng, n)
            };
            ("yaml-key", splice(text, site.key, &key))
        }
        12 => {
            // A multi-line plain or quoted scalar that folds.
            let pad = " ".repeat(line_indent + 1);
            let value = format!("\"first\n{pad}second \\\n{pad}third\"");
            ("yaml-folded", splice(text, site.value, &value))
        }
        _ => {
            let special = *rng.pick(&[
                "~", "null", "", "{}", "[]", "? a", "|-", ">+", "&x", "*", "-", ":", "'", "\"",
                "[", "{", "@x", "`x`", "%x",
            ]);
            ("yaml-special", splice(text, site.value, special))
        }
    }
}

/// Rewrites a flow mapping or sequence on one line as a block, or a block mapping (whose
/// children are simple `key: value` lines) as a flow mapping.
fn flow_block(text: &str, site: Site, rng: &mut Rng) -> (&'static str, String) {
    let value = &text[site.value.0..site.value.1];
    let key_col = site.key.0 - site.line;
    if (value.starts_with('{') || value.starts_with('['))
        && value.len() >= 2
        && text[site.line..site.key.0]
            .trim_start_matches(' ')
            .trim_start_matches("- ")
            .is_empty()
    {
        // Without its first and last characters (the last may be any, several bytes long).
        let mut chars = value.chars();
        chars.next();
        chars.next_back();
        let inner = chars.as_str();
        let items = split_top(inner);
        let pad = " ".repeat(key_col + 2);
        let mut block = String::new();
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            block.push('\n');
            block.push_str(&pad);
            if value.starts_with('[') {
                block.push_str("- ");
            }
            block.push_str(item);
        }
        return ("yaml-flow-to-block", splice(text, site.value, &block));
    }
    // Block to flow: the first block mapping start (`key:` alone) from a random point.
    let starts: Vec<Site> = sites(text)
        .into_iter()
        .filter(|s| s.value.0 == s.value.1)
        .collect();
    if starts.is_empty() {
        return ("yaml-flow-none", text.to_owned());
    }
    let s = *rng.pick(&starts);
    let base = text[s.line..].bytes().take_while(|&b| b == b' ').count();
    let after = text[s.value.1..]
        .find('\n')
        .map_or(text.len(), |e| s.value.1 + e + 1);
    let mut end = after;
    let mut items = Vec::new();
    let mut seq = None;
    for line in text[after..].split_inclusive('\n') {
        let indent = line.bytes().take_while(|&b| b == b' ').count();
        let body = line.trim();
        if body.is_empty() || body.starts_with('#') {
            end += line.len();
            continue;
        }
        if indent <= base {
            break;
        }
        let is_item = body.starts_with("- ");
        if *seq.get_or_insert(is_item) != is_item || body.ends_with(':') {
            return ("yaml-flow-none", text.to_owned());
        }
        items.push(body.trim_start_matches("- ").to_owned());
        end += line.len();
    }
    if items.is_empty() {
        return ("yaml-flow-none", text.to_owned());
    }
    let flow = if seq == Some(true) {
        format!(" [{}]\n", items.join(", "))
    } else {
        format!(" {{ {} }}\n", items.join(", "))
    };
    ("yaml-block-to-flow", splice(text, (s.value.0, end), &flow))
}

/// Splits flow content at its top-level commas.
fn split_top(inner: &str) -> Vec<&str> {
    let b = inner.as_bytes();
    let (mut out, mut depth, mut start, mut i) = (Vec::new(), 0usize, 0, 0);
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i = skip_quoted(b, i);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&inner[start.min(inner.len())..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Dictionary values
// ---------------------------------------------------------------------------------------------

const VALUES: &[&str] = &[
    // durations
    "0s",
    "1s",
    "59s",
    "1m",
    "4h",
    "4h business",
    "0h business",
    "-1h",
    "-5h",
    "''",
    "tomorrow",
    "99999999d",
    "9223372036854775807s",
    "1.5h",
    "1h30m",
    "1h business business",
    "2d business",
    "1000000h business",
    "100000d",
    "P1D",
    "1d1d",
    "4 h",
    "4H",
    "1ns",
    "{ expr: \"'4h'\" }",
    "{ expr: \"'-5h'\" }",
    "{ expr: \"''\" }",
    "{ expr: \"'tomorrow'\" }",
    "{ expr: \"'0s'\" }",
    "{ after: 1h }",
    "{ after: 4h business, calendar: other }",
    // hours, dates, instants
    "[\"09:00-12:00\"]",
    "[\"00:00-24:00\"]",
    "[\"23:59-00:00\"]",
    "[\"12:00-09:00\"]",
    "[\"24:00-25:00\"]",
    "[\"09:00-09:00\"]",
    "[\"9-12\"]",
    "[\"00:00-00:01\", \"00:00-00:01\"]",
    "[\"02:00-03:00\"]",
    "2026-02-29",
    "2026-02-30",
    "2026-13-01",
    "0000-01-01",
    "9999-12-31",
    "2100-12-31",
    "2101-01-01",
    "1900-01-01",
    "2026-10-01",
    "2026-09-30T16:00:00+08:00",
    "2020-01-01T00:00:00Z",
    "+262143-12-31T23:59:59Z",
    "-262143-01-01T00:00:00Z",
    "2026-03-08T02:30:00-05:00",
    // zones
    "Asia/Shanghai",
    "UTC",
    "America/Sao_Paulo",
    "Pacific/Apia",
    "Australia/Lord_Howe",
    "Europe/London",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Etc/GMT+12",
    "Etc/GMT-14",
    "Nowhere/None",
    "Pacific/Kiritimati",
    "America/New_York",
    "Antarctica/Troll",
    // scalars
    "true",
    "false",
    "yes",
    "no",
    "~",
    "null",
    "on",
    "off",
    "[]",
    "{}",
    "[{}]",
    "{ a: 1 }",
    "[1, [2, [3]]]",
    // enumerations
    "start",
    "end",
    "user_task",
    "service_task",
    "exclusive",
    "parallel",
    "timer",
    "inclusive",
    "bogus",
    "notify",
    "reassign",
    "urge",
    "statutory",
    "error",
    "weekends_only",
    "string",
    "integer",
    "number",
    "boolean",
    "object",
    "array",
    "any",
    "ok",
    "denied",
    "failed",
    "invalid",
    "vetoed",
    "running",
    "completed",
    "cancelled",
    "closed",
];

fn dictionary(text: &str, dict: &Dict, rng: &mut Rng) -> (&'static str, String) {
    let Some(site) = value_site(text, rng) else {
        return ("dict-none", text.to_owned());
    };
    let value = if rng.chance(1, 2) || dict.values.is_empty() {
        (*rng.pick(VALUES)).to_owned()
    } else {
        rng.pick(&dict.values).clone()
    };
    ("dict-value", splice(text, site.value, &value))
}

// ---------------------------------------------------------------------------------------------
// CEL
// ---------------------------------------------------------------------------------------------

const CEL_ATOMS: &[&str] = &[
    "0",
    "1",
    "-1",
    "42",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551615u",
    "18446744073709551616u",
    "0x7fffffffffffffff",
    "1.5",
    "1e308",
    "1e400",
    "-0.0",
    "true",
    "false",
    "null",
    "'4h'",
    "'-5h'",
    "''",
    "'tomorrow'",
    "'4h business'",
    "'0s'",
    "'99999999d'",
    "b'\\xff'",
    "\"\"\"multi\nline\"\"\"",
    "r'raw\\'",
    "'\\u00e4'",
    "'\\U0010ffff'",
    "'中'",
    "[]",
    "{}",
    "[1, 2, 3]",
    "{'a': 1}",
    "duration('1h')",
    "timestamp('2026-01-01T00:00:00Z')",
];

const CEL_BINARY: &[&str] = &[
    " + ", " - ", " * ", " / ", " % ", " == ", " != ", " < ", " <= ", " > ", " >= ", " && ",
    " || ", " in ",
];

const CEL_FUNCS: &[&str] = &[
    "size",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "duration",
    "timestamp",
    "type",
    "dyn",
    "has",
    "max",
    "min",
];

const CEL_MACROS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];

const CEL_METHODS: &[&str] = &[
    ".size()",
    ".contains('a')",
    ".startsWith('4')",
    ".endsWith('h')",
    ".matches('(a+)+$')",
    ".matches('[')",
    ".getSeconds()",
    ".getHours()",
    ".lowerAscii()",
];

const CEL_UNLEXABLE: &[&str] = &[
    "#", "$", "@", "`", "\\", "\u{7}", "中", "\u{202e}", "~", ";", "'", "\"", "\u{0}", "{", "]",
];

/// A random CEL expression `depth` levels deep at most, over `idents`.
pub(crate) fn gen_expr(rng: &mut Rng, depth: usize, idents: &[String]) -> String {
    let atom = |rng: &mut Rng| {
        if rng.chance(1, 2) && !idents.is_empty() {
            rng.pick(idents).clone()
        } else {
            (*rng.pick(CEL_ATOMS)).to_owned()
        }
    };
    if depth == 0 || rng.chance(1, 4) {
        return atom(rng);
    }
    let d = depth - 1;
    match rng.below(12) {
        0 | 1 => {
            let op = *rng.pick(CEL_BINARY);
            format!(
                "{}{op}{}",
                gen_expr(rng, d, idents),
                gen_expr(rng, d, idents)
            )
        }
        2 => format!(
            "{}({})",
            rng.pick(&["!", "-", "!!", "--"]),
            gen_expr(rng, d, idents)
        ),
        3 => format!(
            "{} ? {} : {}",
            gen_expr(rng, d, idents),
            gen_expr(rng, d, idents),
            gen_expr(rng, d, idents)
        ),
        4 => format!("{}({})", rng.pick(CEL_FUNCS), gen_expr(rng, d, idents)),
        5 => format!(
            "{}.{}",
            gen_expr(rng, d, idents),
            rng.pick(&["b", "lines", "qty", "size", "x"])
        ),
        6 => format!("{}[{}]", gen_expr(rng, d, idents), gen_expr(rng, d, idents)),
        7 => format!(
            "[{}, {}]",
            gen_expr(rng, d, idents),
            gen_expr(rng, d, idents)
        ),
        8 => format!(
            "{{{}: {}}}",
            gen_expr(rng, d, idents),
            gen_expr(rng, d, idents)
        ),
        9 => {
            let var = format!("m{}", rng.below(4));
            let mut inner: Vec<String> = idents.to_vec();
            inner.push(var.clone());
            format!(
                "{}.{}({var}, {})",
                gen_expr(rng, d, idents),
                rng.pick(CEL_MACROS),
                gen_expr(rng, d, &inner)
            )
        }
        10 => format!("{}{}", gen_expr(rng, d, idents), rng.pick(CEL_METHODS)),
        _ => format!("({})", gen_expr(rng, d, idents)),
    }
}

/// Mutates one CEL expression.
fn cel_expr(expr: &str, dict: &Dict, rng: &mut Rng) -> (&'static str, String) {
    let ident = if dict.idents.is_empty() {
        "v".to_owned()
    } else {
        rng.pick(&dict.idents).clone()
    };
    let short = if expr.len() < 200 {
        expr.to_owned()
    } else {
        "1".to_owned()
    };
    match rng.below(16) {
        0 => {
            let n = rng.size(25_000).max(2);
            let op = *rng.pick(&[" + ", " && ", " || ", " * ", " - ", "+"]);
            let term = if rng.chance(1, 2) {
                "1".to_owned()
            } else {
                format!("({short})")
            };
            let chain = vec![term; n].join(op);
            ("cel-chain", format!("{chain} == 2"))
        }
        1 => {
            let n = rng.size(400).max(1);
            (
                "cel-parens",
                format!("{}{expr}{}", "(".repeat(n), ")".repeat(n)),
            )
        }
        2 => {
            // Nested macros over a list, the body reading the outer variables.
            let levels = rng.range(1, 6);
            let list = if rng.chance(1, 2) {
                ident.clone()
            } else {
                "[1, 2, 3]".to_owned()
            };
            let mut e = if rng.chance(1, 2) {
                "a0 == a1".to_owned()
            } else {
                short.clone()
            };
            for i in 0..levels {
                let over = if rng.chance(1, 3) && i > 0 {
                    format!("a{}", i + 1)
                } else {
                    list.clone()
                };
                e = format!("{over}.{}(a{i}, {e})", rng.pick(CEL_MACROS));
            }
            ("cel-macros", e)
        }
        3 => {
            let n = rng.size(40_000).max(1);
            let junk = rng.pick(CEL_UNLEXABLE).repeat(n);
            let at = boundary(expr, rng.below(expr.len() + 1));
            ("cel-unlexable", splice(expr, (at, at), &junk))
        }
        4 => {
            let n = rng.size(200_000).max(1);
            let unit = *rng.pick(&["中", "a", "\\n", "😀", "\\'", "\\u00e4", "%"]);
            (
                "cel-long-string",
                format!("{ident} == '{}'", unit.repeat(n)),
            )
        }
        5 => {
            let n = rng.size(80_000).max(1);
            let at = boundary(expr, rng.below(expr.len() + 1));
            ("cel-long-column", splice(expr, (at, at), &" ".repeat(n)))
        }
        6 => {
            let n = rng.size(5_000).max(1);
            let step = *rng.pick(&[".b", "[0]", "['k']", ".size()", "[ident]"]);
            ("cel-deep-path", format!("{ident}{} == 1", step.repeat(n)))
        }
        7 => {
            let n = rng.size(200).max(1);
            (
                "cel-ternaries",
                format!("{}{short}{}", "true ? (".repeat(n), ") : false".repeat(n)),
            )
        }
        8 => {
            let n = rng.size(300).max(1);
            let (open, close) = *rng.pick(&[
                ("[", "]"),
                ("{'a': ", "}"),
                ("size(", ")"),
                ("int(", ")"),
                ("!", ""),
            ]);
            (
                "cel-nesting",
                format!("{}{short}{}", open.repeat(n), close.repeat(n)),
            )
        }
        9 => {
            let ops = ["==", "!=", "&&", "||", "<", ">", "+", " in ", "?", ":", "."];
            let from = *rng.pick(&ops);
            let to = *rng.pick(&ops);
            ("cel-swap-operator", expr.replacen(from, to, 1))
        }
        10 => {
            let token = *rng.pick(&[
                "(", ")", "[", "]", ".", ",", "'", "\"", "!", "-", "?", ":", "in", "1", "x", "all",
                "\\",
            ]);
            let at = boundary(expr, rng.below(expr.len() + 1));
            ("cel-token", splice(expr, (at, at), token))
        }
        11 => {
            let depth = rng.range(1, 8);
            ("cel-generated", gen_expr(rng, depth, &dict.idents))
        }
        12 => {
            let f = *rng.pick(CEL_FUNCS);
            ("cel-call", format!("{f}({expr})"))
        }
        13 => {
            let atom = *rng.pick(CEL_ATOMS);
            (
                "cel-edge-number",
                format!("{short} {} {atom}", rng.pick(CEL_BINARY).trim()),
            )
        }
        14 => {
            let dur = *rng.pick(&[
                "'-5h'",
                "''",
                "'tomorrow'",
                "'0s'",
                "'1ns'",
                "'99999999d'",
                "'4h business'",
                "'1h business business'",
                "'9223372036854775807s'",
                "'P1D'",
            ]);
            (
                "cel-duration-text",
                if rng.chance(1, 2) {
                    dur.to_owned()
                } else {
                    format!("{short} ? {dur} : '4h'")
                },
            )
        }
        _ => {
            let n = rng.size(10_000).max(1);
            (
                "cel-list",
                format!("size([{}]) > 0", vec!["1"; n].join(", ")),
            )
        }
    }
}

fn cel(text: &str, dict: &Dict, rng: &mut Rng) -> (&'static str, String) {
    let all = sites(text);
    let exprs: Vec<&Site> = all
        .iter()
        .filter(|s| matches!(&text[s.key.0..s.key.1], "when" | "expr") && s.value.1 > s.value.0)
        .collect();
    if let Some(site) = (!exprs.is_empty() && rng.chance(7, 8)).then(|| **rng.pick(&exprs)) {
        let expr = unquote(&text[site.value.0..site.value.1]);
        let (name, new) = cel_expr(&expr, dict, rng);
        return (name, splice(text, site.value, &quote(&new)));
    }
    // A duration computed by an expression, where the text has a fixed one.
    let durations: Vec<&Site> = all
        .iter()
        .filter(|s| {
            matches!(
                &text[s.key.0..s.key.1],
                "due" | "every" | "after" | "before" | "claim_due" | "max"
            )
        })
        .collect();
    if durations.is_empty() {
        return yaml(text, dict, rng);
    }
    let site = **rng.pick(&durations);
    let depth = rng.range(0, 5);
    let expr = if rng.chance(1, 2) {
        (*rng.pick(&[
            "'-5h'",
            "''",
            "'tomorrow'",
            "'0s'",
            "'4h'",
            "'4h business'",
            "'99999999d'",
        ]))
        .to_owned()
    } else {
        gen_expr(rng, depth, &dict.idents)
    };
    (
        "cel-computed-duration",
        splice(text, site.value, &format!("{{ expr: {} }}", quote(&expr))),
    )
}
