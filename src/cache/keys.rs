//! The versioned key schema, documented for other languages in `docs/cache-schema.md`:
//! images and contents under `rc2:`, tag indexes under `rc3:`. Keys stay within memcached's 250 bytes and contain no spaces or
//! control characters; long parts are hashed.

use sha2::{Digest as _, Sha256};

use crate::credentials::Credential;
use crate::image::{Digest, Repository};

/// Image records and contents keep the prefix of the schema that introduced them: their
/// format has not changed since, so an upgrade fetches no image again.
pub(crate) const PREFIX: &str = "rc2";
/// Tag indexes (heads, chunks, schedules) changed in `rc3`; a new schema gets a new prefix
/// so old and new readers can share one memcached during an upgrade.
pub(crate) const INDEX_PREFIX: &str = "rc3";

/// memcached refuses longer keys.
pub const MAX_KEY_LEN: usize = 250;

/// Repository names longer than this are hashed in keys, leaving room for the prefix,
/// scope and chunk id within [`MAX_KEY_LEN`].
const MAX_NAME_IN_KEY: usize = 150;

/// Whose view of the registry an entry belongs to. Metadata warmed anonymously is public;
/// metadata warmed with a credential is private to (registry host, tenant, credential
/// identity), so a tenant reading under another scope never sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    /// Anonymous access: anyone may read.
    pub fn public() -> Scope {
        Scope("pub".to_string())
    }

    /// `tenant` is the namespace of the watch that holds the credential (empty outside
    /// Kubernetes). The credential's identity (`basic:USER`, never its secret) is hashed
    /// with the host and tenant: two namespaces using one account name still get two
    /// scopes.
    pub fn for_credential(host: &str, tenant: &str, credential: &Credential) -> Scope {
        if credential.is_anonymous() {
            return Scope::public();
        }
        Scope::for_identity(host, tenant, &credential.identity())
    }

    /// The private scope of an identity that is not a stored credential (a cloud login:
    /// `aws:team/puller=arn:...`); the same hashing as [`Scope::for_credential`].
    pub fn for_identity(host: &str, tenant: &str, identity: &str) -> Scope {
        let mut h = Sha256::new();
        for part in [host, tenant, identity] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Scope(format!("p{}", &hex::encode(h.finalize())[..24]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_public(&self) -> bool {
        self.0 == "pub"
    }

    /// Parses a scope as written in keys (`pub`, or `p` and 24 hex digits).
    pub fn parse(s: &str) -> Option<Scope> {
        let ok = s == "pub"
            || (s.len() == 25
                && s.starts_with('p')
                && s[1..]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        ok.then(|| Scope(s.to_string()))
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The repository part of a key: the canonical name when it is short, else
/// `sha256-` and the first 40 hex digits of the sha256 of the canonical name.
pub(crate) fn repository_part(repository: &Repository) -> String {
    let name = repository.canonical();
    if name.len() <= MAX_NAME_IN_KEY {
        name
    } else {
        format!(
            "sha256-{}",
            &hex::encode(Sha256::digest(name.as_bytes()))[..40]
        )
    }
}

/// `rc2:img:<scope>:<digest>` — one image (manifest or index) by digest.
pub fn image(scope: &Scope, digest: &Digest) -> String {
    format!("{PREFIX}:img:{scope}:{digest}")
}

/// `rc2:raw:<scope>:<digest>` — a manifest or config blob as the registry sent it.
pub fn content(scope: &Scope, digest: &Digest) -> String {
    format!("{PREFIX}:raw:{scope}:{digest}")
}

/// `rc3:repo:<scope>:<repository>` — the head of a repository's tag index.
pub fn repository_head(scope: &Scope, repository: &Repository) -> String {
    format!(
        "{INDEX_PREFIX}:repo:{scope}:{}",
        repository_part(repository)
    )
}

/// `rc3:tags:<scope>:<repository>:<id>` — one chunk of a tag index, named by the hash of
/// its content, so a chunk that did not change is not written again.
pub fn tag_chunk(scope: &Scope, repository: &Repository, id: &str) -> String {
    format!(
        "{INDEX_PREFIX}:tags:{scope}:{}:{id}",
        repository_part(repository)
    )
}

/// `rc3:due:<scope>:<repository>:<id>` — the refresh schedule of the tags of chunk `id`,
/// which only the warmer reads.
pub fn tag_schedule(scope: &Scope, repository: &Repository, id: &str) -> String {
    format!(
        "{INDEX_PREFIX}:due:{scope}:{}:{id}",
        repository_part(repository)
    )
}

/// The kind of item a key names (`image`, `content`, `repository_head`, `tag_chunk`,
/// `tag_schedule`), for metrics.
pub(crate) fn kind_of(key: &str) -> &'static str {
    let mut parts = key.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some(PREFIX), Some("img")) => "image",
        (Some(PREFIX), Some("raw")) => "content",
        (Some(INDEX_PREFIX), Some("repo")) => "repository_head",
        (Some(INDEX_PREFIX), Some("tags")) => "tag_chunk",
        (Some(INDEX_PREFIX), Some("due")) => "tag_schedule",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_names_its_kind() {
        let (s, r) = (Scope::public(), repo("ghcr.io/a/b"));
        assert_eq!(kind_of(&image(&s, &Digest::sha256_of(b"x"))), "image");
        assert_eq!(kind_of(&content(&s, &Digest::sha256_of(b"x"))), "content");
        assert_eq!(kind_of(&repository_head(&s, &r)), "repository_head");
        assert_eq!(kind_of(&tag_chunk(&s, &r, "0a")), "tag_chunk");
        assert_eq!(kind_of(&tag_schedule(&s, &r, "0a")), "tag_schedule");
        assert_eq!(
            kind_of("rc2:tags:pub:x"),
            "other",
            "an rc2 index is not read"
        );
        assert_eq!(kind_of("rc1:img:pub:x"), "other");
        assert_eq!(kind_of("img"), "other");
    }

    fn repo(s: &str) -> Repository {
        Repository::parse(s).unwrap()
    }

    #[test]
    fn keys_are_readable_when_short() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(image(&Scope::public(), &d), format!("rc2:img:pub:{d}"));
        assert_eq!(
            repository_head(&Scope::public(), &repo("nginx")),
            "rc3:repo:pub:docker.io/library/nginx"
        );
        assert_eq!(
            tag_chunk(&Scope::public(), &repo("ghcr.io/a/b"), "0f"),
            "rc3:tags:pub:ghcr.io/a/b:0f"
        );
    }

    #[test]
    fn longest_names_hash_and_fit() {
        // The longest repository the parser accepts.
        let long = format!("registry.example.com:5000/{}", "a/".repeat(113) + "z");
        let r = repo(&long);
        let scope = Scope::for_credential("h", "tenant", &Credential::basic("u", "p"));
        for key in [
            repository_head(&scope, &r),
            tag_chunk(&scope, &r, &"f".repeat(32)),
            tag_schedule(&scope, &r, &"f".repeat(32)),
            image(
                &scope,
                &Digest::parse(&format!("sha512:{}", "a".repeat(128))).unwrap(),
            ),
        ] {
            assert!(key.len() <= MAX_KEY_LEN, "{} {key}", key.len());
            assert!(key.bytes().all(|b| b > b' ' && b != 0x7f), "{key}");
        }
        assert!(repository_part(&r).starts_with("sha256-"));
    }

    #[test]
    fn scopes_separate_tenants_hosts_and_identities_never_secrets() {
        let a = Credential::basic("alice", "secret-one");
        let a2 = Credential::basic("alice", "secret-two");
        let b = Credential::basic("bob", "secret-one");
        let s = Scope::for_credential("ghcr.io", "team-a", &a);
        assert_eq!(
            s,
            Scope::for_credential("ghcr.io", "team-a", &a2),
            "identity, not secret"
        );
        assert_ne!(s, Scope::for_credential("ghcr.io", "team-a", &b));
        assert_ne!(s, Scope::for_credential("ghcr.io", "team-b", &a));
        assert_ne!(s, Scope::for_credential("quay.io", "team-a", &a));
        assert_eq!(
            Scope::for_credential("ghcr.io", "team-a", &Credential::Anonymous),
            Scope::public()
        );
        assert!(!s.as_str().contains("alice") && !s.as_str().contains("secret"));
        assert_eq!(Scope::parse(s.as_str()), Some(s));
        assert_eq!(Scope::parse("pub"), Some(Scope::public()));
        assert_eq!(Scope::parse("pXYZ"), None);
    }
}
