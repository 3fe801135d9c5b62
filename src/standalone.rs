//! Standalone mode: the same warmer without Kubernetes. Watches and their Secrets come from
//! the YAML files you would `kubectl apply` (loaded and planned here); `--once` warms each
//! once. The command itself is `cli::standalone`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt;
use serde::Serialize;

use crate::cache::CacheWriter;
use crate::controller::plan::{Defaults, Problem, plan, target_id};
use crate::controller::resolve::resolve_with;
use crate::crd::ImageRepositoryWatch;
use crate::warmer::{Outcome, Target, Warmer};

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}, document {index}: {reason}")]
    Parse {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("no ImageRepositoryWatch found in {0}")]
    NoWatches(String),
}

/// What the files hold, by namespace and name.
#[derive(Default)]
pub struct Manifests {
    pub watches: Vec<ImageRepositoryWatch>,
    secrets: HashMap<(String, String), Secret>,
    accounts: HashMap<(String, String), ServiceAccount>,
    /// Documents of other kinds, skipped (a folder may hold a whole application).
    pub skipped: usize,
}

fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, StandaloneError> {
    let mut out = Vec::new();
    for p in paths {
        let read_err = |e: std::io::Error| StandaloneError::Read {
            path: p.clone(),
            reason: e.to_string(),
        };
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    matches!(
                        f.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            entries.sort();
            out.extend(entries);
        } else {
            std::fs::metadata(p).map_err(read_err)?;
            out.push(p.clone());
        }
    }
    Ok(out)
}

impl Manifests {
    /// Reads YAML or JSON files (several documents per file allowed) and folders of them.
    pub fn load(paths: &[PathBuf]) -> Result<Manifests, StandaloneError> {
        let mut m = Manifests::default();
        for path in files(paths)? {
            let text = std::fs::read_to_string(&path).map_err(|e| StandaloneError::Read {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            m.add_documents(&path, &text)?;
        }
        Ok(m)
    }

    fn add_documents(&mut self, path: &Path, text: &str) -> Result<(), StandaloneError> {
        // YAML 1.2 scalars as Kubernetes reads them (`yes` and `0755` stay strings), and no
        // source lines quoted in errors: they could hold a Secret's values.
        let options = serde_saphyr::options! {
            strict_booleans: true,
            leading_zero_numbers_as_strings: true,
            underscored_numbers_as_strings: true,
            with_snippet: false,
        };
        let mut input = text.as_bytes();
        // Empty documents are skipped, so `index` counts the documents that hold something.
        let documents =
            serde_saphyr::read_with_options::<_, serde_json::Value>(&mut input, options);
        for (i, doc) in documents.enumerate() {
            let index = i + 1;
            let parse_err = |reason: String| StandaloneError::Parse {
                path: path.to_path_buf(),
                index,
                reason,
            };
            let value = doc.map_err(|e| parse_err(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            let with_ns = |mut v: serde_json::Value| {
                if v["metadata"]["namespace"].is_null() {
                    v["metadata"]["namespace"] = "default".into();
                }
                v
            };
            match (
                value["apiVersion"].as_str().unwrap_or_default(),
                kind.as_str(),
            ) {
                ("regcache.io/v1alpha1", "ImageRepositoryWatch") => {
                    let w: ImageRepositoryWatch = serde_json::from_value(with_ns(value))
                        .map_err(|e| parse_err(format!("ImageRepositoryWatch: {e}")))?;
                    self.watches.push(w);
                }
                ("v1", "Secret") => {
                    // Secrets in files may use stringData; the API would fold it into data.
                    let mut v = with_ns(value);
                    if let Some(strings) = v["stringData"].as_object().cloned() {
                        use base64::Engine as _;
                        for (k, s) in strings {
                            let encoded = base64::engine::general_purpose::STANDARD
                                .encode(s.as_str().unwrap_or_default());
                            v["data"][k] = encoded.into();
                        }
                    }
                    // The parse error may quote the value: say only where it is.
                    let s: Secret = serde_json::from_value(v).map_err(|e| {
                        parse_err(format!(
                            "Secret is malformed (line {}, column {})",
                            e.line(),
                            e.column()
                        ))
                    })?;
                    self.secrets
                        .insert((s.namespace().unwrap_or_default(), s.name_any()), s);
                }
                ("v1", "ServiceAccount") => {
                    let a: ServiceAccount = serde_json::from_value(with_ns(value))
                        .map_err(|e| parse_err(format!("ServiceAccount: {e}")))?;
                    self.accounts
                        .insert((a.namespace().unwrap_or_default(), a.name_any()), a);
                }
                _ => self.skipped += 1,
            }
        }
        Ok(())
    }

    /// A target per valid watch, and the problem of each invalid one.
    pub fn targets(
        &self,
        defaults: &Defaults,
    ) -> Vec<(ImageRepositoryWatch, Result<Target, Problem>)> {
        self.watches
            .iter()
            .map(|w| {
                let ns = w.namespace().unwrap_or_default();
                let account = w
                    .spec
                    .service_account_name
                    .as_ref()
                    .map(|n| self.accounts.get(&(ns.clone(), n.clone())).cloned());
                let planned = resolve_with(w, account, |name| {
                    self.secrets.get(&(ns.clone(), name.to_string())).cloned()
                })
                .and_then(|r| plan(w, &r, defaults));
                (w.clone(), planned)
            })
            .collect()
    }
}

/// One line of the `--once` summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub namespace: String,
    pub name: String,
    pub canonical_image_name: String,
    pub tag_count: usize,
    pub last_update: Option<String>,
    pub last_error: Option<String>,
}

impl Summary {
    fn of(watch: &ImageRepositoryWatch, result: Result<&Outcome, &Problem>) -> Summary {
        let canonical = crate::controller::plan::repository(watch)
            .map(|r| r.canonical())
            .unwrap_or_else(|_| watch.spec.image.clone());
        let (tag_count, last_update, last_error) = match result {
            Ok(o) => (
                o.tags,
                o.last_update.map(|t| t.to_rfc3339()),
                o.error.clone(),
            ),
            Err(p) => (0, None, Some(p.message.clone())),
        };
        Summary {
            namespace: watch.namespace().unwrap_or_default(),
            name: watch.name_any(),
            canonical_image_name: canonical,
            tag_count,
            last_update,
            last_error,
        }
    }

    pub fn failed(&self) -> bool {
        self.last_error.is_some()
    }
}

/// Warms every watch once, `concurrency` at a time, in file order; `done` hears of each
/// watch as it finishes (its outcome, or none when it could not be planned).
pub(crate) async fn warm_once<B: CacheWriter + 'static>(
    warmer: &Warmer<B>,
    planned: Vec<(ImageRepositoryWatch, Result<Target, Problem>)>,
    concurrency: usize,
    done: &(dyn Fn(Option<&Outcome>) + Sync),
) -> Vec<Summary> {
    let jobs = planned.into_iter().map(|(watch, planned)| {
        let warmer = warmer.clone();
        async move {
            match planned {
                Ok(target) => {
                    let outcome = warmer.warm_now(&target).await;
                    report(&outcome);
                    done(Some(&outcome));
                    Summary::of(&watch, Ok(&outcome))
                }
                Err(problem) => {
                    tracing::error!(watch = %target_id(&watch), error = %problem.message, "not warmed");
                    done(None);
                    Summary::of(&watch, Err(&problem))
                }
            }
        }
    });
    futures::stream::iter(jobs)
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// The progress line for a pass.
pub fn report(o: &Outcome) {
    match &o.error {
        None => tracing::info!(
            watch = %o.id, repository = %o.repository, tags = o.tags, fetched = o.images_updated,
            new_or_moved = o.changed, seconds = o.duration.as_secs_f64(), "warmed"
        ),
        Some(e) => {
            tracing::warn!(watch = %o.id, repository = %o.repository, error = %e, "warm pass failed")
        }
    }
}

/// Keeps the warmer's targets for the read API and webhooks in standalone runs.
pub(crate) fn register<B: CacheWriter + 'static>(
    warmer: &Warmer<B>,
    planned: &[(ImageRepositoryWatch, Result<Target, Problem>)],
) -> usize {
    let mut n = 0;
    for (_, p) in planned {
        if let Ok(t) = p {
            warmer.upsert(t.clone());
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_watches_secrets_and_skips_other_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            r#"
apiVersion: regcache.io/v1alpha1
kind: ImageRepositoryWatch
metadata: {name: app}
spec: {image: ghcr.io/org/app, pullSecrets: [{name: regcred}]}
---
apiVersion: v1
kind: Secret
metadata: {name: regcred}
type: kubernetes.io/dockerconfigjson
stringData:
  .dockerconfigjson: '{"auths":{"ghcr.io":{"username":"bob","password":"pw"}}}'
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: other}
"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yml"),
            "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {name: bad, namespace: x}\nspec: {image: 'Nope:1'}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let m = Manifests::load(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(m.watches.len(), 2);
        assert_eq!(m.skipped, 1);
        let planned = m.targets(&Defaults::default());
        let t = planned[0].1.as_ref().unwrap();
        assert_eq!(t.id, "default/app");
        assert_eq!(t.credential.identity(), "basic:bob");
        assert!(planned[1].1.is_err());
    }

    #[test]
    fn parse_errors_name_file_and_document() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.yaml");
        // The error `Manifests::load` gives for a file holding `text`.
        let load_error = |text: &str| {
            std::fs::write(&f, text).unwrap();
            Manifests::load(std::slice::from_ref(&f))
                .err()
                .unwrap()
                .to_string()
        };
        let err = load_error(
            "kind: Other\n---\napiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {name: x}\nspec: {interval: 5m}\n",
        );
        assert!(
            err.contains("w.yaml") && err.contains("document 2") && err.contains("image"),
            "{err}"
        );
        let err = Manifests::load(&[dir.path().join("missing.yaml")])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing.yaml"), "{err}");

        // Broken YAML: the error names the place, and never quotes the file's lines (a
        // Secret's values may be on them).
        let err = load_error(
            "kind: Other\n---\napiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2-canary\n   token: [unclosed\n",
        );
        assert!(
            err.contains("w.yaml") && err.contains("document 2") && err.contains("line 7"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}
