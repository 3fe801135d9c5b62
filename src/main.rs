use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    regcache::cli::run(regcache::cli::Cli::parse()).await
}
