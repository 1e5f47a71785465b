//! What a config error says: the key it is about (its full dotted path,
//! `apps.web.blue.servers[0]`), the line that key is written on, and why.
//! Lines come from the spans of the parsed document, not from searching
//! the text.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike};

/// One problem with a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The full dotted key path (`limits.client_idle_timeout`,
    /// `apps.shop.rules[1].percent`); empty for a file that is not TOML.
    pub key: String,
    /// The 1-based line of the key in the file, when it is written there
    /// (a missing key has none: the line of its table is given instead).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `key: message (line N)`, as `cutover check` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        match self.line {
            Some(n) => write!(f, " (line {n})"),
            None => Ok(()),
        }
    }
}

/// Every error of one config, in the order found: a file is reported whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// One error without a key or line (a file that cannot be read).
    pub fn single(message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            key: String::new(),
            line: None,
            message: message.into(),
        }])
    }

    /// Each error as `cutover check` prints it, joined by `sep`.
    pub fn join(&self, sep: &str) -> String {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        all.join(sep)
    }
}

impl std::ops::Deref for ConfigErrors {
    type Target = [ConfigError];
    fn deref(&self) -> &[ConfigError] {
        &self.0
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `cutover check --json` lists each error as the line it prints.
impl serde::Serialize for ConfigErrors {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

/// For callers that report errors as text (a reload's answer).
impl From<ConfigErrors> for Vec<String> {
    fn from(errors: ConfigErrors) -> Vec<String> {
        errors.0.iter().map(ToString::to_string).collect()
    }
}

/// Collects errors so that one run reports all of them; their lines are
/// filled in at the end, from the document.
#[derive(Debug, Default)]
pub(crate) struct Errors(pub Vec<ConfigError>);

impl Errors {
    pub fn push(&mut self, key: impl Into<String>, message: impl fmt::Display) {
        self.0.push(ConfigError {
            key: key.into(),
            line: None,
            message: message.to_string(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each error without a line gets the line its key has in `doc`.
    pub fn located(self, doc: &ImDocument<&str>) -> ConfigErrors {
        ConfigErrors(
            self.0
                .into_iter()
                .map(|mut e| {
                    if e.line.is_none() {
                        e.line = line_of(doc, &e.key);
                    }
                    e
                })
                .collect(),
        )
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// `a.b[1].c` as its segments.
pub(crate) fn segments(key: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            out.push(Segment::Key(name.to_string()));
        }
        for index in pieces {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

/// The segments as a key: `a.b[1].c`.
pub(crate) fn key_of(path: &[Segment]) -> String {
    let mut key = String::new();
    for s in path {
        match s {
            Segment::Key(k) if key.is_empty() => key.push_str(k),
            Segment::Key(k) => {
                key.push('.');
                key.push_str(k);
            }
            Segment::Index(i) => key.push_str(&format!("[{i}]")),
        }
    }
    key
}

/// The 1-based line where `key` is written in `doc`; for a key that is
/// not there (a missing one), the line of the deepest table on its path
/// that is. `None` when no part of it is written.
pub(crate) fn line_of(doc: &ImDocument<&str>, key: &str) -> Option<usize> {
    let mut item: &Item = doc.as_item();
    let mut span: Option<Range<usize>> = None;
    for segment in segments(key) {
        let next = match &segment {
            Segment::Key(k) => item
                .as_table_like()
                .and_then(|t: &dyn TableLike| t.get_key_value(k))
                .map(|(key, value)| (key.span().or_else(|| value.span()), value)),
            Segment::Index(i) => item.get(*i).map(|value| (value.span(), value)),
        };
        let Some((here, next)) = next else { break };
        span = here.or(span);
        item = next;
    }
    let start = span?.start;
    Some(doc.raw()[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[server]\nworkers = 2\n\n[apps.shop]\nlive = \"red\"\n[apps.shop.blue]\nservers = []\nhealth = { path = \"x\" }\n[[apps.shop.rules]]\nname = \"a\"\n[[apps.shop.rules]]\nname = \"b\"\npercent = 150\nclient_ip = [\"a\",\n  \"b\"]\n";

    #[test]
    fn a_key_is_found_on_its_line_and_a_missing_one_on_its_tables() {
        let doc = ImDocument::parse(TEXT).unwrap();
        let line = |key: &str| line_of(&doc, key);
        assert_eq!(line("server.workers"), Some(2));
        assert_eq!(line("apps.shop.live"), Some(5));
        assert_eq!(line("apps.shop.blue.servers"), Some(7));
        assert_eq!(line("apps.shop.blue.health.path"), Some(8));
        assert_eq!(line("apps.shop.rules[1].percent"), Some(13));
        assert_eq!(line("apps.shop.rules[1].client_ip[1]"), Some(15));
        // Missing: its table's line.
        assert_eq!(line("apps.shop.rules[0].to"), Some(9));
        assert_eq!(line("apps.shop.green"), Some(4));
        assert_eq!(line("limits.max_body_bytes"), None);
    }

    #[test]
    fn a_key_path_reads_back_as_it_was_written() {
        for key in ["apps.shop.rules[1].percent", "admin.tokens[0]", "server"] {
            assert_eq!(key_of(&segments(key)), key);
        }
    }
}
