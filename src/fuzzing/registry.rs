//! What registries send: auth challenges, manifests, image configs.

use serde_json::Value;

use crate::image::{Digest, Platform, parse_time};
use crate::registry::auth::{Challenge, parse_www_authenticate};
use crate::registry::manifest::{
    ImageConfig, Manifest, MediaKind, config_descriptor, detect_kind, digest_payload,
    index_entries, parse_manifest, platform_wanted,
};

/// `WWW-Authenticate` challenges (`src/registry/auth.rs`).
///
/// Properties: a Bearer challenge always has a realm to ask; rendering the parsed challenge
/// back as a header (quoting every value) parses to the same challenge.
pub fn www_authenticate(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let Some(challenge) = parse_www_authenticate(&input) else {
        return;
    };
    let rendered = match &challenge {
        Challenge::Anonymous => panic!("a header never means anonymous: {input:?}"),
        Challenge::Basic { realm } => match realm {
            Some(realm) => format!("Basic realm={}", quote(realm)),
            None => "Basic".to_string(),
        },
        Challenge::Bearer {
            realm,
            service,
            scope,
            error,
        } => {
            assert!(
                !realm.is_empty(),
                "Bearer with an empty realm from {input:?}"
            );
            let mut header = format!("Bearer realm={}", quote(realm));
            for (name, value) in [("service", service), ("scope", scope), ("error", error)] {
                if let Some(value) = value {
                    header.push_str(&format!(",{name}={}", quote(value)));
                }
            }
            header
        }
    };
    assert_eq!(
        parse_www_authenticate(&rendered).as_ref(),
        Some(&challenge),
        "{input:?} parsed, rendered as {rendered:?}, parsed differently"
    );
}

/// RFC 7230 quoted-string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

const MEDIA_KINDS: [MediaKind; 6] = [
    MediaKind::OciManifest,
    MediaKind::OciIndex,
    MediaKind::DockerManifest,
    MediaKind::DockerManifestList,
    MediaKind::DockerSchema1,
    MediaKind::DockerSchema1Signed,
];

/// Manifests, indexes and schema1 (`src/registry/manifest.rs`). The first byte picks the
/// media type (or lets the body's shape decide, as for a registry sending
/// `application/json`); the rest is the body.
///
/// Properties: media types round-trip; a parsed manifest is of the kind asked for; index
/// entries are one per descriptor with normalised platforms; the digest payload of anything
/// but signed schema1 is the body itself.
pub fn manifest(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    if let Some(kind) = MediaKind::from_media_type(&String::from_utf8_lossy(body)) {
        assert_eq!(MediaKind::from_media_type(kind.media_type()), Some(kind));
    }
    let kind = match MEDIA_KINDS.get(usize::from(selector % 7)) {
        Some(kind) => *kind,
        None => match detect_kind(None, body) {
            Ok(kind) => kind,
            Err(_) => return,
        },
    };
    match digest_payload(kind, body) {
        Ok(payload) if kind != MediaKind::DockerSchema1Signed => assert_eq!(&*payload, body),
        _ => {}
    }
    assert!(Digest::sha256_of(body).verify(body));
    let Ok(parsed) = parse_manifest(kind, body) else {
        return;
    };
    match parsed {
        Manifest::Image(image) => {
            assert!(matches!(
                kind,
                MediaKind::OciManifest | MediaKind::DockerManifest
            ));
            let _ = config_descriptor(&image);
        }
        Manifest::Index(index) => {
            assert!(kind.is_index());
            if let Ok(entries) = index_entries(&index, body) {
                assert_eq!(entries.len(), index.manifests().len());
                let linux = Platform::new("linux", "amd64", None);
                for entry in &entries {
                    if let Some(p) = &entry.platform {
                        let renormalised =
                            Platform::new(&p.os, &p.architecture, p.variant.as_deref());
                        assert_eq!(&renormalised, p);
                        assert!(platform_wanted(Some(p), &[]));
                        assert!(platform_wanted(Some(p), std::slice::from_ref(p)));
                    }
                    let _ = platform_wanted(entry.platform.as_ref(), std::slice::from_ref(&linux));
                }
            }
        }
        Manifest::Schema1(schema1) => {
            assert!(matches!(
                kind,
                MediaKind::DockerSchema1 | MediaKind::DockerSchema1Signed
            ));
            if let Ok(config) = schema1.config() {
                check_config(&config);
            }
        }
    }
}

/// Image config blobs and their timestamps (`ImageConfig::parse`, `parse_time`).
///
/// Properties: empty strings never count as an OS or architecture; the platform a config
/// yields is already normalised; a parsed time written back as RFC 3339 parses to the same
/// instant.
pub fn image_config(data: &[u8]) {
    if let Ok(config) = ImageConfig::parse(data) {
        check_config(&config);
    }
    if let Some(time) = parse_time(&String::from_utf8_lossy(data)) {
        check_time(time);
    }
}

/// A time regcache accepted is shown as RFC 3339 (the read API, `inspect`, the cache schema
/// all write it through serde), so what serde writes must be RFC 3339 that parses back.
fn check_time(time: chrono::DateTime<chrono::Utc>) {
    let Value::String(shown) = serde_json::to_value(time).expect("a time serialises") else {
        panic!("{time:?} does not serialise as a string");
    };
    assert_eq!(parse_time(&shown), Some(time), "{shown:?} is not RFC 3339");
}

fn check_config(config: &ImageConfig) {
    for field in [
        &config.os,
        &config.architecture,
        &config.variant,
        &config.os_version,
    ] {
        assert!(field.as_ref().is_none_or(|v| !v.is_empty()));
    }
    if let Some(p) = config.platform() {
        assert_eq!(
            Platform::new(&p.os, &p.architecture, p.variant.as_deref()),
            p
        );
    }
    if let Some(created) = config.created {
        check_time(created);
    }
}
