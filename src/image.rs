//! Image references: parses and canonicalises repositories, tags, digests and platforms exactly as Docker does.
//!
//! Every cache key in regcache is built from the canonical forms produced here, so two spellings
//! of the same image (`nginx`, `docker.io/library/nginx`, `index.docker.io/nginx`) must collapse
//! to one string, and anything Docker would refuse must be refused before it reaches a registry.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use sha2::Digest as _;

/// Canonical host name of Docker Hub, as it appears in canonical repository names.
pub const DOCKER_HUB: &str = "docker.io";

/// Host that actually serves Docker Hub's registry API; `docker.io` itself does not.
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// Host names that all mean Docker Hub and are rewritten to [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: [&str; 4] = [
    DOCKER_HUB,
    "index.docker.io",
    DOCKER_HUB_ENDPOINT,
    "registry.hub.docker.com",
];

/// Docker Hub keeps its official images under this namespace, so `nginx` means `library/nginx`.
const OFFICIAL_NAMESPACE: &str = "library/";

/// distribution/reference's `NameTotalLengthMax`.
const NAME_MAX_LEN: usize = 255;

/// The tag grammar allows one leading character plus up to 127 more.
const TAG_MAX_LEN: usize = 128;

/// Tag used when a reference names neither a tag nor a digest.
const DEFAULT_TAG: &str = "latest";

const WHAT_IMAGE: &str = "image reference";
const WHAT_REPOSITORY: &str = "repository";
const WHAT_DIGEST: &str = "digest";
const WHAT_TAG: &str = "tag";
const WHAT_PLATFORM: &str = "platform";

/// Why an image reference, repository, tag, digest or platform string was rejected.
///
/// Every message quotes the offending input, says what is wrong with it and what was expected.
/// `what` names the kind of string that was being parsed ("image reference", "repository",
/// "digest", "tag" or "platform"); `input` is the whole string handed to the parser.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    /// The input was the empty string.
    #[error("invalid {what} \"\": it is empty; expected {}", expected_form(.what))]
    Empty {
        /// Kind of string being parsed.
        what: &'static str,
    },

    /// The input starts or ends with whitespace, which Docker never trims for you.
    #[error(
        "invalid {what} {input:?}: it has leading or trailing whitespace; expected {}",
        expected_form(.what)
    )]
    Whitespace {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
    },

    /// The repository path contains an upper-case letter.
    #[error("invalid {what} {input:?}: repository name must be lowercase")]
    Uppercase {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
    },

    /// The repository path contains a character that no path component may contain.
    #[error(
        "invalid {what} {input:?}: character {character:?} is not allowed in a repository path; \
         expected lower-case letters, digits, '.', '_', '-' and '/'"
    )]
    InvalidCharacter {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The first disallowed character.
        character: char,
    },

    /// The repository path is empty or has an empty component (`a//b`, `a/`, `/a`).
    #[error(
        "invalid {what} {input:?}: the repository path is empty or has an empty component; \
         expected non-empty components separated by single '/'"
    )]
    EmptyComponent {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
    },

    /// A path component uses allowed characters in a disallowed arrangement (`a..b`, `-a`, `a_`).
    #[error(
        "invalid {what} {input:?}: path component {component:?} is malformed; expected lower-case \
         letters and digits, separated by '.', '_', '__' or dashes, starting and ending with a \
         letter or digit"
    )]
    InvalidPathComponent {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The malformed component.
        component: String,
    },

    /// The registry host is not a DNS name, IPv4 address or bracketed IPv6 address.
    #[error(
        "invalid {what} {input:?}: registry host {host:?} is malformed; expected a DNS name, an \
         IPv4 address or a bracketed IPv6 address, optionally followed by :port"
    )]
    InvalidHost {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The registry host as written, port included.
        host: String,
    },

    /// The registry port is not a number from 1 to 65535.
    #[error(
        "invalid {what} {input:?}: registry port {port:?} is invalid; expected a number from 1 to \
         65535"
    )]
    InvalidPort {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The port as written.
        port: String,
    },

    /// The canonical repository name (host, `/`, path) is longer than 255 characters.
    #[error(
        "invalid {what} {input:?}: the canonical repository name is {length} characters long; \
         expected at most 255"
    )]
    NameTooLong {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// Length of the canonical repository name.
        length: usize,
    },

    /// The tag does not match `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    #[error(
        "invalid {what} {input:?}: tag {tag:?} is malformed; expected 1 to 128 characters \
         matching [A-Za-z0-9_][A-Za-z0-9_.-]*"
    )]
    InvalidTag {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The tag as written.
        tag: String,
    },

    /// The digest is malformed: missing algorithm, wrong length, upper case or non-hex digits.
    #[error(
        "invalid {what} {input:?}: digest {digest:?} {reason}; expected \"sha256:\" followed by \
         64 lower-case hex digits or \"sha512:\" followed by 128"
    )]
    InvalidDigest {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The digest as written.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The digest is well-formed but uses an algorithm other than sha256 or sha512.
    #[error(
        "invalid {what} {input:?}: digest algorithm {algorithm:?} is not supported; expected \
         sha256 or sha512"
    )]
    UnsupportedDigestAlgorithm {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
        /// The algorithm as written.
        algorithm: String,
    },

    /// A repository was expected but the input carries a tag and/or a digest.
    #[error(
        "invalid repository {input:?}: it is an image reference with a {part}; a repository has \
         none"
    )]
    NotARepository {
        /// The rejected input.
        input: String,
        /// `"tag"`, `"digest"` or `"tag and digest"`.
        part: &'static str,
    },

    /// The input is a bare 64-hex-digit image ID, which Docker refuses to read as a name.
    #[error(
        "invalid {what} {input:?}: a string of 64 hex digits is an image ID, not a repository \
         name; expected {}",
        expected_form(.what)
    )]
    ImageIdAsName {
        /// Kind of string being parsed.
        what: &'static str,
        /// The rejected input.
        input: String,
    },

    /// The platform string is not `os/architecture[/variant]`.
    #[error(
        "invalid platform {input:?}: {reason}; expected os/architecture[/variant], e.g. \
         \"linux/amd64\" or \"linux/arm/v7\""
    )]
    InvalidPlatform {
        /// The rejected input.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ImageError {
    /// Short snake_case name of the failure, stable enough to use as a metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ImageError::Empty { .. } => "empty",
            ImageError::Whitespace { .. } => "whitespace",
            ImageError::Uppercase { .. } => "uppercase",
            ImageError::InvalidCharacter { .. } => "invalid_character",
            ImageError::EmptyComponent { .. } => "empty_component",
            ImageError::InvalidPathComponent { .. } => "invalid_path_component",
            ImageError::InvalidHost { .. } => "invalid_host",
            ImageError::InvalidPort { .. } => "invalid_port",
            ImageError::NameTooLong { .. } => "name_too_long",
            ImageError::InvalidTag { .. } => "invalid_tag",
            ImageError::InvalidDigest { .. } => "invalid_digest",
            ImageError::UnsupportedDigestAlgorithm { .. } => "unsupported_digest_algorithm",
            ImageError::NotARepository { .. } => "not_a_repository",
            ImageError::ImageIdAsName { .. } => "image_id_as_name",
            ImageError::InvalidPlatform { .. } => "invalid_platform",
        }
    }
}

fn expected_form(what: &str) -> &'static str {
    match what {
        WHAT_REPOSITORY => "[host[:port]/]path, e.g. \"nginx\" or \"ghcr.io/org/app\"",
        WHAT_DIGEST => "\"sha256:\" followed by 64 lower-case hex digits, or \"sha512:\" and 128",
        WHAT_TAG => "1 to 128 characters matching [A-Za-z0-9_][A-Za-z0-9_.-]*",
        WHAT_PLATFORM => "os/architecture[/variant], e.g. \"linux/amd64\"",
        _ => "[host[:port]/]path[:tag][@digest], e.g. \"nginx:1.25\" or \"ghcr.io/org/app:v1\"",
    }
}

/// Rejects the empty string and surrounding whitespace, common to every parser here.
fn check_outer(what: &'static str, s: &str) -> Result<(), ImageError> {
    if s.is_empty() {
        return Err(ImageError::Empty { what });
    }
    if s.trim() != s {
        return Err(ImageError::Whitespace {
            what,
            input: s.to_owned(),
        });
    }
    Ok(())
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

    fn hash_hex(self, bytes: &[u8]) -> String {
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

    fn of(algorithm: DigestAlgorithm, bytes: &[u8]) -> Digest {
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

/// An OS/architecture/variant triple, always held in containerd's normalised form.
///
/// Serialises as `{"os", "architecture", "variant"}` (variant omitted when absent), matching the
/// `platform` object of OCI image indexes; deserialising normalises.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(from = "PlatformFields")]
pub struct Platform {
    /// Operating system, lower case: `linux`, `windows`, `darwin`.
    pub os: String,
    /// Architecture in Go/OCI spelling: `amd64`, `arm64`, `arm`, `386`.
    pub architecture: String,
    /// CPU variant such as `v7`; absent where it is the architecture's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Platform as it appears on the wire, before normalisation.
#[derive(Deserialize)]
struct PlatformFields {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl From<PlatformFields> for Platform {
    fn from(fields: PlatformFields) -> Platform {
        Platform::new(&fields.os, &fields.architecture, fields.variant.as_deref())
    }
}

impl Platform {
    /// Parses `os/architecture[/variant]`, e.g. `linux/arm64/v8`, and normalises it.
    pub fn parse(s: &str) -> Result<Platform, ImageError> {
        check_outer(WHAT_PLATFORM, s)?;
        let invalid = |reason: String| ImageError::InvalidPlatform {
            input: s.to_owned(),
            reason,
        };
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(invalid(format!(
                "it has {} '/'-separated parts, at most 3 are allowed",
                parts.len()
            )));
        }
        if parts.len() < 2 {
            return Err(invalid("it names no architecture".to_owned()));
        }
        if parts.iter().any(|part| part.is_empty()) {
            return Err(invalid("it has an empty part".to_owned()));
        }
        if let Some(c) = s
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
        {
            return Err(invalid(format!("character {c:?} is not allowed")));
        }
        Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// Builds a platform, normalising it as containerd does: `x86_64` → `amd64`,
    /// `aarch64` → `arm64`, `armhf` → `arm/v7`, `linux/arm64/v8` → `linux/arm64`,
    /// `linux/arm` → `linux/arm/v7`, `macos` → `darwin`, everything lower-cased.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let mut os = os.to_ascii_lowercase();
        if os == "macos" {
            os = "darwin".to_owned();
        }
        let architecture = architecture.to_ascii_lowercase();
        let variant = variant
            .map(str::to_ascii_lowercase)
            .filter(|variant| !variant.is_empty());
        let (architecture, variant) = match (architecture.as_str(), variant.as_deref()) {
            ("i386" | "386", _) => ("386".to_owned(), None),
            ("x86_64" | "x86-64" | "amd64", Some("v1")) => ("amd64".to_owned(), None),
            ("x86_64" | "x86-64" | "amd64", _) => ("amd64".to_owned(), variant),
            // v8 is the only baseline arm64 has, so spelling it out must not split cache keys.
            ("aarch64" | "arm64", Some("8" | "v8" | "v8.0")) => ("arm64".to_owned(), None),
            ("aarch64" | "arm64", Some("9" | "9.0" | "v9.0")) => {
                ("arm64".to_owned(), Some("v9".to_owned()))
            }
            ("aarch64" | "arm64", _) => ("arm64".to_owned(), variant),
            ("armhf", _) => ("arm".to_owned(), Some("v7".to_owned())),
            ("armel", _) => ("arm".to_owned(), Some("v6".to_owned())),
            // Unlike arm64, 32-bit arm keeps its variant explicit: an absent one means v7.
            ("arm", None | Some("7")) => ("arm".to_owned(), Some("v7".to_owned())),
            ("arm", Some(bare @ ("5" | "6" | "8"))) => ("arm".to_owned(), Some(format!("v{bare}"))),
            _ => (architecture, variant),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// Whether both platforms are the same once normalised; the fields are public, so either
    /// side may have been built unnormalised.
    pub fn matches(&self, other: &Platform) -> bool {
        let normalise = |p: &Platform| Platform::new(&p.os, &p.architecture, p.variant.as_deref());
        normalise(self) == normalise(other)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn sha512_of_empty() -> String {
        format!("sha512:{}", DigestAlgorithm::Sha512.hash_hex(b""))
    }

    #[test]
    fn valid_references_canonicalise() {
        let long_ok = format!("ghcr.io/{}", "a".repeat(NAME_MAX_LEN - "ghcr.io/".len()));
        let cases: Vec<(String, String)> = vec![
            // Docker Hub official images gain library/.
            ("nginx", "docker.io/library/nginx"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("library/nginx", "docker.io/library/nginx"),
            ("docker.io/nginx", "docker.io/library/nginx"),
            ("docker.io/library/nginx", "docker.io/library/nginx"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("a/b/c/d", "docker.io/a/b/c/d"),
            // Hub aliases.
            ("index.docker.io/nginx", "docker.io/library/nginx"),
            ("registry-1.docker.io/nginx", "docker.io/library/nginx"),
            ("registry.hub.docker.com/org/app", "docker.io/org/app"),
            (
                "index.docker.io/library/nginx:x",
                "docker.io/library/nginx:x",
            ),
            // Not an alias: a port makes it a different host.
            ("docker.io:443/nginx", "docker.io:443/nginx"),
            // Other registries keep their path as written, even with one component.
            ("ghcr.io/org/app:v1", "ghcr.io/org/app:v1"),
            ("ghcr.io/app", "ghcr.io/app"),
            ("quay.io/a/b/c:tag", "quay.io/a/b/c:tag"),
            ("my-registry.example.com/x", "my-registry.example.com/x"),
            // localhost is a host only when spelled exactly, and only before a '/'.
            ("localhost/foo", "localhost/foo"),
            ("localhost:5000/a/b", "localhost:5000/a/b"),
            ("localhost", "docker.io/library/localhost"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            ("localhostx/foo", "docker.io/localhostx/foo"),
            ("localhost.localdomain/foo", "localhost.localdomain/foo"),
            (
                "localhost.localdomain",
                "docker.io/library/localhost.localdomain",
            ),
            // IPv4, ports, IPv6.
            ("127.0.0.1:5000/x", "127.0.0.1:5000/x"),
            ("10.0.0.1/x:y", "10.0.0.1/x:y"),
            ("[::1]:5000/x:y", "[::1]:5000/x:y"),
            ("[::1]/x", "[::1]/x"),
            ("[2001:db8::1]:443/a/b", "[2001:db8::1]:443/a/b"),
            ("host:65535/x", "host:65535/x"),
            ("host:1/x", "host:1/x"),
            // An upper-case first component is taken as a host and kept as written.
            ("Foo/bar", "Foo/bar"),
            ("Registry.Example.COM/bar", "Registry.Example.COM/bar"),
            ("Docker.io/nginx", "Docker.io/nginx"),
            // Separators.
            ("a.b/c", "a.b/c"),
            ("a_b/c__d/e---f/g.h", "docker.io/a_b/c__d/e---f/g.h"),
            ("x-y", "docker.io/library/x-y"),
            // Tags.
            ("nginx:latest", "docker.io/library/nginx:latest"),
            ("nginx:_x", "docker.io/library/nginx:_x"),
            ("nginx:V1.2-rc_3", "docker.io/library/nginx:V1.2-rc_3"),
            // Digests, with and without tags.
            (
                &format!("nginx@{SHA}"),
                &format!("docker.io/library/nginx@{SHA}"),
            ),
            (
                &format!("nginx:1.25@{SHA}"),
                &format!("docker.io/library/nginx:1.25@{SHA}"),
            ),
            (
                &format!("ghcr.io/o/a@{}", sha512_of_empty()),
                &format!("ghcr.io/o/a@{}", sha512_of_empty()),
            ),
            // Image-ID look-alikes are fine once they are not the whole input.
            (
                &format!("{}:t", &SHA[7..]),
                &format!("docker.io/library/{}:t", &SHA[7..]),
            ),
            (&long_ok, &long_ok),
        ]
        .into_iter()
        .map(|(a, b): (&str, &str)| (a.to_owned(), b.to_owned()))
        .collect();
        for (input, canonical) in &cases {
            let parsed =
                ImageRef::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
            assert_eq!(
                &parsed.canonical(),
                canonical,
                "canonical form of {input:?}"
            );
            assert_eq!(&parsed.to_string(), canonical);
            assert_eq!(input.parse::<ImageRef>().as_ref(), Ok(&parsed));
            let again = ImageRef::parse(canonical).expect("canonical form parses");
            assert_eq!(again, parsed, "re-parsing canonical form of {input:?}");
        }
    }

    #[test]
    fn components_are_split_as_docker_does() {
        let cases = [
            ("nginx", DOCKER_HUB, "library/nginx", None, None),
            ("ghcr.io/org/app:v1", "ghcr.io", "org/app", Some("v1"), None),
            ("[::1]:5000/x:y", "[::1]:5000", "x", Some("y"), None),
            ("localhost:5000/a/b", "localhost:5000", "a/b", None, None),
            (
                "localhost:5000",
                DOCKER_HUB,
                "library/localhost",
                Some("5000"),
                None,
            ),
        ];
        for (input, host, path, tag, digest) in cases {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(r.repository.host(), host, "{input}");
            assert_eq!(r.repository.path(), path, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.as_ref().map(Digest::as_str), digest, "{input}");
        }
        let r = ImageRef::parse(&format!("a/b:c@{SHA}")).unwrap();
        assert_eq!(r.repository.canonical(), "docker.io/a/b");
        assert_eq!(r.tag.as_deref(), Some("c"));
        assert_eq!(r.digest.as_ref().map(Digest::as_str), Some(SHA));
    }

    #[test]
    fn reference_prefers_digest_then_tag_then_latest() {
        let digest = Digest::parse(SHA).unwrap();
        let cases = [
            ("nginx", Reference::Tag("latest".to_owned())),
            ("nginx:1.25", Reference::Tag("1.25".to_owned())),
            (&format!("nginx@{SHA}"), Reference::Digest(digest.clone())),
            (&format!("nginx:1.25@{SHA}"), Reference::Digest(digest)),
        ];
        for (input, expected) in cases {
            assert_eq!(ImageRef::parse(input).unwrap().reference(), expected);
        }
        assert_eq!(Reference::Tag("v1".to_owned()).to_string(), "v1");
        assert_eq!(
            Reference::Digest(Digest::parse(SHA).unwrap()).to_string(),
            SHA
        );
    }

    #[test]
    fn repository_accessors_and_endpoint() {
        let hub = Repository::parse("index.docker.io/nginx").unwrap();
        assert_eq!(hub.host(), DOCKER_HUB);
        assert_eq!(hub.path(), "library/nginx");
        assert_eq!(hub.canonical(), "docker.io/library/nginx");
        assert_eq!(hub.to_string(), "docker.io/library/nginx");
        assert_eq!(hub.endpoint_host(), DOCKER_HUB_ENDPOINT);
        let ghcr: Repository = "ghcr.io/org/app".parse().unwrap();
        assert_eq!(ghcr.endpoint_host(), "ghcr.io");
        let local = Repository::parse("[::1]:5000/x").unwrap();
        assert_eq!(local.host(), "[::1]:5000");
        assert_eq!(local.endpoint_host(), "[::1]:5000");
        assert_eq!(
            Repository::parse("docker.io:443/x")
                .unwrap()
                .endpoint_host(),
            "docker.io:443"
        );
    }

    #[test]
    fn repository_rejects_tags_and_digests() {
        let cases = [
            ("nginx:1.25", "tag"),
            ("localhost:5000", "tag"),
            (&format!("nginx@{SHA}"), "digest"),
            (&format!("nginx:1@{SHA}"), "tag and digest"),
        ];
        for (input, part) in cases {
            let err = Repository::parse(input).unwrap_err();
            assert_eq!(
                err,
                ImageError::NotARepository {
                    input: input.to_owned(),
                    part
                }
            );
            let message = err.to_string();
            assert!(message.contains(&format!("{input:?}")), "{message}");
            assert!(
                message.contains(&format!(
                    "is an image reference with a {part}; a repository has none"
                )),
                "{message}"
            );
            assert_eq!(err.metric_label(), "not_a_repository");
        }
        // Other errors still say they were parsing a repository.
        let err = Repository::parse("Nginx").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid repository \"Nginx\": repository name must be lowercase"
        );
    }

    #[test]
    fn invalid_references_are_rejected_with_the_right_variant() {
        let too_long = format!(
            "ghcr.io/{}",
            "a".repeat(NAME_MAX_LEN - "ghcr.io/".len() + 1)
        );
        // "docker.io/library/" counts, as in Docker.
        let too_long_hub = "a".repeat(NAME_MAX_LEN - "docker.io/library/".len() + 1);
        let long_tag = format!("nginx:{}", "t".repeat(TAG_MAX_LEN + 1));
        let cases: Vec<(String, &str)> = vec![
            ("", "empty"),
            (" nginx", "whitespace"),
            ("nginx ", "whitespace"),
            ("nginx\n", "whitespace"),
            ("\tnginx", "whitespace"),
            ("Nginx", "uppercase"),
            ("library/Nginx", "uppercase"),
            ("Foo/Bar", "uppercase"),
            ("ghcr.io/Org/app", "uppercase"),
            ("ngînx", "invalid_character"),
            ("ngi nx", "invalid_character"),
            ("nginx!", "invalid_character"),
            ("a/b$c", "invalid_character"),
            ("ghcr.io/a/b+c", "invalid_character"),
            ("/nginx", "empty_component"),
            ("nginx/", "empty_component"),
            ("a//b", "empty_component"),
            ("ghcr.io/", "empty_component"),
            ("ghcr.io/:v1", "empty_component"),
            (":v1", "empty_component"),
            (&format!("@{SHA}")[..], "empty_component"),
            ("-nginx", "invalid_path_component"),
            ("nginx-", "invalid_path_component"),
            ("a..b", "invalid_path_component"),
            ("a___b", "invalid_path_component"),
            ("a._b", "invalid_path_component"),
            ("a-_b", "invalid_path_component"),
            ("_a/b", "invalid_path_component"),
            ("ghcr.io/.hidden", "invalid_path_component"),
            ("-bad.io/x", "invalid_host"),
            ("bad-.io/x", "invalid_host"),
            ("a..b.io/x", "invalid_host"),
            ("under_score.io/x", "invalid_host"),
            ("exa mple.com/x", "invalid_host"),
            (":5000/x", "invalid_host"),
            ("[]:5000/x", "invalid_host"),
            // No '.' or ':', so Docker reads it as a path, not a host.
            ("[]/x", "invalid_character"),
            ("[::1/x", "invalid_host"),
            ("[::g]/x", "invalid_host"),
            ("[::1]5000/x", "invalid_host"),
            ("Bad_Host/x", "invalid_host"),
            ("host:0/x", "invalid_port"),
            ("host:65536/x", "invalid_port"),
            ("host:99999999999999999999/x", "invalid_port"),
            ("host:/x", "invalid_port"),
            ("host:50a/x", "invalid_port"),
            ("host:+80/x", "invalid_port"),
            ("a:1:2/x", "invalid_port"),
            ("[::1]:/x", "invalid_port"),
            ("[::1]:0/x", "invalid_port"),
            (&too_long[..], "name_too_long"),
            (&too_long_hub[..], "name_too_long"),
            ("nginx:", "invalid_tag"),
            ("nginx:.x", "invalid_tag"),
            ("nginx:-x", "invalid_tag"),
            ("nginx:a:b", "invalid_tag"),
            ("nginx:a+b", "invalid_tag"),
            ("a/b:c/d", "invalid_tag"),
            (&long_tag[..], "invalid_tag"),
            ("nginx@", "invalid_digest"),
            ("nginx@sha256", "invalid_digest"),
            ("nginx@sha256:abc", "invalid_digest"),
            ("nginx@:abc", "invalid_digest"),
            (&SHA.replace("sha256", "nginx@SHA256")[..], "invalid_digest"),
            (
                &format!("nginx@{}", SHA.to_ascii_uppercase().replace("SHA", "sha")),
                "invalid_digest",
            ),
            (&format!("nginx@{SHA}0"), "invalid_digest"),
            (&format!("nginx@{SHA}@{SHA}"), "invalid_digest"),
            (
                &format!("nginx@{}g", &SHA[..SHA.len() - 1]),
                "invalid_digest",
            ),
            (&format!("nginx@sha512:{}", &SHA[7..]), "invalid_digest"),
            ("nginx@s!a:abc", "invalid_digest"),
            (
                &format!("nginx@md5:{}", &SHA[7..39]),
                "unsupported_digest_algorithm",
            ),
            (
                &SHA.replace("sha256", "nginx@sha384")[..],
                "unsupported_digest_algorithm",
            ),
            (&SHA[7..], "image_id_as_name"),
        ]
        .into_iter()
        .map(|(a, b): (&str, &str)| (a.to_owned(), b))
        .collect();
        for (input, label) in &cases {
            let err = match ImageRef::parse(input) {
                Ok(parsed) => panic!("{input:?} should be rejected, got {parsed}"),
                Err(err) => err,
            };
            assert_eq!(err.metric_label(), *label, "{input:?}: {err}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid image reference {input:?}")),
                "message for {input:?} must name it: {message}"
            );
            assert!(
                message.contains("expected") || message.contains("must"),
                "{message}"
            );
        }
    }

    #[test]
    fn error_messages_read_well() {
        let msg = |s: &str| ImageRef::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("Nginx"),
            "invalid image reference \"Nginx\": repository name must be lowercase"
        );
        assert!(msg("").starts_with("invalid image reference \"\": it is empty; expected"));
        assert!(msg("host:0/x").contains("registry port \"0\" is invalid"));
        assert!(msg("nginx@sha256:abc").contains("has 3 hex digits where sha256 needs 64"));
        assert!(msg("nginx@md5:abc").contains("digest algorithm \"md5\" is not supported"));
        assert!(msg("a..b").contains("path component \"a..b\" is malformed"));
        assert!(msg("ngi nx").contains("character ' ' is not allowed"));
    }

    #[test]
    fn tags_validate() {
        let max = "a".repeat(TAG_MAX_LEN);
        for tag in ["latest", "1.25", "_", "A", "v1.2.3-rc.1_b", "0", &max[..]] {
            assert_eq!(validate_tag(tag), Ok(()), "{tag:?}");
        }
        let over = "a".repeat(TAG_MAX_LEN + 1);
        for tag in ["", ".a", "-a", "a:b", "a/b", "a b", "tåg", " a", &over[..]] {
            let err = validate_tag(tag).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidTag { .. }),
                "{tag:?}: {err:?}"
            );
            assert!(err.to_string().contains(&format!("{tag:?}")), "{err}");
            assert!(err.to_string().starts_with("invalid tag"), "{err}");
        }
    }

    #[test]
    fn digests_parse_and_verify() {
        let d = Digest::parse(SHA).unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d.hex(), &SHA[7..]);
        assert_eq!(d.as_str(), SHA);
        assert_eq!(d.to_string(), SHA);
        assert_eq!(SHA.parse::<Digest>(), Ok(d.clone()));
        assert!(d.verify(b""));
        assert!(!d.verify(b"x"));
        assert_eq!(Digest::sha256_of(b""), d);

        let blob = b"{\"schemaVersion\":2}";
        let computed = Digest::sha256_of(blob);
        assert!(computed.verify(blob));
        assert_eq!(Digest::parse(computed.as_str()), Ok(computed.clone()));

        let d512 = Digest::parse(&sha512_of_empty()).unwrap();
        assert_eq!(d512.algorithm(), DigestAlgorithm::Sha512);
        assert_eq!(d512.hex().len(), 128);
        assert!(d512.verify(b""));
        assert!(!d512.verify(b"a"));
        assert_eq!(Digest::of(DigestAlgorithm::Sha512, b""), d512);
    }

    #[test]
    fn invalid_digests_are_rejected() {
        let upper = format!("sha256:{}", SHA[7..].to_ascii_uppercase());
        let cases = [
            ("", "empty"),
            (" sha256:ab", "whitespace"),
            ("sha256", "invalid_digest"),
            ("sha256:", "invalid_digest"),
            ("sha256:abc", "invalid_digest"),
            (&upper[..], "invalid_digest"),
            ("SHA256:abc", "invalid_digest"),
            (":abc", "invalid_digest"),
            ("sha256:xyz", "invalid_digest"),
            ("sh a:abc", "invalid_digest"),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                "unsupported_digest_algorithm",
            ),
            ("sha384:abc", "unsupported_digest_algorithm"),
            ("blake3:abc", "unsupported_digest_algorithm"),
        ];
        for (input, label) in cases {
            let err = Digest::parse(input).unwrap_err();
            assert_eq!(err.metric_label(), label, "{input:?}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid digest {input:?}")),
                "{err}"
            );
        }
        let err = Digest::parse(&upper).unwrap_err().to_string();
        assert!(err.contains("upper-case hex"), "{err}");
    }

    #[test]
    fn serde_round_trips() {
        let repo = Repository::parse("nginx").unwrap();
        let json = serde_json::to_string(&repo).unwrap();
        assert_eq!(json, "\"docker.io/library/nginx\"");
        assert_eq!(serde_json::from_str::<Repository>(&json).unwrap(), repo);
        assert_eq!(
            serde_json::from_str::<Repository>("\"index.docker.io/nginx\"").unwrap(),
            repo
        );
        let err = serde_json::from_str::<Repository>("\"nginx:1\"").unwrap_err();
        assert!(err.to_string().contains("a repository has none"), "{err}");
        assert!(serde_json::from_str::<Repository>("\"Nginx\"").is_err());

        let digest = Digest::parse(SHA).unwrap();
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{SHA}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());

        let platform = Platform::parse("linux/arm/v7").unwrap();
        let json = serde_json::to_string(&platform).unwrap();
        assert_eq!(
            json,
            r#"{"os":"linux","architecture":"arm","variant":"v7"}"#
        );
        assert_eq!(serde_json::from_str::<Platform>(&json).unwrap(), platform);
        let amd = Platform::parse("linux/amd64").unwrap();
        let json = serde_json::to_string(&amd).unwrap();
        assert_eq!(json, r#"{"os":"linux","architecture":"amd64"}"#);
        assert_eq!(serde_json::from_str::<Platform>(&json).unwrap(), amd);
        // Registry JSON is normalised on the way in; unknown OCI fields are ignored.
        let wire = r#"{"os":"Linux","architecture":"aarch64","variant":"v8","os.version":"x"}"#;
        assert_eq!(
            serde_json::from_str::<Platform>(wire).unwrap(),
            Platform::new("linux", "arm64", None)
        );
    }

    #[test]
    fn platforms_normalise() {
        let cases = [
            ("linux/amd64", "linux/amd64"),
            ("linux/x86_64", "linux/amd64"),
            ("linux/x86-64", "linux/amd64"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/arm64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/aarch64/v8", "linux/arm64"),
            ("linux/arm64/8", "linux/arm64"),
            ("linux/arm64/v9.0", "linux/arm64/v9"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/v7", "linux/arm/v7"),
            ("linux/arm/7", "linux/arm/v7"),
            ("linux/arm/v6", "linux/arm/v6"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/armel", "linux/arm/v6"),
            ("linux/i386", "linux/386"),
            ("linux/386", "linux/386"),
            ("windows/amd64", "windows/amd64"),
            ("Windows/AMD64", "windows/amd64"),
            ("LINUX/ARM/V7", "linux/arm/v7"),
            ("darwin/arm64", "darwin/arm64"),
            ("macos/arm64", "darwin/arm64"),
            ("linux/riscv64", "linux/riscv64"),
            ("linux/ppc64le", "linux/ppc64le"),
            ("linux/s390x", "linux/s390x"),
        ];
        for (input, canonical) in cases {
            let p = Platform::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(p.to_string(), canonical, "{input}");
            assert_eq!(input.parse::<Platform>().as_ref(), Ok(&p));
            assert_eq!(Platform::parse(canonical), Ok(p.clone()), "{input}");
        }
        let arm64 = Platform::new("linux", "arm64", Some("v8"));
        assert_eq!(arm64.variant, None);
        assert_eq!(
            Platform::new("linux", "arm", None).variant.as_deref(),
            Some("v7")
        );
        assert_eq!(Platform::new("linux", "amd64", Some("")).variant, None);
    }

    #[test]
    fn platforms_match_after_normalisation() {
        let p = |s: &str| Platform::parse(s).unwrap();
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm").matches(&p("linux/arm/v7")));
        assert!(p("linux/x86_64").matches(&p("linux/amd64")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
        assert!(!p("linux/arm64").matches(&p("linux/arm")));
        // Hand-built, unnormalised values still match their normal forms.
        let raw = Platform {
            os: "Linux".to_owned(),
            architecture: "aarch64".to_owned(),
            variant: Some("v8".to_owned()),
        };
        assert!(raw.matches(&p("linux/arm64")));
        let raw_arm = Platform {
            os: "linux".to_owned(),
            architecture: "arm".to_owned(),
            variant: None,
        };
        assert!(raw_arm.matches(&p("linux/arm/v7")));
        assert!(p("linux/arm/v7").matches(&raw_arm));
    }

    #[test]
    fn invalid_platforms_are_rejected() {
        let cases = [
            ("", "empty"),
            (" linux/amd64", "whitespace"),
            ("linux/amd64 ", "whitespace"),
            ("linux", "invalid_platform"),
            ("linux/", "invalid_platform"),
            ("/amd64", "invalid_platform"),
            ("linux//v7", "invalid_platform"),
            ("linux/arm/", "invalid_platform"),
            ("linux/arm/v7/extra", "invalid_platform"),
            ("linux/am d64", "invalid_platform"),
            ("linux/amd64:x", "invalid_platform"),
        ];
        for (input, label) in cases {
            let err = Platform::parse(input).unwrap_err();
            assert_eq!(err.metric_label(), label, "{input:?}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid platform {input:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn metric_labels_are_snake_case() {
        let samples = [
            ImageRef::parse("").unwrap_err(),
            ImageRef::parse("Nginx").unwrap_err(),
            Platform::parse("x").unwrap_err(),
            Repository::parse("a:b").unwrap_err(),
        ];
        for err in samples {
            let label = err.metric_label();
            assert!(!label.is_empty());
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    fn path_component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}(([._]|__|-{1,3})[a-z0-9]{1,6}){0,2}"
    }

    /// A first component with no '.', so it is never mistaken for a host.
    fn first_component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}((_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
    }

    fn host() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("docker.io".to_owned()),
            Just("index.docker.io".to_owned()),
            Just("registry-1.docker.io".to_owned()),
            Just("registry.hub.docker.com".to_owned()),
            Just("localhost".to_owned()),
            "[a-z0-9]{1,8}(\\.[a-zA-Z0-9]([a-z0-9-]{0,6}[a-z0-9])?){1,3}",
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
            // Without a ':' Docker would not recognise a bracketed address as a host.
            "\\[[0-9a-fA-F]{0,4}:[0-9a-fA-F:]{0,12}\\]",
            "[A-Z][a-zA-Z0-9]{0,6}",
        ];
        (name, proptest::option::of(1u16..=65535)).prop_map(|(name, port)| match port {
            Some(port) => format!("{name}:{port}"),
            None => name,
        })
    }

    fn digest() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..32)
                .prop_map(|bytes| Digest::sha256_of(&bytes).to_string()),
            "[0-9a-f]{128}".prop_map(|hex| format!("sha512:{hex}")),
        ]
    }

    fn valid_reference() -> impl Strategy<Value = String> {
        (
            proptest::option::of(host()),
            first_component(),
            proptest::collection::vec(path_component(), 0..4),
            proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}"),
            proptest::option::of(digest()),
        )
            .prop_map(|(host, first, rest, tag, digest)| {
                let mut s = host.map(|h| format!("{h}/")).unwrap_or_default();
                s.push_str(&first);
                for component in rest {
                    s.push('/');
                    s.push_str(&component);
                }
                if let Some(tag) = tag {
                    s.push(':');
                    s.push_str(&tag);
                }
                if let Some(digest) = digest {
                    s.push('@');
                    s.push_str(&digest);
                }
                s
            })
    }

    fn platform() -> impl Strategy<Value = String> {
        (
            "(linux|Linux|windows|darwin|macos|freebsd)",
            "(amd64|x86_64|x86-64|arm64|aarch64|arm|armhf|armel|i386|386|riscv64)",
            proptest::option::of("(v[5-9]|[5-9]|v8\\.0|v9\\.0|v1|v3)"),
        )
            .prop_map(|(os, arch, variant)| match variant {
                Some(v) => format!("{os}/{arch}/{v}"),
                None => format!("{os}/{arch}"),
            })
    }

    /// Runs every parser on `s`; every error must quote the input it was given.
    fn parse_everything(s: &str) -> Result<(), TestCaseError> {
        let quoted = format!("{s:?}");
        let check = |err: ImageError| -> Result<(), TestCaseError> {
            prop_assert!(
                err.to_string().contains(&quoted),
                "{err} does not quote {quoted}"
            );
            prop_assert!(!err.metric_label().is_empty());
            Ok(())
        };
        match ImageRef::parse(s) {
            Ok(parsed) => {
                // Anything accepted at all must have a stable canonical form.
                let again = ImageRef::parse(&parsed.canonical());
                prop_assert_eq!(again.as_ref(), Ok(&parsed));
            }
            Err(err) => check(err)?,
        }
        if let Err(err) = Repository::parse(s) {
            check(err)?;
        }
        if let Err(err) = Digest::parse(s) {
            check(err)?;
        }
        if let Err(err) = Platform::parse(s) {
            check(err)?;
        }
        if let Err(err) = validate_tag(s) {
            check(err)?;
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            parse_everything(&s)?;
        }

        #[test]
        fn long_unicode_strings_never_panic(s in "\\PC{0,1200}") {
            parse_everything(&s)?;
        }

        #[test]
        fn reference_like_strings_never_panic(
            s in "[a-zA-Z0-9:/@._\\-\\[\\] ]{0,80}|[a-z0-9./:@_-]{200,320}"
        ) {
            parse_everything(&s)?;
        }

        #[test]
        fn canonical_form_is_idempotent(s in valid_reference()) {
            let parsed = ImageRef::parse(&s);
            prop_assert!(parsed.is_ok(), "{s:?} should parse: {:?}", parsed);
            let parsed = parsed.unwrap();
            let canonical = parsed.canonical();
            let again = ImageRef::parse(&canonical);
            prop_assert_eq!(again.as_ref(), Ok(&parsed));
            prop_assert_eq!(again.unwrap().canonical(), canonical.clone());
            let repository = Repository::parse(&parsed.repository.canonical());
            prop_assert_eq!(repository.as_ref(), Ok(&parsed.repository));
            prop_assert!(canonical.starts_with(parsed.repository.host()));
            prop_assert!(!parsed.repository.path().is_empty());
        }

        #[test]
        fn platform_display_round_trips(s in platform()) {
            let parsed = Platform::parse(&s).unwrap();
            prop_assert_eq!(Platform::parse(&parsed.to_string()), Ok(parsed.clone()));
            prop_assert!(parsed.matches(&Platform::parse(&s).unwrap()));
            let json = serde_json::to_string(&parsed).unwrap();
            prop_assert_eq!(serde_json::from_str::<Platform>(&json).unwrap(), parsed);
        }

        #[test]
        fn sha256_of_verifies(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let digest = Digest::sha256_of(&bytes);
            prop_assert!(digest.verify(&bytes));
            prop_assert_eq!(Digest::parse(digest.as_str()), Ok(digest.clone()));
            let mut other = bytes.clone();
            other.push(0);
            prop_assert!(!digest.verify(&other));
        }
    }
}
