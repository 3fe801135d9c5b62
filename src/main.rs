use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One TLS crypto provider for every client that takes the process's default (Google's
    // auth library among them): ring, as regcache's own clients are configured.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Installed as `kubectl-regcache`, it is kubectl's plugin.
    let invoked = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&invoked)
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy();
    if name == "kubectl-regcache" {
        return regcache::cli::kubectl::run(regcache::cli::kubectl::KubectlCli::parse()).await;
    }
    regcache::cli::run(regcache::cli::Cli::parse()).await
}
