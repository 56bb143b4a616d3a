//! Progress of long loops (sampling, feature extraction): an indicatif bar when stderr is a
//! terminal; otherwise (a Slurm log, a CI log, a pipe) one plain line every `every` updates and
//! at the end, with the rate and the estimated time left, so a log file stays readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// One progress display; see the module docs.
pub struct Progress {
    label: String,
    unit: String,
    total: u64,
    position: u64,
    /// Position when this process started (work already done by an earlier run is not rate).
    start_position: u64,
    started: Instant,
    every: u64,
    updates: u64,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// `total` units (e.g. images) of which `done` are already done; plain lines every `every`
    /// updates (calls of [`Progress::inc`]) when stderr is not a terminal.
    pub fn new(label: &str, unit: &str, total: u64, done: u64, every: u64) -> Self {
        Self::with_terminal(label, unit, total, done, every, std::io::stderr().is_terminal())
    }

    /// As [`Progress::new`] with the terminal decision given (tests, or forcing plain lines).
    pub fn with_terminal(label: &str, unit: &str, total: u64, done: u64, every: u64, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            let template = format!("{label} {{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}");
            bar.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
            bar.set_position(done);
            bar
        });
        Self {
            label: label.to_string(),
            unit: unit.to_string(),
            total,
            position: done,
            start_position: done,
            started: Instant::now(),
            every: every.max(1),
            updates: 0,
            bar,
        }
    }

    /// `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.position += n;
        self.updates += 1;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.updates.is_multiple_of(self.every) => eprintln!("{}", self.line()),
            None => {}
        }
    }

    /// The position is now `done` units (for callers that count the total themselves).
    pub fn set_position(&mut self, done: u64) {
        if done > self.position {
            self.inc(done - self.position);
        }
    }

    /// Ends the display; a plain final line unless the last update printed one already.
    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None if self.updates == 0 || !self.updates.is_multiple_of(self.every) => eprintln!("{}", self.line()),
            None => {}
        }
    }

    /// The plain progress line: position, percentage, rate over this process's work, ETA.
    pub fn line(&self) -> String {
        let done_here = self.position - self.start_position;
        if done_here == 0 && self.position >= self.total {
            return format!("{}: {}/{} {}, all done before this process", self.label, self.position, self.total, self.unit);
        }
        let elapsed = self.started.elapsed();
        let rate = done_here as f64 / elapsed.as_secs_f64().max(1e-9);
        let pct = 100.0 * self.position as f64 / self.total.max(1) as f64;
        let eta = if done_here > 0 {
            format_duration(Duration::from_secs_f64(self.total.saturating_sub(self.position) as f64 / rate))
        } else {
            "unknown".to_string()
        };
        format!(
            "{}: {}/{} {} ({pct:.1}%), {} {}/s, elapsed {}, eta {eta}",
            self.label,
            self.position,
            self.total,
            self.unit,
            format_rate(rate),
            self.unit,
            format_duration(elapsed)
        )
    }
}

fn format_rate(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}")
    } else if rate >= 1.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.3}")
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, sec) => format!("{h}h{m:02}m{sec:02}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_count_rate_over_this_process_only() {
        let mut p = Progress::with_terminal("sampling", "images", 100, 40, 2, false);
        assert!(p.line().contains("eta unknown"), "{}", p.line());
        p.inc(10);
        p.inc(10);
        let line = p.line();
        assert!(line.starts_with("sampling: 60/100 images (60.0%), "), "{line}");
        assert!(line.contains("images/s") && !line.contains("eta unknown"), "{line}");
        p.finish();
    }

    #[test]
    fn positions_set_by_the_caller_and_work_done_earlier_are_not_a_rate() {
        let mut p = Progress::with_terminal("features", "images", 10, 0, 1, false);
        p.set_position(4);
        p.set_position(4);
        assert!(p.line().starts_with("features: 4/10 images (40.0%), "), "{}", p.line());
        let cached = Progress::with_terminal("features", "images", 6, 6, 1, false);
        assert_eq!(cached.line(), "features: 6/6 images, all done before this process");
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(format_duration(Duration::from_secs(6)), "6s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
    }
}
