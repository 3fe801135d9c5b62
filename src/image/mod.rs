//! Images: references, canonical names, platforms, and the metadata records the cache
//! keeps. References are parsed and canonicalised exactly as Docker does.
//!
//! Every cache key in regcache is built from the canonical forms produced here, so two spellings
//! of the same image (`nginx`, `docker.io/library/nginx`, `index.docker.io/nginx`) must collapse
//! to one string, and anything Docker would refuse must be refused before it reaches a registry.

mod metadata;
mod platform;
mod reference;

pub(crate) use metadata::parse_time;
pub use metadata::{BLOB_MEDIA_TYPE, ImageMetadata, PlatformImage, RawContent};
pub use platform::Platform;
pub use reference::{
    Digest, DigestAlgorithm, ImageRef, Reference, Repository, host_name, validate_tag,
};

/// Canonical host name of Docker Hub, as it appears in canonical repository names.
pub(crate) const DOCKER_HUB: &str = "docker.io";

/// Host that actually serves Docker Hub's registry API; `docker.io` itself does not.
pub(crate) const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

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

#[cfg(test)]
mod tests;
