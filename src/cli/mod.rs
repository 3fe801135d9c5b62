//! The command line: clap flags (each with an env var, `flags`), converted into each module's
//! own options type, and the commands. Only `fuzzing` sits above it in the module order,
//! and it does not import `cli` either.

mod controller;
mod credential_helper;
pub mod flags;
mod get;
mod inspect;
pub mod kubectl;
mod progress;
mod standalone;

use std::path::PathBuf;
use std::process::ExitCode;

pub use flags::{Cli, Command};
pub use get::GetError;

use crate::credentials::CredentialsError;
use crate::image::ImageError;
use crate::registry;

/// Runs the command `cli` names; what it prints goes to stdout, errors to stderr.
pub async fn run(cli: Cli) -> ExitCode {
    let (filter, format) = cli.log.telemetry();
    if let Err(e) = crate::telemetry::init(&filter, format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let failed = |e: &dyn std::error::Error| {
        eprintln!("error: {}", report(e));
        ExitCode::FAILURE
    };
    let result = match &cli.command {
        Command::Inspect(args) => inspect::inspect(args, format).await,
        Command::Tags(args) => inspect::tags(args, format).await,
        Command::Crd => Ok(crate::crd::crd_yaml().trim_end().to_string()),
        Command::Get(args) => get::get(args).await.map_err(CliError::Get),
        Command::Standalone(args) => {
            return standalone::standalone(args, format)
                .await
                .unwrap_or_else(|e| failed(&e));
        }
        Command::Controller(args) => {
            return match controller::controller(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(&e),
            };
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

/// Failures of `inspect`, `tags` and `get`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error(transparent)]
    CredentialHelper(#[from] credential_helper::HelperError),
    #[error(transparent)]
    Flag(#[from] flags::FlagError),
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("invalid --platform {value:?}: {source}")]
    Platform {
        value: String,
        #[source]
        source: ImageError,
    },
    #[error(transparent)]
    Get(GetError),
}

/// An error and its sources on one line, without repeating text a wrapper already quoted.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Left-aligned columns separated by three spaces, like `kubectl get`.
pub(crate) fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i + 1 < N {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            line.trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
