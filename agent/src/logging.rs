//! Structured logging setup shared by the agent commands.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: human-readable on stderr, or JSON lines.
/// An invalid filter falls back to `info` rather than failing.
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a log file or the journal gets no ANSI
    // escape codes.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
