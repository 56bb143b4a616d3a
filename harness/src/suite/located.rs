//! Errors with locations: every problem is reported as `file:line:column: key: message`.

use std::fmt;
use std::path::PathBuf;

// ---------------------------------------------------------------------------------------------
// Errors with locations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `run[2].published.row`.
    pub key: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct SuiteError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SuiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.key.is_empty()) {
                (0, _) => write!(f, "{}: {}", self.file.display(), p.message)?,
                (_, true) => write!(f, "{}:{}:{}: {}", self.file.display(), p.line, p.column, p.message)?,
                _ => write!(f, "{}:{}:{}: {}: {}", self.file.display(), p.line, p.column, p.key, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for SuiteError {}

/// Maps byte offsets to key paths and back, from toml_edit's spans.
pub(super) struct Locator<'a> {
    text: &'a str,
    /// (start offset, key path) of every key, table header and array element, sorted by offset.
    entries: Vec<(usize, String)>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let mut entries = Vec::new();
        // A syntax error leaves no tree; toml's own error still has the offset, and the path is
        // then simply left empty.
        if let Ok(doc) = toml_edit::ImDocument::parse(text) {
            collect_table(doc.as_table(), "", &mut entries);
        }
        entries.sort_by_key(|e| e.0);
        Self { text, entries }
    }

    /// The key path of the innermost entry starting at or before `offset`.
    pub(super) fn path_at(&self, offset: usize) -> String {
        self.entries.iter().rev().find(|(start, _)| *start <= offset).map(|(_, p)| p.clone()).unwrap_or_default()
    }

    /// Offset of `path`, or of its nearest ancestor that is written in the file.
    pub(super) fn offset_of(&self, path: &str) -> usize {
        let mut candidate = path.to_string();
        loop {
            if let Some((start, _)) = self.entries.iter().find(|(_, p)| *p == candidate) {
                return *start;
            }
            match parent_path(&candidate) {
                Some(parent) => candidate = parent,
                None => return 0,
            }
        }
    }

    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, column)
    }
}

pub(super) fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        return path.rfind('[').map(|i| path[..i].to_string());
    }
    Some(path.rfind('.').map(|i| path[..i].to_string()).unwrap_or_default())
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn collect_table(table: &toml_edit::Table, prefix: &str, out: &mut Vec<(usize, String)>) {
    for (name, item) in table.iter() {
        let path = join_key(prefix, name);
        if let Some((key, _)) = table.get_key_value(name) {
            if let Some(span) = key.span() {
                out.push((span.start, path.clone()));
            }
        }
        collect_item(item, &path, out);
    }
}

fn collect_item(item: &toml_edit::Item, path: &str, out: &mut Vec<(usize, String)>) {
    match item {
        toml_edit::Item::Table(t) => {
            if let Some(span) = t.span() {
                out.push((span.start, path.to_string()));
            }
            collect_table(t, path, out);
        }
        toml_edit::Item::ArrayOfTables(array) => {
            for (i, t) in array.iter().enumerate() {
                let element = format!("{path}[{i}]");
                if let Some(span) = t.span() {
                    out.push((span.start, element.clone()));
                }
                collect_table(t, &element, out);
            }
        }
        toml_edit::Item::Value(value) => collect_value(value, path, out),
        toml_edit::Item::None => {}
    }
}

fn collect_value(value: &toml_edit::Value, path: &str, out: &mut Vec<(usize, String)>) {
    match value {
        toml_edit::Value::InlineTable(t) => {
            for (name, v) in t.iter() {
                let p = join_key(path, name);
                if let Some((key, _)) = t.get_key_value(name) {
                    if let Some(span) = key.span() {
                        out.push((span.start, p.clone()));
                    }
                }
                collect_value(v, &p, out);
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(span) = v.span() {
                    out.push((span.start, p.clone()));
                }
                collect_value(v, &p, out);
            }
        }
        _ => {}
    }
}
