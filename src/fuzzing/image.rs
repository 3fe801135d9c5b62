//! Image references and the keys built from them, tag globs, webhook payloads.

use crate::api::webhook::pushed_repositories;
use crate::cache::keys::{self, MAX_KEY_LEN, Scope};
use crate::credentials::Credential;
use crate::image::{Digest, ImageRef, Platform, Reference, Repository, validate_tag};
use crate::warmer::glob::Glob;

/// Image references, repositories, digests, tags and platforms (`src/image/`), and the
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
            keys::tag_chunk(scope, repository, &"f".repeat(32)),
            keys::tag_schedule(scope, repository, &"f".repeat(32)),
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
