//! `regcache standalone`: the watches in YAML files, warmed without Kubernetes, on the same
//! runtime as the controller (read API, metrics, probes), or once with `--once`.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::flags::{Format, StandaloneArgs};
use super::progress::Progress;
use crate::controller::plan::{Defaults, PlatformFlagError, target_id};
use crate::runtime::{Runtime, RuntimeError};
use crate::standalone::{Manifests, StandaloneError, Summary, register, report, warm_once};
use crate::telemetry::LogFormat;

/// Failures that stop `regcache standalone`.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneCommandError {
    #[error(transparent)]
    Manifests(#[from] StandaloneError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Platform(#[from] PlatformFlagError),
    #[error(transparent)]
    Flag(#[from] super::flags::FlagError),
}

/// `regcache standalone`.
pub async fn standalone(
    args: &StandaloneArgs,
    format: LogFormat,
) -> Result<ExitCode, StandaloneCommandError> {
    let manifests = Manifests::load(&args.watches)?;
    if manifests.watches.is_empty() {
        let list: Vec<String> = args
            .watches
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(StandaloneError::NoWatches(list.join(", ")).into());
    }
    let mut defaults = Defaults::from_flags(&args.default_platforms, args.default_interval)?;
    let mut runtime = Runtime::start(&args.runtime_options()?).await?;
    // The only replica: it warms.
    runtime.metrics.reconcile.leading();
    // No Kubernetes API: only regcache's own cloud identity can sign in.
    defaults.sign_in = Some(std::sync::Arc::new(
        crate::cloud::SignIn::new(None, args.cloud.options()?)
            .with_metrics(runtime.metrics.cloud.clone()),
    ));
    defaults.cloud_controller_identity = args.cloud.cloud_controller_identity;
    defaults.cloud_service_account_identity = args.cloud.cloud_service_account_identity;
    let planned = manifests.targets(&defaults);
    tracing::info!(
        watches = planned.len(),
        skipped_documents = manifests.skipped,
        "loaded manifests"
    );
    if args.once {
        let registry = runtime.warmer.registry().clone();
        let progress = Progress::bar(
            format,
            planned.len() as u64,
            "watches",
            "tags",
            Arc::new(move || registry.stats().snapshot()),
        );
        let done = |outcome: Option<&crate::warmer::Outcome>| {
            if let Some(o) = outcome {
                progress
                    .items
                    .fetch_add(o.tags as u64, std::sync::atomic::Ordering::Relaxed);
            }
            progress.inc();
        };
        let summaries = warm_once(&runtime.warmer, planned, args.concurrent, &done).await;
        progress.finish();
        runtime.shutdown().await;
        let out = match args.output {
            Format::Json => serde_json::to_string_pretty(&summaries).expect("summaries serialise"),
            Format::Table => table(&summaries),
        };
        println!("{out}");
        let failed = summaries.iter().filter(|s| s.failed()).count();
        return Ok(if failed == 0 {
            ExitCode::SUCCESS
        } else {
            tracing::error!(failed, "some watches failed");
            ExitCode::FAILURE
        });
    }
    for (w, p) in &planned {
        if let Err(problem) = p {
            tracing::error!(watch = %target_id(w), error = %problem.message, "not warmed");
        }
    }
    let warmer = runtime.warmer.clone();
    register(&warmer, &planned);
    let router = crate::api::router(crate::api::ApiState {
        read: runtime.read_api(),
        directory: Arc::new(warmer.clone()),
        auth: crate::api::ApiAuth::None,
        warmer: Some(Arc::new(warmer.clone())),
        forward: None,
        webhook_token: args
            .webhook_token
            .clone()
            .map(crate::credentials::Secret::new),
        registry: args.registry_api_options()?,
    });
    // The watches come from files, listed already: readiness waits for the cache only.
    let listed = Arc::new(AtomicBool::new(true));
    runtime
        .serve(&args.listen_options(), router, listed)
        .await?;
    runtime.cancel_on_signals();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let token = runtime.token();
    let warming = tokio::spawn(warmer.run(tx, token.clone().cancelled_owned()));
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            Some(outcome) = rx.recv() => report(&outcome),
        }
    }
    let _ = warming.await;
    runtime.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The summary as a table.
fn table(rows: &[Summary]) -> String {
    let mut lines = vec![[
        "NAMESPACE".to_string(),
        "NAME".to_string(),
        "IMAGE".to_string(),
        "TAGS".to_string(),
        "LAST UPDATE".to_string(),
        "LAST ERROR".to_string(),
    ]];
    for r in rows {
        lines.push([
            r.namespace.clone(),
            r.name.clone(),
            r.canonical_image_name.clone(),
            r.tag_count.to_string(),
            r.last_update.clone().unwrap_or_else(|| "-".into()),
            r.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    super::columns(&lines)
}
