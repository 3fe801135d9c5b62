//! Fuzz properties: one function per untrusted-input family, each taking arbitrary bytes and
//! panicking when a property regcache relies on does not hold.
//!
//! Both runners call these same functions: the cargo-fuzz targets in `fuzz/` (coverage-guided,
//! libFuzzer) and `tests/it/fuzz.rs` (stable, replays `fuzz/corpus/` plus seeded mutations), so a
//! property is written once and a crashing input added to the corpus becomes a regression
//! test on stable. See `docs/fuzzing.md`.
//!
//! Not part of the supported API; public only so the fuzz crate can reach it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use crate::api::webhook::pushed_repositories;
use crate::cache::keys::{self, MAX_KEY_LEN, Scope};
use crate::cache::memory::MemoryCache;
use crate::cache::store::{MetadataStore, TagEntry};
use crate::cache::{CacheWriter, MAX_TTL, MIN_TTL, Millis, VALUE_MAGIC, decode_value};
use crate::cache::{encode_value, ttl_for};
use crate::credentials::{Credential, DockerConfig};
use crate::image::{Digest, ImageRef, Platform, Reference, Repository, parse_time, validate_tag};
use crate::registry::auth::{Challenge, parse_www_authenticate};
use crate::registry::manifest::{
    ImageConfig, Manifest, MediaKind, config_descriptor, detect_kind, digest_payload,
    index_entries, parse_manifest, platform_wanted,
};
use crate::warmer::glob::Glob;

/// A fuzz target: arbitrary bytes in, a panic when a property fails.
pub type Target = fn(&[u8]);

/// Every target by name; the name is also its directory under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("image_ref", image_ref),
    ("www_authenticate", www_authenticate),
    ("manifest", manifest),
    ("image_config", image_config),
    ("docker_config", docker_config),
    ("cache_value", cache_value),
    ("cache_store", cache_store),
    ("webhook", webhook),
    ("tag_glob", tag_glob),
];

/// Image references, repositories, digests, tags and platforms (`src/image.rs`), and the
/// cache keys built from them.
///
/// Properties: a parsed reference's canonical string re-parses to the same value (cache keys
/// are built from it, so two spellings must collapse and never split); `Repository::parse`
/// accepts exactly the references without tag or digest; platform normalisation is
/// idempotent; serde forms round-trip; every key stays a valid memcached key.
pub fn image_ref(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let s = input.as_ref();
    match ImageRef::parse(s) {
        Ok(image) => {
            let canonical = image.canonical();
            let again = ImageRef::parse(&canonical)
                .unwrap_or_else(|e| panic!("canonical {canonical:?} of {s:?} is refused: {e}"));
            assert_eq!(
                again, image,
                "canonical {canonical:?} of {s:?} re-parses differently"
            );
            assert_eq!(again.canonical(), canonical);

            let repository = &image.repository;
            let name = repository.canonical();
            assert!(
                name.len() <= 255,
                "canonical name of {s:?} is {} long",
                name.len()
            );
            assert_eq!(Repository::parse(&name).as_ref(), Ok(repository));
            let json = serde_json::to_string(repository).expect("a repository serialises");
            let back: Repository = serde_json::from_str(&json).expect("a repository reads back");
            assert_eq!(&back, repository);

            match Repository::parse(s) {
                Ok(parsed) => {
                    assert!(image.tag.is_none() && image.digest.is_none());
                    assert_eq!(&parsed, repository);
                }
                Err(_) => assert!(image.tag.is_some() || image.digest.is_some()),
            }
            match image.reference() {
                Reference::Tag(tag) => assert_eq!(validate_tag(&tag), Ok(())),
                Reference::Digest(digest) => {
                    assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(&digest))
                }
            }
            check_keys(repository);
        }
        Err(e) => {
            assert!(
                Repository::parse(s).is_err(),
                "{s:?}: repository but not image"
            );
            assert!(!e.to_string().is_empty() && !e.metric_label().is_empty());
        }
    }

    if let Ok(digest) = Digest::parse(s) {
        assert_eq!(digest.as_str(), s);
        assert_eq!(digest.hex().len(), digest.algorithm().hex_len());
        let json = serde_json::to_string(&digest).expect("a digest serialises");
        assert_eq!(serde_json::from_str::<Digest>(&json).ok(), Some(digest));
    }

    if let Ok(platform) = Platform::parse(s) {
        let shown = platform.to_string();
        let again = Platform::parse(&shown)
            .unwrap_or_else(|e| panic!("platform {shown:?} of {s:?} is refused: {e}"));
        assert_eq!(again, platform, "normalising {s:?} twice changes it");
        assert!(platform.matches(&again));
        let json = serde_json::to_string(&platform).expect("a platform serialises");
        assert_eq!(serde_json::from_str::<Platform>(&json).ok(), Some(platform));
    }

    if validate_tag(s).is_ok() {
        let tagged = ImageRef::parse(&format!("ghcr.io/org/app:{s}"))
            .unwrap_or_else(|e| panic!("valid tag {s:?} refused in a reference: {e}"));
        assert_eq!(tagged.tag.as_deref(), Some(s));
    }
}

/// Every key built for `repository` fits memcached: at most 250 bytes, no space or control
/// character.
fn check_keys(repository: &Repository) {
    let scopes = [
        Scope::public(),
        Scope::for_credential(repository.host(), "tenant", &Credential::basic("u", "p")),
    ];
    let digest = Digest::parse(&format!("sha512:{}", "f".repeat(128))).expect("valid digest");
    for scope in &scopes {
        for key in [
            keys::repository_head(scope, repository),
            keys::tag_chunk(scope, repository, u64::MAX, u32::MAX),
            keys::image(scope, &digest),
        ] {
            assert!(
                key.len() <= MAX_KEY_LEN,
                "key {key:?} is {} long",
                key.len()
            );
            assert!(
                !key.chars().any(|c| c.is_whitespace() || c.is_control()),
                "key {key:?} has a space or control character"
            );
        }
    }
}

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

/// Marks every secret the fuzz input carries, so any output that contains it is a leak.
const CANARY: &str = "\u{1}regcache-fuzz-canary\u{1}";
const SOURCE_NAME: &str = "fuzzed pull secret";

/// Docker config and pull secrets (`DockerConfig::from_config_json`, `from_dockercfg`).
///
/// The input is parsed as is (no panic), then, when it is JSON, again with every password,
/// token and `auth` secret extended by a canary. Properties: the canary never appears in a
/// parsed config's `Debug`, a credential's `Debug` or identity, a cache scope, or an error's
/// `Display`/`Debug`; changing only secrets changes no identity or scope, but does change
/// the credential's fingerprint (so the token cache never shares a token across secrets).
pub fn docker_config(data: &[u8]) {
    let _ = DockerConfig::from_config_json(SOURCE_NAME, data);
    let _ = DockerConfig::from_dockercfg(SOURCE_NAME, data);
    // An input already holding the canary would be reported as a leak of itself.
    // Host keys are lower-cased, so any spelling of it counts.
    if String::from_utf8_lossy(data)
        .to_ascii_lowercase()
        .contains("regcache-fuzz-canary")
    {
        return;
    }
    let Ok(plain) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut marked = plain.clone();
    if let Value::Object(top) = &mut marked {
        for (key, value) in top.iter_mut() {
            // Every top-level value is an entry to `.dockercfg`, even one under "auths"; to
            // `config.json`, "auths" holds the entries. Mark secrets for both readings.
            mark_entry(value);
            if let ("auths", Value::Object(hosts)) = (key.as_str(), value) {
                hosts.values_mut().for_each(mark_entry);
            }
        }
    }
    let plain = serde_json::to_vec(&plain).expect("JSON values serialise");
    let marked = serde_json::to_vec(&marked).expect("JSON values serialise");
    type Parser = fn(&str, &[u8]) -> Result<DockerConfig, crate::credentials::CredentialsError>;
    let parsers: [Parser; 2] = [DockerConfig::from_config_json, DockerConfig::from_dockercfg];
    for parse in parsers {
        let with_canary = parse(SOURCE_NAME, &marked);
        match &with_canary {
            Ok(config) => {
                assert_no_canary(&format!("{config:?}"));
                for host in config.hosts() {
                    let credential = config.credential_for(host);
                    assert_no_canary(&format!("{credential:?}"));
                    assert_no_canary(&credential.identity());
                    assert_no_canary(Scope::for_credential(host, "t", &credential).as_str());
                }
            }
            Err(e) => {
                assert_no_canary(&e.to_string());
                assert_no_canary(&format!("{e:?}"));
            }
        }
        let (Ok(with_canary), Ok(without)) = (with_canary, parse(SOURCE_NAME, &plain)) else {
            continue;
        };
        let hosts: Vec<&str> = without.hosts().collect();
        for host in hosts {
            let (a, b) = (
                without.credential_for(host),
                with_canary.credential_for(host),
            );
            if a.is_anonymous() || b.is_anonymous() {
                continue;
            }
            assert_eq!(
                a.identity(),
                b.identity(),
                "{host}: identity depends on the secret"
            );
            assert_eq!(
                Scope::for_credential(host, "t", &a),
                Scope::for_credential(host, "t", &b),
                "{host}: cache scope depends on the secret"
            );
            assert_ne!(
                a.fingerprint(),
                b.fingerprint(),
                "{host}: fingerprint ignores the secret"
            );
        }
    }
}

fn mark_entry(entry: &mut Value) {
    let Value::Object(fields) = entry else {
        return;
    };
    for (name, value) in fields.iter_mut() {
        let Value::String(s) = value else { continue };
        match name.as_str() {
            "password" | "identitytoken" | "registrytoken" => s.push_str(CANARY),
            "auth" => {
                let decoded = STANDARD
                    .decode(s.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                match decoded {
                    Some(d) if d.contains(':') => *s = STANDARD.encode(format!("{d}{CANARY}")),
                    // Not a usable `auth`: the marked text must not surface in its error.
                    _ => s.push_str(CANARY),
                }
            }
            _ => {}
        }
    }
}

fn assert_no_canary(shown: &str) {
    assert!(
        !shown.contains("regcache-fuzz-canary"),
        "a secret appears in output: {shown:?}"
    );
}

/// The cache's value framing and scopes (`decode_value`, `encode_value`, `Scope::parse`).
///
/// Properties: anything `decode_value` accepts re-encodes to the same bytes; anything it
/// refuses lacks the header; any payload and deadline round-trip; TTLs stay within memcached's
/// bounds; a parsed scope is the string it came from.
pub fn cache_value(data: &[u8]) {
    match decode_value(Bytes::copy_from_slice(data)) {
        Some(entry) => assert_eq!(encode_value(entry.deadline, &entry.value).as_ref(), data),
        None => assert!(data.len() < VALUE_MAGIC.len() + 8 || data[..3] != VALUE_MAGIC),
    }
    let mut first = [0u8; 8];
    let n = data.len().min(8);
    first[..n].copy_from_slice(&data[..n]);
    let deadline = Millis(i64::from_le_bytes(first));
    let entry = decode_value(encode_value(deadline, data)).expect("an encoded value decodes");
    assert_eq!((entry.deadline, entry.value.as_ref()), (deadline, data));
    for now in [Millis(0), Millis(i64::MIN), Millis(i64::MAX), deadline] {
        let ttl = ttl_for(deadline, now);
        assert!((MIN_TTL..=MAX_TTL).contains(&ttl), "ttl {ttl:?}");
    }
    let _ = deadline.plus(Duration::MAX).until(deadline);
    let _ = deadline.to_datetime();

    let input = String::from_utf8_lossy(data);
    if let Some(scope) = Scope::parse(&input) {
        assert_eq!(scope.as_str(), input);
        assert_eq!(scope.is_public(), input == "pub");
        assert_eq!(Scope::parse(scope.as_str()), Some(scope));
    }
}

/// What the metadata store does with values another writer (or corruption) left in
/// memcached. The input is up to three payloads separated by NUL bytes: a repository head,
/// a tag chunk (stored as chunks 0..8 of the generation the head names) and an image
/// record (stored under every digest the chunk names).
///
/// Properties: every read returns (a miss, an error or data), never panics or hangs; an
/// index read back is sorted; publishing over the foreign state still succeeds and the new
/// index then reads back exactly.
pub fn cache_store(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let head = parts.next().unwrap_or_default();
    let chunk = parts.next();
    let record = parts.next();
    let repository = Repository::parse("ghcr.io/org/app").expect("valid repository");
    let fallback = Digest::sha256_of(b"regcache");
    let scope = Scope::public();
    let deadline = Millis::now().plus(Duration::from_secs(3600));

    let head_json: Option<Value> = serde_json::from_slice(head).ok();
    let generation = head_json
        .as_ref()
        .and_then(|h| h.get("generation"))
        .and_then(Value::as_u64)
        .unwrap_or(1);
    let chunk_json: Option<Value> = chunk.and_then(|c| serde_json::from_slice(c).ok());
    let mut digests = vec![fallback.clone()];
    if let Some(tags) = chunk_json
        .as_ref()
        .and_then(|c| c.get("tags"))
        .and_then(Value::as_array)
    {
        digests.extend(
            tags.iter()
                .filter_map(|t| t.get("digest")?.as_str())
                .filter_map(|d| Digest::parse(d).ok())
                .take(8),
        );
    }

    let backend = MemoryCache::default();
    // A value too large for an item is refused, as memcached would refuse it.
    let set = |key: String, value: &[u8]| {
        let _ = futures::executor::block_on(backend.set(&key, value, deadline));
    };
    set(keys::repository_head(&scope, &repository), head);
    if let Some(chunk) = chunk {
        for i in 0..8 {
            set(keys::tag_chunk(&scope, &repository, generation, i), chunk);
        }
    }
    if let Some(record) = record {
        for digest in &digests {
            set(keys::image(&scope, digest), record);
        }
    }
    let store = MetadataStore::new(backend);
    futures::executor::block_on(async {
        let _ = store.head(&scope, &repository).await;
        if let Ok(Some((_, entries))) = store.read_index(&scope, &repository).await {
            assert!(entries.windows(2).all(|w| w[0].tag <= w[1].tag));
        }
        let _ = store
            .get_image_repository_metadata(&scope, &repository)
            .await;
        for reference in ["ghcr.io/org/app:latest", "ghcr.io/org/app:v1"] {
            let image = ImageRef::parse(reference).expect("valid reference");
            let _ = store.get_image(&scope, &image).await;
        }
        for digest in &digests {
            let _ = store.get_image_record(&scope, digest).await;
            let image =
                ImageRef::parse(&format!("ghcr.io/org/app@{digest}")).expect("valid reference");
            let _ = store.get_image(&scope, &image).await;
        }
        let _ = store.cached_images(&scope, &digests).await;
        let _ = store
            .record_error(&scope, &repository, "fuzz", deadline)
            .await;

        let entries = vec![TagEntry {
            tag: "v1".to_string(),
            digest: Some(fallback.clone()),
            fetched: 1,
            deadline: 2,
            interval: 3,
        }];
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time");
        let published = store
            .publish_index(&scope, &repository, &entries, now, deadline)
            .await
            .expect("publishing to memory over foreign values succeeds");
        let (head, read) = store
            .read_index(&scope, &repository)
            .await
            .expect("memory reads succeed")
            .expect("the index just published is there");
        assert_eq!((head, read), (published, entries));
    });
}

/// Registry push webhooks (`pushed_repositories`).
///
/// Properties: the repositories come back sorted without duplicates, each in canonical form
/// (re-parsing gives the same repository); a refusal says why.
pub fn webhook(data: &[u8]) {
    match pushed_repositories(data) {
        Ok(repositories) => {
            assert!(repositories.windows(2).all(|w| w[0] < w[1]));
            for r in &repositories {
                assert_eq!(Repository::parse(&r.canonical()).as_ref(), Ok(r));
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

/// Tag glob patterns (`warmer::glob`, `spec.tags.include` / `exclude`): the first line is the
/// pattern, every further line a tag to match.
///
/// Properties: parsing and matching never panic and a refusal says why; on the syntax that
/// regcache and the `globset` crate define alike (ASCII, no `**`, no POSIX `[:class:]`, no
/// empty `{}` alternative, groups within regcache's limits), both accept the same patterns
/// and match the same tags. `globset` is the oracle only: regcache's own matcher holds a
/// few bytes per pattern where a compiled glob set held tens of KiB.
pub fn tag_glob(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or_default();
    let tags: Vec<&str> = lines.collect();
    let ours = Glob::new(pattern);
    if let Ok(glob) = &ours {
        for tag in &tags {
            glob.is_match(tag);
        }
    }
    if let Err(e) = &ours {
        assert!(!e.to_string().is_empty());
    }
    let shared_syntax = pattern.is_ascii()
        && !["**", "[:", "{,", ",,", ",}", "{}"]
            .iter()
            .any(|quirk| pattern.contains(quirk))
        && !ours.as_ref().is_err_and(|e| {
            let e = e.to_string();
            e.contains("deeper than") || e.contains("more than")
        });
    if !shared_syntax {
        return;
    }
    let oracle = globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher());
    assert_eq!(
        ours.is_ok(),
        oracle.is_ok(),
        "pattern {pattern:?}: regcache {ours:?}, globset {:?}",
        oracle.as_ref().err()
    );
    if let (Ok(glob), Ok(oracle)) = (ours, oracle) {
        for tag in tags.iter().filter(|t| t.is_ascii()) {
            assert_eq!(
                glob.is_match(tag),
                oracle.is_match(tag),
                "pattern {pattern:?}, tag {tag:?}"
            );
        }
    }
}
