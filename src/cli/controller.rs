//! `regcache controller`: the operator process. Every replica plans watches, serves reads,
//! metrics and probes; with `--leader-elect`, only the Lease holder warms and writes.

use std::sync::Arc;

use kube::Client;

use super::flags::{ApiAuthMode, ControllerArgs};
use crate::controller::leader::{LeaderElector, LeaseSettings};
use crate::controller::plan::{Defaults, PlatformFlagError};
use crate::controller::{Context, run};
use crate::runtime::{Runtime, RuntimeError};

/// Failures that stop `regcache controller`.
#[derive(Debug, thiserror::Error)]
pub enum ControllerCommandError {
    #[error("cannot find the Kubernetes API (KUBECONFIG, then in-cluster): {0}")]
    Config(#[source] kube::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Platform(#[from] PlatformFlagError),
    #[error(transparent)]
    Flag(#[from] super::flags::FlagError),
    #[error("lost leadership of lease {0}; exiting so a restart campaigns again")]
    LostLeadership(String),
}

/// The API client, found as kube-rs does (`KUBECONFIG`, then in-cluster), naming itself
/// `regcache/<version>` so audit logs and API server metrics show who made a call.
async fn client() -> Result<Client, ControllerCommandError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| ControllerCommandError::Config(kube::Error::InferConfig(e)))?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("regcache/", env!("CARGO_PKG_VERSION"))),
    ));
    Client::try_from(config).map_err(ControllerCommandError::Config)
}

/// `regcache controller`.
pub async fn controller(args: &ControllerArgs) -> Result<(), ControllerCommandError> {
    let client = client().await?;
    let mut defaults = Defaults::from_flags(&args.default_platforms, args.default_interval)?;
    let mut runtime = Runtime::start(&args.runtime_options()?).await?;
    // ServiceAccounts' cloud identities sign in through the TokenRequest API.
    defaults.sign_in = Some(Arc::new(
        crate::cloud::SignIn::new(Some(client.clone()), args.cloud.options()?)
            .with_metrics(runtime.metrics.cloud.clone()),
    ));
    defaults.cloud_controller_identity = args.cloud.cloud_controller_identity;
    defaults.cloud_service_account_identity = args.cloud.cloud_service_account_identity;
    let identity = args.pod_name.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("regcache-{}", std::process::id()))
    });
    let mut ctx = Context::new(
        client.clone(),
        runtime.warmer.clone(),
        defaults,
        identity.clone(),
    );
    ctx.concurrent_reconciles = args.concurrent_reconciles;
    ctx.discovery = args.discovery_options()?;
    ctx.metrics = runtime.metrics.reconcile.clone();
    let ctx = Arc::new(ctx);

    // Every replica serves reads, metrics and probes.
    let router = crate::api::router(crate::api::ApiState {
        read: runtime.read_api(),
        directory: Arc::new(ctx.warmer.clone()),
        auth: match args.api.api_auth {
            ApiAuthMode::Kubernetes => crate::api::ApiAuth::Kubernetes(client.clone()),
            ApiAuthMode::None => crate::api::ApiAuth::None,
        },
        warmer: Some(Arc::new(ctx.warmer.clone())),
        // Only the leader warms: another replica passes webhooks on through the API server.
        forward: Some(crate::api::Forward {
            client: client.clone(),
            leading: ctx.leading_flag(),
        }),
        webhook_token: args
            .api
            .webhook_token
            .clone()
            .map(crate::credentials::Secret::new),
        registry: args.registry_api_options()?,
    });
    runtime
        .serve(&args.listen_options(), router, ctx.watches_listed.clone())
        .await?;
    runtime.cancel_on_signals();
    let token = runtime.token();

    if !args.leader_elect {
        // Spawned, to run on the runtime's workers: polled by `main`'s own `block_on`, the
        // controller stopped reconciling after its first few (the fault matrix's long
        // Retry-After row showed it).
        let controller = tokio::spawn(run(
            ctx,
            args.watch_namespace.clone(),
            std::future::ready(()),
            token.cancelled_owned(),
        ));
        let _ = controller.await;
        runtime.shutdown().await;
        return Ok(());
    }
    let elector = LeaderElector::new(
        client,
        LeaseSettings {
            name: args.leader_election_id.clone(),
            namespace: args.leader_election_namespace.clone(),
            identity,
            duration: args.lease_duration,
            retry: args.lease_retry,
        },
    );
    // Every replica plans watches (and serves reads); only the leader warms and writes.
    let (led_tx, led_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(
        ctx,
        args.watch_namespace.clone(),
        async move {
            let _ = led_rx.await;
        },
        token.clone().cancelled_owned(),
    ));
    // (lost leadership, led until shut down)
    let (lost, led) = tokio::select! {
        _ = elector.acquire() => {
            let _ = led_tx.send(());
            tokio::select! {
                _ = elector.hold() => (true, false),
                _ = token.cancelled() => (false, true),
            }
        }
        _ = token.cancelled() => (false, false),
    };
    token.cancel();
    let _ = controller.await;
    // A leader shutting down gives the Lease up once it has stopped writing, so another
    // replica takes over at its next retry rather than after the lease duration.
    if led {
        match elector.release().await {
            Ok(true) => tracing::info!(lease = %args.leader_election_id, "released the lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not release the lease"),
        }
    }
    runtime.shutdown().await;
    if lost {
        return Err(ControllerCommandError::LostLeadership(
            args.leader_election_id.clone(),
        ));
    }
    Ok(())
}
