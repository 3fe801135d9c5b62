use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS crypto provider for every client that takes the process's default (Google's
    // auth library among them): ring, as regcache's own clients are configured.
    let _ = rustls::crypto::ring::default_provider().install_default();
    regcache::cli::run(regcache::cli::Cli::parse()).await
}
