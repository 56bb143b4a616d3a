//! Published tables shipped as data (`suites/papers/*.csv`), and lookup of a row by a key of
//! column values.
//!
//! Rows are selected by exact (trimmed) equality on one or more columns, e.g.
//! `{ model = "VAR-d16", arxiv_version = "v1 (2404.02905v1, Apr 2024)" }`. A key must match
//! exactly one row: when a paper table lists a model twice (two arXiv versions, two resolutions),
//! the error names the column that tells the rows apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Debug, Clone)]
pub struct PaperRow {
    /// 1-based line of the row in the CSV (the header is line 1).
    pub line: usize,
    pub cells: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PaperTable {
    /// File stem, e.g. `var_table1`.
    pub name: String,
    pub path: PathBuf,
    pub headers: Vec<String>,
    pub rows: Vec<PaperRow>,
}

impl PaperTable {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).with_context(|| format!("reading paper table {}", path.display()))?;
        let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_slice());
        let headers: Vec<String> = reader
            .headers()
            .with_context(|| format!("{}: reading the header", path.display()))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.with_context(|| format!("{}: malformed CSV", path.display()))?;
            let line = record.position().map(|p| crate::sweep_log::record_line(&text, p)).unwrap_or(rows.len() + 2);
            rows.push(PaperRow { line, cells: record.iter().map(|c| c.trim().to_string()).collect() });
        }
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
        Ok(Self { name, path: path.to_path_buf(), headers, rows })
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }

    pub fn cell(&self, row: usize, column: usize) -> &str {
        self.rows[row].cells.get(column).map(String::as_str).unwrap_or("")
    }

    /// Index of the single row whose cells equal `key` (column -> value).
    pub fn select(&self, key: &BTreeMap<String, String>) -> Result<usize, String> {
        if key.is_empty() {
            return Err("the row key is empty; give at least one column = value".into());
        }
        let mut columns = Vec::with_capacity(key.len());
        for (column, value) in key {
            let index = self
                .column(column)
                .ok_or_else(|| format!("{}.csv has no column `{column}`; its columns are: {}", self.name, self.headers.join(", ")))?;
            columns.push((index, column.as_str(), value.trim()));
        }
        let matches: Vec<usize> = (0..self.rows.len()).filter(|&r| columns.iter().all(|&(c, _, v)| self.cell(r, c) == v)).collect();
        let described = columns.iter().map(|(_, c, v)| format!("{c} = \"{v}\"")).collect::<Vec<_>>().join(", ");
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => {
                // List the values the first key column does take, so a typo is easy to spot.
                let (c, name, _) = columns[0];
                let mut values: Vec<&str> = Vec::new();
                for r in 0..self.rows.len() {
                    let v = self.cell(r, c);
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
                Err(format!(
                    "no row of {}.csv has {described}; `{name}` takes the values: {}",
                    self.name,
                    values.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ")
                ))
            }
            many => {
                let lines = many.iter().map(|&r| self.rows[r].line.to_string()).collect::<Vec<_>>().join(", ");
                // Columns whose values differ among the matches can disambiguate.
                let distinguishing: Vec<String> = (0..self.headers.len())
                    .filter(|&c| many.iter().any(|&r| self.cell(r, c) != self.cell(many[0], c)))
                    .take(3)
                    .map(|c| {
                        let vals = many.iter().map(|&r| format!("\"{}\"", self.cell(r, c))).collect::<Vec<_>>();
                        format!("`{}` ({})", self.headers[c], vals.join(" / "))
                    })
                    .collect();
                Err(format!(
                    "{} rows of {}.csv (lines {lines}) have {described}; add a column to the key, e.g. {}",
                    many.len(),
                    self.name,
                    distinguishing.join(" or ")
                ))
            }
        }
    }

    /// The number in `column` of `row`. Cells such as `-`, `~45` or `>45` are not numbers.
    pub fn number(&self, row: usize, column: &str) -> Result<f64, String> {
        let c = self
            .column(column)
            .ok_or_else(|| format!("{}.csv has no column `{column}`; its columns are: {}", self.name, self.headers.join(", ")))?;
        let raw = self.cell(row, c);
        raw.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
            format!("{}.csv line {}, column `{column}` holds `{raw}`, which is not a number", self.name, self.rows[row].line)
        })
    }

    /// The `source` column of a row, if the table has one.
    pub fn source(&self, row: usize) -> Option<&str> {
        self.column("source").map(|c| self.cell(row, c)).filter(|s| !s.is_empty())
    }
}

/// The paper tables of one directory, loaded on first use.
#[derive(Debug)]
pub struct PaperLibrary {
    pub dir: PathBuf,
    tables: BTreeMap<String, Result<PaperTable, String>>,
}

impl PaperLibrary {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), tables: BTreeMap::new() }
    }

    /// The table `<dir>/<name>.csv`; the error lists the tables that do exist.
    pub fn table(&mut self, name: &str) -> Result<&PaperTable, String> {
        if !self.tables.contains_key(name) {
            let path = self.dir.join(format!("{name}.csv"));
            let loaded = if path.is_file() {
                PaperTable::load(&path).map_err(|e| format!("{e:#}"))
            } else {
                Err(format!("no paper table `{name}` in {}; available: {}", self.dir.display(), self.available().join(", ")))
            };
            self.tables.insert(name.to_string(), loaded);
        }
        self.tables[name].as_ref().map_err(Clone::clone)
    }

    pub fn available(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let p = e.path();
                        (p.extension().and_then(|x| x.to_str()) == Some("csv"))
                            .then(|| p.file_stem().and_then(|s| s.to_str()).map(str::to_string))
                            .flatten()
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PaperTable {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(
            &path,
            "version,model,fid,source\nv2,VAR-d16,3.30,paper\nv1,VAR-d16,3.55,readme\nv2,VAR-d20,2.57,paper\nv2,ADM,-,paper\n",
        )
        .unwrap();
        PaperTable::load(&path).unwrap()
    }

    fn key(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn crlf_files_report_true_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crlf.csv");
        std::fs::write(&path, "row,fid\r\n1,\"a\r\nb\"\r\n2,3.3\r\n").unwrap();
        let t = PaperTable::load(&path).unwrap();
        assert_eq!(t.rows.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn unique_key_selects_the_row() {
        let t = table();
        let r = t.select(&key(&[("model", "VAR-d16"), ("version", "v1")])).unwrap();
        assert_eq!(t.rows[r].line, 3);
        assert_eq!(t.number(r, "fid").unwrap(), 3.55);
        assert_eq!(t.source(r), Some("readme"));
    }

    #[test]
    fn ambiguous_key_names_the_distinguishing_column() {
        let e = table().select(&key(&[("model", "VAR-d16")])).unwrap_err();
        assert!(e.starts_with("2 rows of t.csv (lines 2, 3) have model = \"VAR-d16\""), "{e}");
        assert!(e.contains("`version` (\"v2\" / \"v1\")"), "{e}");
    }

    #[test]
    fn missing_row_lists_values_and_bad_cells_are_reported() {
        let t = table();
        let e = t.select(&key(&[("model", "VAR-d21")])).unwrap_err();
        assert_eq!(e, "no row of t.csv has model = \"VAR-d21\"; `model` takes the values: \"VAR-d16\", \"VAR-d20\", \"ADM\"");
        let e = t.select(&key(&[("modle", "VAR-d16")])).unwrap_err();
        assert!(e.starts_with("t.csv has no column `modle`"), "{e}");
        let adm = t.select(&key(&[("model", "ADM")])).unwrap();
        assert_eq!(t.number(adm, "fid").unwrap_err(), "t.csv line 5, column `fid` holds `-`, which is not a number");
    }
}
