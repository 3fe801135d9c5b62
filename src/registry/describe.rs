//! Describe: an image's complete metadata (manifest, the wanted platforms of an index,
//! each image's config) as the cache records it.

use super::manifest::{self, ImageConfig, Manifest, ParseError};
use super::{Error, FetchedManifest, RepositoryClient, Result};
use crate::image::{
    BLOB_MEDIA_TYPE, ImageMetadata, Platform, PlatformImage, RawContent, Reference,
};

impl RepositoryClient {
    /// Complete metadata for one reference: the manifest, and for an index each wanted
    /// platform's manifest; each image's config. `platforms` empty means all of them.
    pub async fn inspect(
        &self,
        reference: &Reference,
        platforms: &[Platform],
    ) -> Result<ImageMetadata> {
        let top = self.get_manifest(reference).await?;
        let metadata = self.describe(reference, top, platforms, &[]).await?;
        // Asked for platforms the index does not have: say which it has.
        if metadata.platforms.is_empty() && !metadata.available_platforms.is_empty() {
            let list = |ps: &mut dyn Iterator<Item = &Platform>| {
                ps.map(Platform::to_string).collect::<Vec<_>>().join(", ")
            };
            return Err(Error::PlatformNotFound {
                repository: self.repository.canonical(),
                digest: metadata.digest.to_string(),
                wanted: list(&mut platforms.iter()),
                available: list(&mut metadata.available_platforms.iter()),
            });
        }
        Ok(metadata)
    }

    /// Builds [`ImageMetadata`] from an already fetched top-level manifest (a warm pass
    /// that learnt the manifest from a HEAD fallback does not fetch it twice). Platform
    /// images in `known` (by digest) are reused instead of fetched again. An index with
    /// none of the wanted platforms gives no platform images, only `available_platforms`.
    pub async fn describe(
        &self,
        reference: &Reference,
        top: FetchedManifest,
        platforms: &[Platform],
        known: &[PlatformImage],
    ) -> Result<ImageMetadata> {
        let tag = match reference {
            Reference::Tag(t) => Some(t.clone()),
            Reference::Digest(_) => None,
        };
        let mut available = Vec::new();
        let described: Vec<(PlatformImage, Vec<RawContent>)> = match &top.manifest {
            Manifest::Image(_) | Manifest::Schema1(_) => {
                vec![self.platform_image(&top, None).await?]
            }
            Manifest::Index(index) => {
                let entries = manifest::index_entries(index, &top.bytes).map_err(|source| {
                    Error::Invalid {
                        url: self.manifest_url(reference).to_string(),
                        what: "image index",
                        source,
                    }
                })?;
                let wanted: Vec<_> = entries
                    .iter()
                    .filter(|e| !e.is_attestation)
                    .filter(|e| manifest::platform_wanted(e.platform.as_ref(), platforms))
                    .collect();
                available = entries
                    .iter()
                    .filter(|e| !e.is_attestation)
                    .filter_map(|e| e.platform.clone())
                    .collect();
                let children = wanted.iter().map(|entry| async move {
                    if let Some(k) = known.iter().find(|k| k.digest == entry.digest) {
                        // Cached with its contents when it was first fetched.
                        return Ok((k.clone(), Vec::new()));
                    }
                    let child = self
                        .get_manifest(&Reference::Digest(entry.digest.clone()))
                        .await?;
                    if matches!(child.manifest, Manifest::Index(_)) {
                        return Err(Error::Invalid {
                            url: self
                                .manifest_url(&Reference::Digest(entry.digest.clone()))
                                .to_string(),
                            what: "image index",
                            source: ParseError::Malformed {
                                kind: "image index",
                                detail: "an index nested in an index is not supported".to_string(),
                            },
                        });
                    }
                    self.platform_image(&child, Some(entry)).await
                });
                futures::future::try_join_all(children).await?
            }
        };
        let mut contents = Vec::new();
        if matches!(top.manifest, Manifest::Index(_)) {
            contents.extend(manifest_content(&top));
        }
        let mut images = Vec::with_capacity(described.len());
        for (image, raw) in described {
            images.push(image);
            contents.extend(raw);
        }
        let created = images.iter().filter_map(|i| i.created).max();
        let labels = images.first().map(|i| i.labels.clone()).unwrap_or_default();
        Ok(ImageMetadata {
            canonical_name: self.repository.canonical(),
            tag,
            digest: top.digest.clone(),
            media_type: top.kind.media_type().to_string(),
            created,
            labels,
            platforms: images,
            available_platforms: available,
            contents,
        })
    }

    async fn platform_image(
        &self,
        fetched: &FetchedManifest,
        entry: Option<&manifest::IndexEntry>,
    ) -> Result<(PlatformImage, Vec<RawContent>)> {
        let (config_digest, config, config_missing) = match &fetched.manifest {
            Manifest::Image(m) => {
                let (digest, _) =
                    manifest::config_descriptor(m).map_err(|source| Error::Invalid {
                        url: self
                            .manifest_url(&Reference::Digest(fetched.digest.clone()))
                            .to_string(),
                        what: "manifest",
                        source,
                    })?;
                match self.get_config(&digest).await {
                    Ok(c) => (Some(digest), c, false),
                    Err(Error::BlobUnknown { .. }) => (Some(digest), ImageConfig::default(), true),
                    Err(e) => return Err(e),
                }
            }
            Manifest::Schema1(s) => {
                let config = s.config().map_err(|source| Error::Invalid {
                    url: self
                        .manifest_url(&Reference::Digest(fetched.digest.clone()))
                        .to_string(),
                    what: "schema1 manifest",
                    source,
                })?;
                (None, config, false)
            }
            Manifest::Index(_) => unreachable!("callers pass image manifests only"),
        };
        let platform = entry
            .and_then(|e| e.platform.clone())
            .or_else(|| config.platform());
        let mut contents: Vec<RawContent> = manifest_content(fetched).into_iter().collect();
        if let Some(digest) = config_digest.as_ref().filter(|_| !config.raw.is_empty()) {
            contents.push(RawContent {
                digest: digest.clone(),
                media_type: BLOB_MEDIA_TYPE.to_string(),
                bytes: config.raw.clone(),
            });
        }
        let image = PlatformImage {
            platform,
            os_version: entry
                .and_then(|e| e.os_version.clone())
                .or(config.os_version.clone()),
            digest: fetched.digest.clone(),
            media_type: fetched.kind.media_type().to_string(),
            config_digest,
            created: config.created,
            labels: config.labels,
            config_missing,
        };
        Ok((image, contents))
    }
}

/// A fetched manifest as the registry sent it; none for a signed schema1 manifest, whose
/// digest covers less than its bytes (no client reads those from regcache's registry API).
fn manifest_content(fetched: &FetchedManifest) -> Option<RawContent> {
    fetched.digest.verify(&fetched.bytes).then(|| RawContent {
        digest: fetched.digest.clone(),
        media_type: fetched.kind.media_type().to_string(),
        bytes: fetched.bytes.clone(),
    })
}
