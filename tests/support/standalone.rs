//! `regcache standalone` as a process, for tests that read it the way agents do: one watch
//! of an image, its read API's address, and a wait until the repository is warmed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `regcache standalone` warming `image` (one watch, `default/app`), with its read API.
pub struct Standalone {
    child: std::process::Child,
    /// The read API's `HOST:PORT`.
    pub api: String,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Standalone {
    pub async fn start(image: &str, memcached: &super::Memcached) -> Standalone {
        Self::start_with(image, memcached, &[]).await
    }

    /// With more command-line arguments (`--api-tls-cert-file`, ...).
    pub async fn start_with(
        image: &str,
        memcached: &super::Memcached,
        args: &[&str],
    ) -> Standalone {
        let dir = tempfile::tempdir().unwrap();
        let watch = dir.path().join("watch.yaml");
        std::fs::write(
            &watch,
            format!(
                "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: app}}\nspec: {{image: {image}, insecure: true, interval: 1h}}\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("regcache.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(["standalone", "--watches"])
            .arg(&watch)
            .args(["--memcached", &memcached.addr()])
            .args(["--api-bind-address", "127.0.0.1:0"])
            .args(["--metrics-bind-address", "127.0.0.1:0"])
            .args(["--health-probe-bind-address", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start regcache standalone");
        let api = super::wait_for_listener(&log, "read API").await;
        Standalone {
            child,
            api,
            log,
            _dir: dir,
        }
    }

    /// Waits until every one of `tags` of `repository` is resolved and described.
    pub async fn wait_warmed(&self, repository: &str, tags: usize) {
        let http = super::http_client(None);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = super::get_json(
                &http,
                &format!("http://{}/api/v1/repositories/{repository}", self.api),
            )
            .await;
            if answer["tags"]
                .as_object()
                .is_some_and(|t| t.len() == tags && t.values().all(Value::is_string))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not warmed: {answer}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
