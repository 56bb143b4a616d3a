//! Sweep and training logs for power-law fits: CSV with a header row, or JSON lines (one object
//! per line). Columns are addressed by name; `params`, `compute` and `loss` also match their
//! common spellings (see [`ALIASES`]).
//!
//! Row numbers in errors are 1-based line numbers of the file, so the header of a CSV is line 1
//! and its first data row is line 2.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::fit::{Point, MIN_POINTS};

/// Accepted spellings for the canonical column names, tried in this order when the requested
/// name is not itself a column. The first one present wins.
pub const ALIASES: &[(&str, &[&str])] = &[
    ("params", &["params", "n_params", "num_params", "parameters", "N"]),
    ("compute", &["compute", "flops", "train_flops", "compute_flops", "C"]),
    ("loss", &["loss", "test_loss", "val_loss", "eval_loss"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Csv,
    JsonLines,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Number(f64),
    Text(String),
    Missing,
}

#[derive(Debug, Clone)]
pub struct LogRow {
    /// 1-based line in the file.
    pub line: usize,
    /// One cell per entry of [`SweepLog::columns`].
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone)]
pub struct SweepLog {
    pub path: PathBuf,
    pub format: LogFormat,
    pub columns: Vec<String>,
    pub rows: Vec<LogRow>,
}

#[derive(Debug, Error)]
pub enum SweepLogError {
    #[error("{path}: cannot read")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path}: the log has no rows")]
    Empty { path: PathBuf },
    #[error("{path}: no column `{requested}`{tried}; available columns: {}", available.join(", "))]
    MissingColumn { path: PathBuf, requested: String, tried: String, available: Vec<String> },
    #[error("{path}:{line}: column `{column}` is {found}, expected a number")]
    NotNumeric { path: PathBuf, line: usize, column: String, found: String },
    #[error("{path}: {group}has {n} usable points; a power-law fit needs at least {MIN_POINTS}")]
    TooFewPoints { path: PathBuf, group: String, n: usize },
}

/// Points extracted from a log for one fit, split by the group column if one was asked for.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// The resolved column names (after alias lookup).
    pub x_column: String,
    pub y_column: String,
    pub group_column: Option<String>,
    /// `(group label, points)`, groups in order of first appearance; one group named `all`
    /// when no group column was given.
    pub groups: Vec<(String, Vec<Point>)>,
}

impl SweepLog {
    /// Reads a log, choosing the format by extension (`.csv`; `.jsonl`, `.ndjson`, `.json`) or,
    /// for other names, by whether the first non-blank character is `{`.
    pub fn read(path: &Path) -> Result<Self, SweepLogError> {
        let text = std::fs::read_to_string(path).map_err(|source| SweepLogError::Io { path: path.to_path_buf(), source })?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let format = match ext.as_str() {
            "csv" => LogFormat::Csv,
            "jsonl" | "ndjson" | "json" => LogFormat::JsonLines,
            _ if text.trim_start().starts_with('{') => LogFormat::JsonLines,
            _ => LogFormat::Csv,
        };
        Self::parse(path, &text, format)
    }

    pub fn parse(path: &Path, text: &str, format: LogFormat) -> Result<Self, SweepLogError> {
        let log = match format {
            LogFormat::Csv => parse_csv(path, text)?,
            LogFormat::JsonLines => parse_jsonl(path, text)?,
        };
        if log.rows.is_empty() {
            return Err(SweepLogError::Empty { path: path.to_path_buf() });
        }
        Ok(log)
    }

    /// Index of the column `name`, trying the aliases of `params` / `compute` / `loss`.
    pub fn column_index(&self, name: &str) -> Result<usize, SweepLogError> {
        if let Some(i) = self.columns.iter().position(|c| c == name) {
            return Ok(i);
        }
        let candidates = alias_candidates(name);
        for candidate in &candidates {
            if let Some(i) = self.columns.iter().position(|c| c == candidate) {
                return Ok(i);
            }
        }
        // A case-only difference is almost certainly the same column.
        let lower = name.to_ascii_lowercase();
        let mut case_matches = self.columns.iter().enumerate().filter(|(_, c)| c.to_ascii_lowercase() == lower);
        if let (Some((i, _)), None) = (case_matches.next(), case_matches.next()) {
            return Ok(i);
        }
        let tried = if candidates.len() > 1 {
            format!(" (also tried {})", candidates.iter().filter(|c| *c != name).cloned().collect::<Vec<_>>().join(", "))
        } else {
            String::new()
        };
        Err(SweepLogError::MissingColumn { path: self.path.clone(), requested: name.to_string(), tried, available: self.columns.clone() })
    }

    /// Numeric `(x, y)` points with their line numbers, grouped by `group` when given. Every row
    /// must have numbers in both columns; each group needs at least [`MIN_POINTS`] points.
    /// Positivity is checked by the fit, which knows whether an irreducible loss is subtracted.
    pub fn extract(&self, x: &str, y: &str, group: Option<&str>) -> Result<Extracted, SweepLogError> {
        let xi = self.column_index(x)?;
        let yi = self.column_index(y)?;
        let gi = group.map(|g| self.column_index(g)).transpose()?;
        let mut labelled = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let px = self.number(row, xi)?;
            let py = self.number(row, yi)?;
            let label = match gi {
                Some(g) => match &row.cells[g] {
                    Cell::Number(v) => format!("{v}"),
                    Cell::Text(s) => s.clone(),
                    Cell::Missing => {
                        return Err(SweepLogError::Parse {
                            path: self.path.clone(),
                            line: row.line,
                            message: format!("column `{}` (the group) is empty", self.columns[g]),
                        })
                    }
                },
                None => "all".to_string(),
            };
            labelled.push((label, Point { x: px, y: py, line: row.line }));
        }
        let groups = crate::fit::group_points(labelled);
        for (label, points) in &groups {
            if points.len() < MIN_POINTS {
                return Err(SweepLogError::TooFewPoints {
                    path: self.path.clone(),
                    group: match gi {
                        Some(g) => format!("group {}={label} ", self.columns[g]),
                        None => String::new(),
                    },
                    n: points.len(),
                });
            }
        }
        Ok(Extracted {
            x_column: self.columns[xi].clone(),
            y_column: self.columns[yi].clone(),
            group_column: gi.map(|g| self.columns[g].clone()),
            groups,
        })
    }

    fn number(&self, row: &LogRow, column: usize) -> Result<f64, SweepLogError> {
        match &row.cells[column] {
            Cell::Number(v) => Ok(*v),
            other => Err(SweepLogError::NotNumeric {
                path: self.path.clone(),
                line: row.line,
                column: self.columns[column].clone(),
                found: match other {
                    Cell::Text(s) => format!("`{s}`"),
                    _ => "empty".into(),
                },
            }),
        }
    }
}

/// 1-based line on which a CSV record starts. The csv crate's own line count lags by one after
/// `\r\n` terminators (the shared paper tables use them), so count from the byte offset, skipping
/// the terminator the offset may still point into.
pub(crate) fn record_line(text: &[u8], position: &csv::Position) -> usize {
    let mut start = (position.byte() as usize).min(text.len());
    while start < text.len() && matches!(text[start], b'\r' | b'\n') {
        start += 1;
    }
    text[..start].iter().filter(|&&b| b == b'\n').count() + 1
}

fn alias_candidates(name: &str) -> Vec<String> {
    for (canonical, spellings) in ALIASES {
        if *canonical == name || spellings.contains(&name) {
            return spellings.iter().map(|s| s.to_string()).collect();
        }
    }
    vec![name.to_string()]
}

fn parse_cell(raw: &str) -> Cell {
    let t = raw.trim();
    if t.is_empty() {
        return Cell::Missing;
    }
    match t.parse::<f64>() {
        Ok(v) => Cell::Number(v),
        Err(_) => Cell::Text(t.to_string()),
    }
}

fn parse_csv(path: &Path, text: &str) -> Result<SweepLog, SweepLogError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let parse_err = |line: usize, e: csv::Error| SweepLogError::Parse { path: path.to_path_buf(), line, message: e.to_string() };
    let columns: Vec<String> = reader.headers().map_err(|e| parse_err(1, e))?.iter().map(|h| h.trim().to_string()).collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
            parse_err(line, e)
        })?;
        let line = record.position().map(|p| record_line(text.as_bytes(), p)).unwrap_or(rows.len() + 2);
        rows.push(LogRow { line, cells: record.iter().map(parse_cell).collect() });
    }
    Ok(SweepLog { path: path.to_path_buf(), format: LogFormat::Csv, columns, rows })
}

fn parse_jsonl(path: &Path, text: &str) -> Result<SweepLog, SweepLogError> {
    let mut columns: Vec<String> = Vec::new();
    let mut parsed: Vec<(usize, Vec<(String, serde_json::Value)>)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let object: OrderedObject = serde_json::from_str(line).map_err(|e| SweepLogError::Parse {
            path: path.to_path_buf(),
            line: line_no,
            message: if e.is_data() { "expected one JSON object per line".into() } else { format!("not valid JSON: {e}") },
        })?;
        for (key, _) in &object.0 {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        parsed.push((line_no, object.0));
    }
    let rows = parsed
        .into_iter()
        .map(|(line, object)| LogRow {
            line,
            cells: columns
                .iter()
                .map(|c| match object.iter().find(|(k, _)| k == c).map(|(_, v)| v) {
                    None | Some(serde_json::Value::Null) => Cell::Missing,
                    Some(serde_json::Value::Number(n)) => n.as_f64().map_or(Cell::Missing, Cell::Number),
                    // Numbers written as strings ("1.5e9") are common in exported logs.
                    Some(serde_json::Value::String(s)) => parse_cell(s),
                    Some(other) => Cell::Text(other.to_string()),
                })
                .collect(),
        })
        .collect();
    Ok(SweepLog { path: path.to_path_buf(), format: LogFormat::JsonLines, columns, rows })
}

/// A JSON object with its keys in file order (serde_json's map sorts them), so that column
/// listings in messages follow the log.
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_log(text: &str) -> SweepLog {
        SweepLog::parse(Path::new("sweep.csv"), text, LogFormat::Csv).unwrap()
    }

    #[test]
    fn csv_columns_by_name_and_alias() {
        let log = csv_log("model,N,test_loss\na,1e6,3.0\nb,1e7,2.0\nc,1e8,1.5\n");
        let e = log.extract("params", "loss", None).unwrap();
        assert_eq!((e.x_column.as_str(), e.y_column.as_str()), ("N", "test_loss"));
        let p = &e.groups[0].1;
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(p[1].x, 1e7);
    }

    #[test]
    fn missing_column_lists_available_ones() {
        let log = csv_log("model,params,loss_last\na,1,2\n");
        let msg = log.extract("params", "loss", None).unwrap_err().to_string();
        assert!(msg.contains("no column `loss` (also tried test_loss, val_loss, eval_loss)"), "{msg}");
        assert!(msg.ends_with("available columns: model, params, loss_last"), "{msg}");
    }

    #[test]
    fn non_numeric_and_empty_cells_name_the_line() {
        let log = csv_log("params,loss\n1,2\n2,abc\n3,\n");
        let msg = log.extract("params", "loss", None).unwrap_err().to_string();
        assert_eq!(msg, "sweep.csv:3: column `loss` is `abc`, expected a number");
    }

    #[test]
    fn too_few_points_names_the_group() {
        let log = csv_log("model,params,loss\na,1,3\na,2,2\na,3,1\nb,1,3\nb,2,2\n");
        let msg = log.extract("params", "loss", Some("model")).unwrap_err().to_string();
        assert_eq!(msg, "sweep.csv: group model=b has 2 usable points; a power-law fit needs at least 3");
    }

    #[test]
    fn crlf_csv_rows_keep_their_line_numbers() {
        let log = csv_log("params,loss\r\n1,2\r\n2,abc\r\n");
        let msg = log.extract("params", "loss", None).unwrap_err().to_string();
        assert_eq!(msg, "sweep.csv:3: column `loss` is `abc`, expected a number");
    }

    #[test]
    fn jsonl_with_blank_lines_and_string_numbers() {
        let text = "{\"model\":\"a\",\"compute\":1e15,\"loss\":3}\n\n{\"model\":\"a\",\"compute\":\"2e15\",\"loss\":2.5}\n";
        let log = SweepLog::parse(Path::new("x.jsonl"), text, LogFormat::JsonLines).unwrap();
        assert_eq!(log.columns, ["model", "compute", "loss"]);
        assert_eq!(log.rows[1].line, 3);
        assert_eq!(log.rows[1].cells[1], Cell::Number(2e15));
        let err = SweepLog::parse(Path::new("x.jsonl"), "{\"a\":1}\n[1,2]\n", LogFormat::JsonLines).unwrap_err();
        assert_eq!(err.to_string(), "x.jsonl:2: expected one JSON object per line");
    }
}
