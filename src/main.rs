use clap::Parser;

use regcache::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = regcache::telemetry::init(&cli.log) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let result = match &cli.command {
        Command::Inspect(args) => regcache::cli::inspect(args).await,
        Command::Tags(args) => regcache::cli::tags(args).await,
        Command::Crd => Ok(regcache::crd::crd_yaml().trim_end().to_string()),
        Command::Get(args) => regcache::cli::get(args)
            .await
            .map_err(regcache::cli::CliError::Get),
        Command::Standalone(args) => {
            return match regcache::standalone::run(args).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {}", regcache::cli::report(&e));
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::Controller(args) => {
            return match regcache::controller::serve(args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", regcache::cli::report(&e));
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(out) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", regcache::cli::report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
