//! Repositories, tags, digests and image references, parsed and canonicalised.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use super::*;

/// A registry host without its port: `registry.example.com:5000` → `registry.example.com`.
pub fn host_name(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A repository: registry host plus path, in Docker's canonical form.
///
/// Serialises as its canonical string (`"docker.io/library/nginx"`) and deserialises through
/// [`Repository::parse`], so any spelling Docker accepts is read back canonicalised.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Repository {
    host: String,
    path: String,
}

impl Repository {
    /// Parses and canonicalises a repository name such as `nginx` or `ghcr.io/org/app`.
    ///
    /// A tag or digest is an error: callers that want one should use [`ImageRef::parse`].
    pub fn parse(s: &str) -> Result<Repository, ImageError> {
        let image = parse_image_ref(WHAT_REPOSITORY, s)?;
        let part = match (&image.tag, &image.digest) {
            (None, None) => return Ok(image.repository),
            (Some(_), None) => "tag",
            (None, Some(_)) => "digest",
            (Some(_), Some(_)) => "tag and digest",
        };
        Err(ImageError::NotARepository {
            input: s.to_owned(),
            part,
        })
    }

    /// Registry host with optional port: `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Path within the registry, e.g. `library/nginx`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Canonical name, e.g. `docker.io/library/nginx`.
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.host, self.path)
    }

    /// Host to send HTTP requests to: [`DOCKER_HUB_ENDPOINT`] for Docker Hub, else [`Self::host`].
    pub fn endpoint_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.host
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

impl FromStr for Repository {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Repository::parse(s)
    }
}

impl TryFrom<String> for Repository {
    type Error = ImageError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Repository::parse(&s)
    }
}

impl From<Repository> for String {
    fn from(repository: Repository) -> String {
        repository.canonical()
    }
}

/// Hash algorithms accepted in digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256, 64 hex digits; what registries use in practice.
    Sha256,
    /// SHA-512, 128 hex digits.
    Sha512,
}

impl DigestAlgorithm {
    /// Name as written before the `:` in a digest, e.g. `sha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Number of hex digits in a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    pub(super) fn hash_hex(self, bytes: &[u8]) -> String {
        match self {
            DigestAlgorithm::Sha256 => hex::encode(sha2::Sha256::digest(bytes)),
            DigestAlgorithm::Sha512 => hex::encode(sha2::Sha512::digest(bytes)),
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A content digest such as `sha256:<64 lower-case hex digits>`.
///
/// Serialises as that string and deserialises through [`Digest::parse`].
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: DigestAlgorithm,
    // The whole "algorithm:hex" string, kept so that as_str() and hex() borrow instead of format.
    value: String,
}

impl Digest {
    /// Parses `sha256:` + 64 or `sha512:` + 128 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Digest, ImageError> {
        check_outer(WHAT_DIGEST, s)?;
        parse_digest(WHAT_DIGEST, s, s)
    }

    /// SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(DigestAlgorithm::Sha256, bytes)
    }

    pub(super) fn of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
        Digest {
            algorithm,
            value: format!("{}:{}", algorithm.as_str(), algorithm.hash_hex(bytes)),
        }
    }

    /// Hash algorithm of this digest.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// Lower-case hex digits, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.value[self.algorithm.as_str().len() + 1..]
    }

    /// The full digest string, e.g. `sha256:e3b0…`.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Whether `bytes` hash, under this digest's own algorithm, to this digest.
    pub fn verify(&self, bytes: &[u8]) -> bool {
        self.algorithm.hash_hex(bytes) == self.hex()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl FromStr for Digest {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.value
    }
}

/// Parses `digest`, which appears inside `input`; errors quote both.
fn parse_digest(what: &'static str, input: &str, digest: &str) -> Result<Digest, ImageError> {
    let invalid = |reason: String| ImageError::InvalidDigest {
        what,
        input: input.to_owned(),
        digest: digest.to_owned(),
        reason,
    };
    let Some((name, hex)) = digest.split_once(':') else {
        return Err(invalid("has no \"algorithm:\" prefix".to_owned()));
    };
    let algorithm = match name {
        "sha256" => DigestAlgorithm::Sha256,
        "sha512" => DigestAlgorithm::Sha512,
        "" => return Err(invalid("has an empty algorithm name".to_owned())),
        _ if name.eq_ignore_ascii_case("sha256") || name.eq_ignore_ascii_case("sha512") => {
            return Err(invalid("has an upper-case algorithm name".to_owned()));
        }
        _ if is_algorithm_name(name) => {
            return Err(ImageError::UnsupportedDigestAlgorithm {
                what,
                input: input.to_owned(),
                algorithm: name.to_owned(),
            });
        }
        _ => return Err(invalid("has a malformed algorithm name".to_owned())),
    };
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(invalid(format!("contains the non-hex character {c:?}")));
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("has upper-case hex digits".to_owned()));
    }
    if hex.len() != algorithm.hex_len() {
        return Err(invalid(format!(
            "has {} hex digits where {} needs {}",
            hex.len(),
            algorithm,
            algorithm.hex_len()
        )));
    }
    Ok(Digest {
        algorithm,
        value: digest.to_owned(),
    })
}

/// OCI's algorithm grammar, `[a-z0-9]+([+._-][a-z0-9]+)*`, widened to upper case as Docker's is;
/// it separates "some other real algorithm" (unsupported) from garbage (malformed).
fn is_algorithm_name(name: &str) -> bool {
    name.split(['+', '.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The `<reference>` in `/v2/<name>/manifests/<reference>`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag such as `1.25` or `latest`.
    Tag(String),
    /// An immutable content digest.
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => f.write_str(digest.as_str()),
        }
    }
}

/// A full image reference: repository with optional tag and optional digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// The canonical repository.
    pub repository: Repository,
    /// The tag, if one was written.
    pub tag: Option<String>,
    /// The digest, if one was written.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and canonicalises a reference such as `nginx:1.25`, `ghcr.io/org/app@sha256:…`
    /// or `[::1]:5000/x:y`, following Docker's "normalized named" rules.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        parse_image_ref(WHAT_IMAGE, s)
    }

    /// What to fetch from the registry: the digest if present (it pins content even when a tag
    /// is also given), else the tag, else `latest`.
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => Reference::Digest(digest.clone()),
            (None, Some(tag)) => Reference::Tag(tag.clone()),
            (None, None) => Reference::Tag(DEFAULT_TAG.to_owned()),
        }
    }

    /// Canonical form, e.g. `docker.io/library/nginx:1.25@sha256:…`; the tag and digest appear
    /// only if they were written (no implicit `latest`).
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Checks a tag against `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), ImageError> {
    check_tag(WHAT_TAG, tag, tag)
}

fn check_tag(what: &'static str, input: &str, tag: &str) -> Result<(), ImageError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = match tag.as_bytes() {
        [first, rest @ ..] => {
            tag.len() <= TAG_MAX_LEN
                && word(*first)
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidTag {
            what,
            input: input.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

fn parse_image_ref(what: &'static str, s: &str) -> Result<ImageRef, ImageError> {
    check_outer(what, s)?;
    // Docker refuses these outright because `docker run <id>` must never be read as a pull.
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ImageError::ImageIdAsName {
            what,
            input: s.to_owned(),
        });
    }
    // '@' cannot occur in a name or tag, so the first one starts the digest.
    let (name_and_tag, digest) = match s.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (s, None),
    };
    let (host, remainder) = split_host(name_and_tag);
    // Once the host is gone, a ':' can only introduce the tag.
    let (path, tag) = match remainder.split_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (remainder, None),
    };
    // Docker checks case before anything else, which gives the most useful message for "Nginx".
    if path.chars().any(char::is_uppercase) {
        return Err(ImageError::Uppercase {
            what,
            input: s.to_owned(),
        });
    }
    if let Some(host) = host {
        check_host(what, s, host)?;
    }
    check_path(what, s, path)?;

    let host = match host {
        Some(host) if !DOCKER_HUB_ALIASES.contains(&host) => host,
        _ => DOCKER_HUB,
    };
    let path = if host == DOCKER_HUB && !path.contains('/') {
        format!("{OFFICIAL_NAMESPACE}{path}")
    } else {
        path.to_owned()
    };
    // Measured on the canonical name, as Docker does, so that re-parsing a canonical name can
    // never fail where the original succeeded.
    let length = host.len() + 1 + path.len();
    if length > NAME_MAX_LEN {
        return Err(ImageError::NameTooLong {
            what,
            input: s.to_owned(),
            length,
        });
    }
    if let Some(tag) = tag {
        check_tag(what, s, tag)?;
    }
    let digest = digest.map(|d| parse_digest(what, s, d)).transpose()?;
    Ok(ImageRef {
        repository: Repository {
            host: host.to_owned(),
            path,
        },
        tag: tag.map(str::to_owned),
        digest,
    })
}

/// Splits off the registry host using Docker's heuristic: the first component is a host only if
/// more components follow and it contains '.' or ':', is `localhost`, or has upper case (paths
/// never may, so upper case can only be meant as a host).
fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(char::is_uppercase) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_host(what: &'static str, input: &str, host: &str) -> Result<(), ImageError> {
    let bad_host = || ImageError::InvalidHost {
        what,
        input: input.to_owned(),
        host: host.to_owned(),
    };
    let port = if let Some(bracketed) = host.strip_prefix('[') {
        let (address, after) = bracketed.split_once(']').ok_or_else(bad_host)?;
        // Docker validates IPv6 loosely (hex digits and colons); stricter would reject
        // references Docker accepts.
        if address.is_empty() || !address.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(bad_host());
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad_host)?),
        }
    } else {
        let (name, port) = match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        // IPv4 addresses are a subset of this grammar, as in Docker.
        let label_ok = |label: &str| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !name.split('.').all(label_ok) {
            return Err(bad_host());
        }
        port
    };
    if let Some(port) = port {
        let valid = port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok_and(|number| number != 0);
        if !valid {
            return Err(ImageError::InvalidPort {
                what,
                input: input.to_owned(),
                port: port.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_path(what: &'static str, input: &str, path: &str) -> Result<(), ImageError> {
    for component in path.split('/') {
        if component.is_empty() {
            return Err(ImageError::EmptyComponent {
                what,
                input: input.to_owned(),
            });
        }
        if let Some(character) = component
            .chars()
            .find(|&c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
        {
            return Err(ImageError::InvalidCharacter {
                what,
                input: input.to_owned(),
                character,
            });
        }
        if !is_path_component(component) {
            return Err(ImageError::InvalidPathComponent {
                what,
                input: input.to_owned(),
                component: component.to_owned(),
            });
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, for a component already known to hold only
/// `[a-z0-9._-]`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !bytes.first().is_some_and(|&b| alphanumeric(b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alphanumeric(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alphanumeric(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let separator_ok =
            matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if i == bytes.len() || !separator_ok {
            return false;
        }
    }
    true
}
