//! Config errors: every mistake in a file, each with its `file:line:column`, all in one run.
//!
//! Owns: [`ConfigError`] and [`ConfigErrors`], the `Checker` every section reports through,
//! `span_of`, and the machinery that finds every unknown key and wrong type rather than only
//! the first (`deserialize_all`, which takes each bad entry out and tries again).
//!
//! Must not: know any config section, do I/O, or be consulted on the request path.

use std::fmt;
use std::ops::Range;

use serde::de;
use toml::Spanned;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// One mistake in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// Every mistake found in one file, in file order.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(super) struct Checker<'a> {
    pub(super) src: &'a str,
    pub(super) file: &'a str,
    pub(super) errors: Vec<ConfigError>,
}

impl Checker<'_> {
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// Where an optional key was written; nowhere (the file as a whole) when it was not.
pub(super) fn span_of<T>(v: &Option<Spanned<T>>) -> Range<usize> {
    v.as_ref().map_or(0..0, Spanned::span)
}

/// What [`deserialize_all`] had to take out of the document.
#[derive(Default)]
pub(super) struct Damage {
    /// The spans of the tables that lost an entry.
    pub(super) tables: Vec<Range<usize>>,
    /// A whole table (or array element) was taken out.
    pub(super) dropped_table: bool,
}

/// Deserializes the file, reporting every unknown key and every value of the wrong type,
/// not only the first: serde stops at the first mistake, so each mistake found is recorded
/// and the entry holding it (the key and its value, or the array element) is taken out
/// of the parsed document before trying again. Spans always refer to the text as
/// written, so every message keeps its line and column. `None` when nothing can be
/// trusted (a syntax error).
pub(super) fn deserialize_all<T: de::DeserializeOwned>(
    src: &str,
    ck: &mut Checker,
) -> (Option<T>, Damage) {
    let mut damage = Damage::default();
    let mut doc = match toml::de::DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            ck.error(e.span().unwrap_or(0..0), e.message().trim().to_string());
            return (None, damage);
        }
    };
    for _ in 0..1000 {
        let e = match T::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => return (Some(raw), damage),
            Err(e) => e,
        };
        let at = e.span().unwrap_or(0..0);
        // A table that lost an entry may now lack a required key: already reported.
        let consequence = damage
            .tables
            .iter()
            .any(|t| *t == at || holds(at.clone(), t));
        if !consequence {
            ck.error(at.clone(), e.message().trim().to_string());
        }
        if !remove_entry_at(doc.get_mut(), 0..0, &at, &mut damage) {
            break;
        }
    }
    (None, damage)
}

/// Takes out of `table` (whose own span is `span`) the innermost entry holding `at`: a
/// key whose span is `at`, or the key and value, or array element, whose value contains
/// it. Every child is searched, deepest first: a `[header]` table's span is its header
/// line only, not the keys under it.
fn remove_entry_at(
    table: &mut toml::de::DeTable,
    span: Range<usize>,
    at: &Range<usize>,
    damage: &mut Damage,
) -> bool {
    let mut found = None;
    for (key, value) in table.iter_mut() {
        if remove_in_value(value, at, damage) {
            return true;
        }
        if found.is_none() && (key.span() == *at || holds(value.span(), at)) {
            let is_table = matches!(value.get_ref(), toml::de::DeValue::Table(_));
            found = Some((key.get_ref().to_string(), is_table));
        }
    }
    let Some((name, is_table)) = found else {
        return false;
    };
    table.remove(name.as_str());
    damage.tables.push(span);
    damage.dropped_table |= is_table;
    true
}

fn remove_in_value(
    value: &mut toml::Spanned<toml::de::DeValue>,
    at: &Range<usize>,
    damage: &mut Damage,
) -> bool {
    let span = value.span();
    match value.get_mut() {
        toml::de::DeValue::Table(t) => remove_entry_at(t, span, at, damage),
        toml::de::DeValue::Array(items) => {
            for item in items.iter_mut() {
                if remove_in_value(item, at, damage) {
                    return true;
                }
            }
            let Some(i) = items.iter().position(|v| holds(v.span(), at)) else {
                return false;
            };
            damage.dropped_table |= matches!(items[i].get_ref(), toml::de::DeValue::Table(_));
            damage.tables.push(span);
            *items = items
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, v)| v.clone())
                .collect();
            true
        }
        _ => false,
    }
}

fn holds(outer: Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && !outer.is_empty()
}
