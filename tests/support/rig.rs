//! The fault matrix's rig (`tests/it/faults.rs`, `docs/reliability.md`): the real
//! `regcache controller` binary against a real API server (etcd and kube-apiserver; the
//! Kubernetes API emulator for the one fault a real server cannot make on demand), a real basic-auth
//! registry behind the fault proxy, and real memcached, with two watches on one registry
//! host: the one a fault is aimed at and a bystander.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::apiserver::ApiServer;
use super::kube::{ControllerProcess, Emulator, KubeClient, ready};
use super::{
    CANARY_PASSWORD, FaultProxy, ImageSpec, ManifestKind, Memcached, PushedImage, Registry,
    RegistryAuth,
};

pub const NS: &str = "team";
pub const WATCHES: &str = "/apis/regcache.io/v1alpha1/namespaces/team/imagerepositorywatches";
pub const SECRETS: &str = "/api/v1/namespaces/team/secrets";
/// The repository every fault is aimed at, and the bystander on the same host.
pub const AFFECTED: &str = "faulty/app";
pub const BYSTANDER: &str = "steady/app";
/// Long enough for a pass on a busy two-core machine; the tests never wait on it unless
/// something is wrong.
pub const WAIT: Duration = Duration::from_secs(90);
/// The controller's per-request registry timeout in these tests.
pub const REQUEST_TIMEOUT: &str = "3s";

/// Regex matching request paths of the affected repository only.
pub fn affected_path(rest: &str) -> String {
    format!("^/v2/{AFFECTED}/{rest}")
}

#[derive(Clone, Default)]
pub struct Options {
    /// memcached servers to start (default 1).
    pub memcached: usize,
    /// Stop memcached before the controller starts (and do not wait for the first warm).
    pub memcached_down_at_start: bool,
    /// The Kubernetes API emulator instead of a real API server, for a fault only it can
    /// make on demand (see docs/testing.md).
    pub emulator: bool,
}

/// The Kubernetes API the rig's controller talks to.
pub enum KubeApi {
    Real(Box<ApiServer>),
    Emulated(Emulator),
}

impl KubeApi {
    pub fn kubeconfig(&self) -> &std::path::Path {
        match self {
            KubeApi::Real(s) => &s.kubeconfig,
            KubeApi::Emulated(e) => &e.kubeconfig,
        }
    }

    /// The emulator (panics on a real API server).
    pub fn emulator(&self) -> &Emulator {
        match self {
            KubeApi::Emulated(e) => e,
            KubeApi::Real(_) => panic!("this rig runs on a real API server, not the emulator"),
        }
    }
}

impl std::ops::Deref for KubeApi {
    type Target = KubeClient;
    fn deref(&self) -> &KubeClient {
        match self {
            KubeApi::Real(s) => s,
            KubeApi::Emulated(e) => e,
        }
    }
}

/// One watch: its name, the repository it covers (as the read API names it), and the
/// images the test pushed, by tag.
#[derive(Clone)]
pub struct Watch {
    pub name: &'static str,
    pub repository: String,
    pub images: BTreeMap<String, PushedImage>,
}

impl Watch {
    pub fn path(&self) -> String {
        format!("{WATCHES}/{}", self.name)
    }
    pub fn digests(&self) -> BTreeMap<String, String> {
        self.images
            .iter()
            .map(|(t, i)| (t.clone(), i.digest.clone()))
            .collect()
    }
}

pub struct Rig {
    pub registry: Registry,
    pub proxy: FaultProxy,
    pub memcached: Vec<Memcached>,
    pub kube: KubeApi,
    pub controller: ControllerProcess,
    pub api: String,
    pub probes: String,
    pub http: reqwest::Client,
    pub affected: Watch,
    pub bystander: Watch,
    pub rescans: std::sync::atomic::AtomicUsize,
    pub _dir: tempfile::TempDir,
}

pub fn pull_secret(host: &str) -> Value {
    super::kube::pull_secret(NS, "regcred", host, CANARY_PASSWORD)
}

pub fn watch_object(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "regcache.io/v1alpha1",
        "kind": "ImageRepositoryWatch",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"image": image, "pullSecrets": [{"name": "regcred"}], "insecure": true, "interval": "1h"},
    })
}

pub fn last_update(watch: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(watch["status"]["lastUpdate"].as_str()?).ok()
}

pub fn last_error(watch: &Value) -> Option<String> {
    watch["status"]["lastError"].as_str().map(str::to_string)
}

/// Ready=True, no lastError, and lastUpdate later than `after` (when given).
pub fn succeeded_after(
    after: Option<chrono::DateTime<chrono::FixedOffset>>,
) -> impl Fn(&Value) -> bool {
    move |w| {
        ready(w).is_some_and(|(s, _)| s == "True")
            && last_error(w).is_none()
            && last_update(w).is_some_and(|t| after.is_none_or(|a| t > a))
    }
}

/// The tags and digests a read API answer holds.
pub fn served(answer: &Value) -> BTreeMap<String, String> {
    // Tags whose image is served: `tags` maps a tag to its digest, `images` holds each
    // image once by digest.
    answer["tags"]
        .as_object()
        .map(|tags| {
            tags.iter()
                .filter_map(|(t, d)| Some((t.clone(), d.as_str()?.to_string())))
                .filter(|(_, d)| answer["images"].get(d.as_str()).is_some())
                .collect()
        })
        .unwrap_or_default()
}

/// The image a repository answer serves for `tag` (`Null` when none).
pub fn image_of<'a>(answer: &'a Value, tag: &str) -> &'a Value {
    let digest = answer["tags"][tag].as_str().unwrap_or_default();
    &answer["images"][digest]
}

impl Rig {
    pub async fn start(options: Options) -> Rig {
        let registry = Registry::start(RegistryAuth::Basic);
        let proxy = registry.fault_proxy();
        let pusher = registry.pusher();
        let mut affected_images = BTreeMap::new();
        for (seed, tag) in [(1, "v1"), (2, "v2")] {
            let image = ImageSpec::new(ManifestKind::Oci).seed(seed);
            affected_images.insert(
                tag.to_string(),
                pusher.push_image(AFFECTED, tag, &image).await,
            );
        }
        let mut bystander_images = BTreeMap::new();
        bystander_images.insert(
            "v1".to_string(),
            pusher
                .push_image(
                    BYSTANDER,
                    "v1",
                    &ImageSpec::new(ManifestKind::Oci).seed(100),
                )
                .await,
        );
        let mut memcached: Vec<Memcached> = (0..options.memcached.max(1))
            .map(|_| Memcached::start())
            .collect();
        if options.memcached_down_at_start {
            for m in &mut memcached {
                m.stop();
            }
        }
        let emulator = if options.emulator {
            KubeApi::Emulated(Emulator::start())
        } else {
            let server = tokio::task::spawn_blocking(ApiServer::start).await.unwrap();
            server.install_crd().await;
            server.namespace(NS).await;
            KubeApi::Real(Box::new(server))
        };
        let host = proxy.host();
        emulator.create(SECRETS, pull_secret(&host)).await;
        let affected = Watch {
            name: "affected",
            repository: format!("{host}/{AFFECTED}"),
            images: affected_images,
        };
        let bystander = Watch {
            name: "bystander",
            repository: format!("{host}/{BYSTANDER}"),
            images: bystander_images,
        };
        for w in [&affected, &bystander] {
            emulator
                .create(WATCHES, watch_object(w.name, &w.repository))
                .await;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec![
            "--api-auth".into(),
            "none".into(),
            "--request-timeout".into(),
            REQUEST_TIMEOUT.into(),
            "--log-level".into(),
            "regcache=debug,info".into(),
        ];
        for m in &memcached {
            args.push("--memcached".into());
            args.push(m.addr());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let controller = ControllerProcess::start(
            emulator.kubeconfig(),
            &args,
            dir.path().join("controller.log"),
        );
        let api = controller.address("read API").await;
        let probes = controller.address("health probes").await;
        let rig = Rig {
            registry,
            proxy,
            memcached,
            kube: emulator,
            controller,
            api,
            probes,
            http: super::http_client(None),
            affected,
            bystander,
            rescans: Default::default(),
            _dir: dir,
        };
        if !options.memcached_down_at_start {
            for w in [&rig.affected, &rig.bystander] {
                rig.wait(w, succeeded_after(None)).await;
                rig.assert_serves(w, &w.digests()).await;
            }
        }
        rig
    }

    pub fn watches(&self) -> [&Watch; 2] {
        [&self.affected, &self.bystander]
    }

    pub async fn get(&self, w: &Watch) -> Value {
        self.kube.get(&w.path()).await.expect("watch exists")
    }

    /// Polls the watch until `check` holds.
    pub async fn wait(&self, w: &Watch, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.get(w).await;
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting on watch {}; last seen: {v:#}\n--- controller log (tail) ---\n{}",
                w.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let logs = self.controller.logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Asks for a pass of `w` now and waits until the controller took the request in.
    pub async fn rescan(&self, w: &Watch) {
        let n = self
            .rescans
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let value = format!("rescan-{n}");
        self.kube
            .merge_patch(
                &w.path(),
                json!({"metadata": {"annotations": {"regcache.io/requestedAt": value}}}),
            )
            .await;
        self.wait(w, |v| v["status"]["lastHandledRequestedAt"] == value)
            .await;
    }

    /// Triggers a pass of `w` and returns the status once a pass failed (lastError set).
    pub async fn pass_fails(&self, w: &Watch) -> Value {
        self.rescan(w).await;
        self.wait(w, |v| last_error(v).is_some()).await
    }

    /// Triggers a pass of `w` and returns the status once a pass succeeded after `before`.
    pub async fn pass_succeeds(&self, w: &Watch, before: &Value) -> Value {
        let after = last_update(before);
        self.rescan(w).await;
        self.wait(w, succeeded_after(after)).await
    }

    /// The read API's answer for the watch's repository: status code and body.
    pub async fn read(&self, w: &Watch) -> (u16, Value) {
        let url = format!("http://{}/api/v1/repositories/{}", self.api, w.repository);
        let resp = self.http.get(url).send().await.expect("read API answers");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    /// The read API serves exactly these tags with these digests.
    pub async fn assert_serves(&self, w: &Watch, expected: &BTreeMap<String, String>) {
        let (status, body) = self.read(w).await;
        assert_eq!(status, 200, "read API for {}: {body:#}", w.repository);
        assert_eq!(&served(&body), expected, "served for {}", w.repository);
    }

    /// The registry password shows nowhere: controller log, statuses, read API answers.
    pub async fn assert_no_secrets(&self) {
        let mut texts = vec![("controller log".to_string(), self.controller.logs())];
        for w in self.watches() {
            texts.push((format!("watch {}", w.name), self.get(w).await.to_string()));
            texts.push((
                format!("read API {}", w.name),
                self.read(w).await.1.to_string(),
            ));
        }
        for (what, text) in texts {
            assert!(
                !text.contains(CANARY_PASSWORD),
                "the password is in the {what}"
            );
        }
    }

    pub fn assert_running(&mut self) {
        assert!(
            self.controller.is_running(),
            "the controller exited:\n{}",
            self.log_tail()
        );
    }

    /// After a pass that was not an error: the new tag joins what the affected repository
    /// serves, the process runs and the bystander is untouched.
    pub async fn assert_new_tag_served_by_a_healthy_rig(&mut self, tag: &str, image: PushedImage) {
        self.affected.images.insert(tag.to_string(), image);
        self.assert_healthy().await;
    }

    /// The process runs, the affected repository serves all its tags, the bystander is
    /// untouched.
    pub async fn assert_healthy(&mut self) {
        self.assert_running();
        self.assert_serves(&self.affected, &self.affected.digests())
            .await;
        self.assert_bystander_clean().await;
    }

    /// The bystander's passes keep succeeding while the fault is active.
    pub async fn assert_bystander_clean(&self) {
        let before = self.get(&self.bystander).await;
        let after = self.pass_succeeds(&self.bystander, &before).await;
        assert_eq!(ready(&after).unwrap().0, "True");
        self.assert_serves(&self.bystander, &self.bystander.digests())
            .await;
    }

    /// Pushes a new tag to the affected repository (the next pass must resolve and fetch
    /// it), returning the pushed image; `self.affected.images` is not changed.
    pub async fn push_affected(&self, tag: &str, seed: u64) -> PushedImage {
        self.registry
            .pusher()
            .push_image(AFFECTED, tag, &ImageSpec::new(ManifestKind::Oci).seed(seed))
            .await
    }

    pub async fn readyz(&self) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}/readyz", self.probes))
            .send()
            .await
            .expect("probes answer");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }
}
