//! Writes images straight into a registry's filesystem storage, in the layout the registry
//! itself writes when images are pushed (blobs by digest, per-repository links for layers,
//! manifest revisions and tags). For benchmark datasets of 10^5 tags: pushing over the API
//! runs at ~200 tags/s on a 2-core machine, writing the layout at several thousand per
//! second. The registry serves seeded images exactly as pushed ones (benchmarks check a
//! sample over the API); tests that exercise pushing use [`Pusher`](super::Pusher).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, sha256_digest};

/// One single-platform OCI image written by [`Seeder::image`].
#[derive(Clone, Debug)]
pub struct SeededImage {
    pub digest: String,
    pub config_digest: String,
    pub created: String,
}

/// See the module docs. `storage` is the registry's `rootdirectory`.
pub struct Seeder {
    v2: PathBuf,
    layer: Vec<u8>,
    layer_digest: String,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

fn write_link(path: PathBuf, digest: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).expect("create link directory");
    std::fs::write(path, digest).expect("write link");
}

impl Seeder {
    pub fn new(storage: &Path) -> Seeder {
        let layer = super::pusher::layer_bytes(0x5eed, &super::PlatformSpec::linux_amd64());
        let layer_digest = sha256_digest(&layer);
        let seeder = Seeder {
            v2: storage.join("docker/registry/v2"),
            layer,
            layer_digest,
        };
        seeder.blob(&seeder.layer.clone());
        seeder
    }

    /// Stores a blob (once per digest) and returns its digest.
    pub fn blob(&self, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        let hex = hex_of(&digest);
        let path = self
            .v2
            .join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).expect("create blob directory");
            std::fs::write(&path, bytes).expect("write blob");
        }
        digest
    }

    fn repository(&self, repo: &str) -> PathBuf {
        self.v2.join("repositories").join(repo)
    }

    /// Makes a stored blob part of `repo` (what a layer or config upload leaves behind).
    pub fn link_blob(&self, repo: &str, digest: &str) {
        let path = self
            .repository(repo)
            .join(format!("_layers/sha256/{}/link", hex_of(digest)));
        write_link(path, digest);
    }

    /// Stores manifest bytes as a revision of `repo`; returns the manifest digest.
    pub fn manifest(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = self.blob(bytes);
        let path = self.repository(repo).join(format!(
            "_manifests/revisions/sha256/{}/link",
            hex_of(&digest)
        ));
        write_link(path, &digest);
        digest
    }

    /// Points `tag` of `repo` at a manifest already stored in `repo`.
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        let dir = self.repository(repo).join("_manifests/tags").join(tag);
        write_link(dir.join("current/link"), digest);
        write_link(
            dir.join(format!("index/sha256/{}/link", hex_of(digest))),
            digest,
        );
    }

    /// A single-platform OCI image of `repo` (shared layer, a config made distinct by
    /// `seed`, created `seed` minutes after 2024-01-01), not tagged yet.
    pub fn image(&self, repo: &str, seed: u64) -> SeededImage {
        let base = chrono::DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z").unwrap();
        let created = (base + chrono::Duration::minutes(seed as i64))
            .to_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Labels": {
                "org.opencontainers.image.created": created,
                "org.opencontainers.image.source": "https://example.com/bench",
                "org.opencontainers.image.revision": format!("{seed:040x}"),
            }},
            "rootfs": {"type": "layers", "diff_ids": [self.layer_digest]},
            "history": [{"created": created, "created_by": format!("regcache-bench seed={seed}")}],
        }))
        .unwrap();
        let config_digest = self.blob(&config);
        let manifest = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": self.layer_digest, "size": self.layer.len()}],
        }))
        .unwrap();
        self.link_blob(repo, &self.layer_digest);
        self.link_blob(repo, &config_digest);
        let digest = self.manifest(repo, &manifest);
        SeededImage {
            digest,
            config_digest,
            created,
        }
    }
}
