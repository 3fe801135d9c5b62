//! `kubectl regcache`: the same binary installed as `kubectl-regcache` on `PATH`, as krew
//! plugins are, so kubectl runs it for `kubectl regcache ...`. It talks to the Kubernetes
//! API with the user's kubeconfig (`KUBECONFIG`, then `~/.kube/config`) and RBAC:
//! - `get REF`: the watches that cover a repository or image, and how fresh their data is;
//!   with `--api`, what the cache holds (as `regcache get`).
//! - `rescan WATCH`: asks for a pass now by setting `regcache.io/requestedAt`, as
//!   `flux reconcile` does; `--wait` until the pass ran.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::flags::{Format, GetArgs, parse_duration};
use crate::crd::{ImageRepositoryWatch, REQUESTED_AT_ANNOTATION};
use crate::image::ImageRef;

/// `kubectl regcache`: regcache's views and actions through the Kubernetes API.
#[derive(Parser, Debug)]
#[command(name = "kubectl regcache", version)]
pub struct KubectlCli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: KubectlCommand,
}

#[derive(Subcommand, Debug)]
pub enum KubectlCommand {
    /// The watches that cover a repository or image (`nginx`, `ghcr.io/org/app:v1`), with
    /// how fresh their data is; with `--api`, what the cache holds for it.
    Get {
        reference: String,
        /// Look in every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Ask a regcache read API for the cached tags instead (`http://localhost:8080`
        /// after `kubectl port-forward -n regcache-system svc/regcache-api 8080`).
        #[arg(long, env = "REGCACHE_API")]
        api: Option<String>,
        /// Bearer token for the read API (`kubectl create token SERVICEACCOUNT`).
        #[arg(long, env = "REGCACHE_API_TOKEN", requires = "api")]
        token: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Ask for a pass of the watch now (sets its `regcache.io/requestedAt` annotation).
    Rescan {
        watch: String,
        /// Wait until the pass has run, and print its result.
        #[arg(long)]
        wait: bool,
        /// How long `--wait` waits.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// Failures of `kubectl regcache`.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("cannot find the Kubernetes API (KUBECONFIG, then ~/.kube/config): {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Get(#[from] super::GetError),
    #[error("no ImageRepositoryWatch {where_} covers {repository}{hint}")]
    NotWatched {
        repository: String,
        where_: String,
        hint: &'static str,
    },
    #[error(
        "imagerepositorywatch {namespace}/{name}: no pass ran within {timeout:?} of the request; is regcache running?"
    )]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
}

/// Runs `kubectl regcache`; what it prints goes to stdout, errors to stderr.
pub async fn run(cli: KubectlCli) -> ExitCode {
    match command(cli).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", super::report(&e));
            ExitCode::FAILURE
        }
    }
}

async fn command(cli: KubectlCli) -> Result<String, KubectlError> {
    // `--api` needs no cluster access: the read API is asked directly.
    if let KubectlCommand::Get {
        reference,
        api: Some(api),
        token,
        output,
        ..
    } = &cli.command
    {
        let args = GetArgs {
            reference: reference.clone(),
            api: Some(api.clone()),
            token: token.clone(),
            memcached: Vec::new(),
            output: *output,
        };
        return Ok(super::get::get(&args).await?);
    }
    let config = kube::Config::infer()
        .await
        .map_err(|e| KubectlError::Config(e.to_string()))?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(KubectlError::Kube)?;
    match cli.command {
        KubectlCommand::Get {
            reference,
            all_namespaces,
            output,
            ..
        } => get(&client, &namespace, all_namespaces, &reference, output).await,
        KubectlCommand::Rescan {
            watch,
            wait,
            timeout,
        } => rescan(&client, &namespace, &watch, wait, timeout).await,
    }
}

async fn get(
    client: &Client,
    namespace: &str,
    all_namespaces: bool,
    reference: &str,
    output: Format,
) -> Result<String, KubectlError> {
    let image = ImageRef::parse(reference)?;
    let repository = image.repository.canonical();
    let api: Api<ImageRepositoryWatch> = if all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    let mut watches: Vec<ImageRepositoryWatch> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|w| {
            crate::image::Repository::parse(&w.spec.image)
                .is_ok_and(|r| r.canonical() == repository)
        })
        .collect();
    if watches.is_empty() {
        return Err(KubectlError::NotWatched {
            repository,
            where_: if all_namespaces {
                "in any namespace".to_string()
            } else {
                format!("in namespace {namespace}")
            },
            hint: if all_namespaces {
                ""
            } else {
                " (-A looks in every namespace)"
            },
        });
    }
    watches.sort_by_key(|w| (w.namespace(), w.name_any()));
    if output == Format::Json {
        let list: Vec<_> = watches
            .iter()
            .map(|w| {
                json!({"namespace": w.namespace(), "name": w.name_any(),
                       "image": w.spec.image, "status": w.status})
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&list).expect("JSON values serialise"));
    }
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "TAGS",
            "LAST UPDATE",
            "NEXT SCAN",
            "NEWEST TAG",
            "MESSAGE",
        ]
        .map(String::from),
    ];
    for w in &watches {
        let status = w.status.clone().unwrap_or_default();
        let ready = status.ready();
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        rows.push([
            w.namespace().unwrap_or_default(),
            w.name_any(),
            dash(ready.map(|c| c.status.clone())),
            dash(status.tag_count.map(|n| n.to_string())),
            dash(status.last_update.clone()),
            dash(status.next_scan.clone()),
            dash(status.latest_tags.first().cloned()),
            dash(ready.map(|c| c.message.clone())),
        ]);
    }
    Ok(super::columns(&rows).trim_end().to_string())
}

async fn rescan(
    client: &Client,
    namespace: &str,
    name: &str,
    wait: bool,
    timeout: Duration,
) -> Result<String, KubectlError> {
    let api: Api<ImageRepositoryWatch> = Api::namespaced(client.clone(), namespace);
    // Each pass sets a new `nextScan`: one that differs from this is the pass asked for.
    let before = api.get(name).await?.status.and_then(|s| s.next_scan);
    let requested = chrono::Utc::now();
    let value = requested.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {REQUESTED_AT_ANNOTATION: value}}})),
    )
    .await?;
    let asked = format!(
        "imagerepositorywatch.regcache.io/{name} rescan requested ({REQUESTED_AT_ANNOTATION}={value})"
    );
    if !wait {
        return Ok(asked);
    }
    // The pass ran once the controller took the request and the pass scheduled the next.
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let w = api.get(name).await?;
        let status = w.status.clone().unwrap_or_default();
        if status.last_handled_requested_at.as_deref() == Some(value.as_str())
            && status.next_scan.is_some()
            && status.next_scan != before
        {
            let ready = status.ready();
            return Ok(format!(
                "{asked}\npass done: Ready={} {}: {}",
                ready.map_or("Unknown", |c| c.status.as_str()),
                ready.map_or("", |c| c.reason.as_str()),
                ready.map_or("", |c| c.message.as_str()),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(KubectlError::Timeout {
                namespace: namespace.to_string(),
                name: name.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
