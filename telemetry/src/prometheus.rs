//! Prometheus text exposition (format 0.0.4): metric families with their
//! `# HELP` and `# TYPE` lines, samples with escaped label values, and
//! histograms from per-bucket counts.
//!
//! ```
//! use telemetry::prometheus::{Kind, Text};
//!
//! let mut text = Text::new();
//! text.family("jobs_total", Kind::Counter, "Jobs run.")
//!     .sample(&[("queue", "a \"b\"")], 3u64);
//! assert_eq!(
//!     text.finish(),
//!     "# HELP jobs_total Jobs run.\n# TYPE jobs_total counter\njobs_total{queue=\"a \\\"b\\\"\"} 3\n"
//! );
//! ```

use std::fmt::Write;

/// What a family's samples measure (its `# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (or resets to zero when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value as the format writes it: integers exactly, floats with
/// `+Inf`, `-Inf` and `NaN` spelled the format's way.
pub trait Value {
    /// Appends the value's text to `out`.
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_values {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

integer_values!(u64, u32, usize, i64);

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust never writes an exponent here, which the format allows
            // but some readers do not.
            let _ = write!(out, "{self}");
        }
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the format
/// requires inside `{name="…"}`.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text with `\` and line feeds escaped (quotes stay as they are).
pub fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Whether `name` may be a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`), or
/// with `colon` false, a label name (no `:`).
fn valid_name(name: &str, colon: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// A whole exposition: families one after another.
#[derive(Debug, Default, Clone)]
pub struct Text {
    out: String,
}

impl Text {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name`: writes its `# HELP` and `# TYPE` lines
    /// and returns it for its samples. Names are the program's own, so a
    /// bad one is a bug (checked in debug builds).
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        debug_assert!(valid_name(name, true), "bad metric name `{name}`");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// The text, every line ended by a line feed.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family being written (see [`Text::family`]).
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// One sample: `name{labels} value` (no braces without labels).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) -> &mut Self {
        self.line("", labels, None, &value);
        self
    }

    /// One histogram series: a `_bucket` line per bound (cumulative) and
    /// `+Inf`, then `_sum` and `_count`.
    ///
    /// `counts` are per bucket, not cumulative, one per bound in `bounds`
    /// (ascending, in the histogram's unit) and then one for `+Inf`; any
    /// count past the bounds falls into `+Inf`, and a missing one is 0.
    pub fn histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            let mut le = String::new();
            bound.write_to(&mut le);
            self.line("_bucket", labels, Some(&le), &cumulative);
        }
        let total: u64 = counts.iter().sum();
        self.line("_bucket", labels, Some("+Inf"), &total);
        self.line("_sum", labels, None, &sum);
        self.line("_count", labels, None, &total);
        self
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: &dyn Value) {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        let le = le.map(|le| ("le", le));
        let mut all = labels.iter().copied().chain(le).peekable();
        if all.peek().is_some() {
            out.push('{');
            for (k, (name, value)) in all.enumerate() {
                debug_assert!(valid_name(name, false), "bad label name `{name}`");
                if k > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{name}=\"{}\"", escape_label(value));
            }
            out.push('}');
        }
        out.push(' ');
        value.write_to(out);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed_only() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label(r"a\b"), r"a\\b");
        assert_eq!(escape_label("say \"hi\""), r#"say \"hi\""#);
        assert_eq!(escape_label("two\nlines"), r"two\nlines");
        // Tabs, braces, commas and non-ASCII are allowed as they are.
        assert_eq!(escape_label("{a,b}\tü"), "{a,b}\tü");
        assert_eq!(escape_help("a \"q\" \\ b\nc"), "a \"q\" \\\\ b\\nc");
    }

    #[test]
    fn families_have_help_type_and_samples_in_order() {
        let mut text = Text::new();
        text.family("a_total", Kind::Counter, "As.")
            .sample(&[], 7u64)
            .sample(&[("node", "http://x:1"), ("code", "200")], u64::MAX);
        text.family("b", Kind::Gauge, "Bs\nnow.")
            .sample(&[], -2i64)
            .sample(&[("k", "v")], 0.5f64)
            .sample(&[("k", "w")], f64::INFINITY)
            .sample(&[("k", "z")], f64::NAN);
        assert_eq!(
            text.finish(),
            "# HELP a_total As.\n\
             # TYPE a_total counter\n\
             a_total 7\n\
             a_total{node=\"http://x:1\",code=\"200\"} 18446744073709551615\n\
             # HELP b Bs\\nnow.\n\
             # TYPE b gauge\n\
             b -2\n\
             b{k=\"v\"} 0.5\n\
             b{k=\"w\"} +Inf\n\
             b{k=\"z\"} NaN\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_and_ends_with_inf_sum_and_count() {
        let mut text = Text::new();
        text.family("t_seconds", Kind::Histogram, "Latency.")
            .histogram(&[("tier", "a\"b")], &[0.0001, 1.0], &[2, 0, 3], 1.25)
            // Fewer counts than buckets: the rest are 0.
            .histogram(&[], &[0.5], &[], 0.0);
        assert_eq!(
            text.finish(),
            "# HELP t_seconds Latency.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{tier=\"a\\\"b\",le=\"0.0001\"} 2\n\
             t_seconds_bucket{tier=\"a\\\"b\",le=\"1\"} 2\n\
             t_seconds_bucket{tier=\"a\\\"b\",le=\"+Inf\"} 5\n\
             t_seconds_sum{tier=\"a\\\"b\"} 1.25\n\
             t_seconds_count{tier=\"a\\\"b\"} 5\n\
             t_seconds_bucket{le=\"0.5\"} 0\n\
             t_seconds_bucket{le=\"+Inf\"} 0\n\
             t_seconds_sum 0\n\
             t_seconds_count 0\n"
        );
    }

    #[test]
    fn names_are_checked_against_the_format() {
        assert!(valid_name("imagefs_tier_hits_total", true));
        assert!(valid_name("ns:sub_x1", true));
        assert!(!valid_name("ns:sub", false));
        assert!(!valid_name("1abc", true));
        assert!(!valid_name("", true));
        assert!(!valid_name("a-b", true));
    }
}
