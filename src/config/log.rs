//! `[access_log]` and a listener's `access_log`: where each request's line goes, in which
//! format, and which requests are logged; and `[tracing]`, the `traceparent` Weir makes.
//!
//! Owns: the file form of [`AccessLogSpec`] (owned by `observe::access_log`, re-exported
//! here) and its checks: the format's field names, `only`, `sample`, and that a file's
//! directory exists.
//!
//! Must not: open or create the log file (the writer does, at start and at each reload),
//! or be consulted on the request path in its file form.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::errors::Checker;
pub use crate::observe::access_log::{AccessLogSpec, Destination, Field, Format, Only};

/// A listener's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerLog {
    /// The global `[access_log]`, if there is one.
    Inherit,
    /// `access_log = false`: none for this listener.
    Off,
    /// Its own.
    Own(AccessLogSpec),
}

// ---------------------------------------------------------------------------------------
// The file format. Every table rejects unknown keys.
// ---------------------------------------------------------------------------------------

/// `[access_log]`, or a listener's `access_log = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccessLogFile {
    /// A file (relative to this config file; appended to, created if missing) or
    /// `"stderr"`.
    path: Spanned<String>,
    /// `"json"` (default: every field), `"clf"` (nginx's combined format), or a list of
    /// `$context` names for the JSON line, like `["requestId", "status"]`.
    format: Option<Spanned<FormatFile>>,
    /// `"all"` (default) or `"errors"` (status 400 and above, and Weir's own answers).
    only: Option<Spanned<String>>,
    /// Log one in this many of the requests `only` selects. Default 1.
    sample: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FormatFile {
    Preset(String),
    Fields(Vec<String>),
}

/// `[tracing]`: W3C Trace Context.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TracingFile {
    /// Start a trace (send a new `traceparent` upstream) for a request that has no valid
    /// one. Default true; a valid one is always passed on as it came.
    pub(super) generate: Option<bool>,
}

/// A listener's `access_log`: a table, or `false`.
#[derive(Debug)]
pub(super) enum ListenerLogFile {
    Switch(bool),
    Own(AccessLogFile),
}

// By hand rather than `#[serde(untagged)]`: an untagged enum buffers its input, which
// loses the positions `Spanned` needs for errors that name their line.
impl<'de> Deserialize<'de> for ListenerLogFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = ListenerLogFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table like { path = \"access.log\" }, or false")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(ListenerLogFile::Switch(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                AccessLogFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ListenerLogFile::Own)
            }
        }
        d.deserialize_any(Either)
    }
}

// ---------------------------------------------------------------------------------------
// Resolving and checking
// ---------------------------------------------------------------------------------------

pub(super) fn resolve_access_log(
    raw: Spanned<AccessLogFile>,
    ck: &mut Checker,
) -> Option<AccessLogSpec> {
    let span = raw.span();
    let raw = raw.into_inner();
    let destination = match raw.path.get_ref().as_str() {
        "stderr" => Destination::Stderr,
        "" => {
            ck.error(
                raw.path.span(),
                "the access log needs a file path, or \"stderr\"",
            );
            return None;
        }
        p => {
            let dir = Path::new(ck.file).parent().unwrap_or(Path::new("."));
            let path = dir.join(p);
            let parent = path.parent().unwrap_or(Path::new("."));
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                ck.error(
                    raw.path.span(),
                    format!(
                        "no directory {} for the access log: create it, or write \"stderr\"",
                        parent.display()
                    ),
                );
            }
            Destination::File(path)
        }
    };
    let format = match raw.format {
        None => Format::Json(Field::ALL.iter().map(|(f, _)| *f).collect()),
        Some(f) => {
            let at = f.span();
            match f.into_inner() {
                FormatFile::Preset(p) if p == "json" => {
                    Format::Json(Field::ALL.iter().map(|(f, _)| *f).collect())
                }
                FormatFile::Preset(p) if p == "clf" || p == "combined" => Format::Clf,
                FormatFile::Preset(p) => {
                    ck.error(
                        at,
                        format!("format `{p}`: write \"json\", \"clf\", or a list of field names"),
                    );
                    return None;
                }
                FormatFile::Fields(names) => {
                    let mut fields = Vec::new();
                    for n in &names {
                        match Field::named(n) {
                            Some(f) => fields.push(f),
                            None => {
                                let known: Vec<&str> = Field::ALL.iter().map(|(_, n)| *n).collect();
                                ck.error(
                                    at.clone(),
                                    format!(
                                        "no access log field `{n}`: the fields are {}",
                                        known.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                    if names.is_empty() {
                        ck.error(
                            at,
                            "an empty list of fields logs nothing: name some, or write \"json\"",
                        );
                    }
                    Format::Json(fields)
                }
            }
        }
    };
    let only = match raw.only.as_ref().map(|o| o.get_ref().as_str()) {
        None | Some("all") => Only::All,
        Some("errors") => Only::Errors,
        Some(other) => {
            let at = raw.only.as_ref().map_or(span.clone(), |o| o.span());
            ck.error(
                at,
                format!("only = \"{other}\": write \"all\" or \"errors\""),
            );
            Only::All
        }
    };
    let sample = match raw.sample {
        None => 1,
        Some(s) if *s.get_ref() == 0 => {
            ck.error(
                s.span(),
                "sample = 0 logs nothing: write 1 to log every request, or N for one in N",
            );
            1
        }
        Some(s) => *s.get_ref(),
    };
    Some(AccessLogSpec {
        destination,
        format,
        only,
        sample,
    })
}

pub(super) fn resolve_listener_log(
    raw: Option<Spanned<ListenerLogFile>>,
    ck: &mut Checker,
) -> ListenerLog {
    let Some(raw) = raw else {
        return ListenerLog::Inherit;
    };
    let span = raw.span();
    match raw.into_inner() {
        ListenerLogFile::Switch(false) => ListenerLog::Off,
        ListenerLogFile::Switch(true) => {
            ck.error(
                span,
                "access_log = true: leave it out to use [access_log], or write a table like { path = \"access.log\" }",
            );
            ListenerLog::Inherit
        }
        ListenerLogFile::Own(file) => match resolve_access_log(Spanned::new(span, file), ck) {
            Some(spec) => ListenerLog::Own(spec),
            None => ListenerLog::Inherit,
        },
    }
}
