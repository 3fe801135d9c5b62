//! Logging set-up: `tracing` to stderr, as JSON or text.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogOptions};

/// Installs the global subscriber. `--log-level` takes a level or a full filter.
pub fn init(options: &LogOptions) -> Result<(), String> {
    let filter = EnvFilter::try_new(&options.log_level)
        .map_err(|e| format!("invalid --log-level {:?}: {e}", options.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match options.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
