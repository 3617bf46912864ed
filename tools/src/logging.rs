//! Where log events go: one `tracing` subscriber for the whole process,
//! writing to stderr, filtered by `RUST_LOG` (default `info`), as text or
//! as JSON lines (`--log-format json`). The libraries only emit events and
//! spans; the binary decides this once, at start.

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the event's fields and its spans'
    /// (an operator's log pipeline reads these).
    Json,
}

/// Installs the process's subscriber. A `RUST_LOG` that does not parse is
/// reported and replaced by the default, rather than silencing every log.
pub fn init(format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("imagefs: RUST_LOG={spec:?} does not parse ({e}); logging at info");
            EnvFilter::new("info")
        }),
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // A second subscriber (tests that call this twice) is not an error
    // worth stopping for: the first stays.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
