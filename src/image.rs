//! TEMPORARY stand-in for the image module (replaced by the real parser on merge).
#![allow(dead_code, clippy::all)]
use sha2::Digest as _;
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Repository {
    host: String,
    path: String,
}
impl Repository {
    pub fn parse(s: &str) -> Result<Repository, ImageError> {
        let r = ImageRef::parse(s)?;
        Ok(r.repository)
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn canonical(&self) -> String {
        format!("{}/{}", self.host, self.path)
    }
    pub fn endpoint_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            &self.host
        }
    }
}
impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical())
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    Sha256,
    Sha512,
}
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Digest(String);
impl Digest {
    pub fn parse(s: &str) -> Result<Digest, ImageError> {
        if s.starts_with("sha256:") && s.len() == 71 {
            Ok(Digest(s.into()))
        } else if s.starts_with("sha512:") && s.len() == 135 {
            Ok(Digest(s.into()))
        } else {
            Err(ImageError::Bad(s.into()))
        }
    }
    pub fn sha256_of(b: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(sha2::Sha256::digest(b))))
    }
    pub fn algorithm(&self) -> DigestAlgorithm {
        if self.0.starts_with("sha256") {
            DigestAlgorithm::Sha256
        } else {
            DigestAlgorithm::Sha512
        }
    }
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn verify(&self, b: &[u8]) -> bool {
        match self.algorithm() {
            DigestAlgorithm::Sha256 => Digest::sha256_of(b) == *self,
            DigestAlgorithm::Sha512 => hex::encode(sha2::Sha512::digest(b)) == self.hex(),
        }
    }
}
impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}
impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => f.write_str(d.as_str()),
        }
    }
}
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub repository: Repository,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}
impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        let (rest, digest) = match s.split_once('@') {
            Some((a, d)) => (a, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        let (host, path) = match name.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_string(), p.to_string())
            }
            _ => (
                DOCKER_HUB.to_string(),
                if name.contains('/') {
                    name.to_string()
                } else {
                    format!("library/{name}")
                },
            ),
        };
        Ok(ImageRef {
            repository: Repository { host, path },
            tag,
            digest,
        })
    }
    pub fn reference(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::Digest(d.clone()),
            (None, Some(t)) => Reference::Tag(t.clone()),
            _ => Reference::Tag("latest".into()),
        }
    }
    pub fn canonical(&self) -> String {
        let mut s = self.repository.canonical();
        if let Some(t) = &self.tag {
            s += ":";
            s += t;
        }
        if let Some(d) = &self.digest {
            s += "@";
            s += d.as_str();
        }
        s
    }
}
pub fn validate_tag(_t: &str) -> Result<(), ImageError> {
    Ok(())
}
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}
impl Platform {
    pub fn parse(s: &str) -> Result<Platform, ImageError> {
        let p: Vec<&str> = s.split('/').collect();
        Ok(Platform::new(
            p[0],
            p.get(1).copied().unwrap_or(""),
            p.get(2).copied(),
        ))
    }
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let v = match (architecture, variant) {
            ("arm64", Some("v8")) => None,
            ("arm", None) => Some("v7".to_string()),
            (_, v) => v.map(str::to_string),
        };
        Platform {
            os: os.into(),
            architecture: architecture.into(),
            variant: v,
        }
    }
    pub fn matches(&self, other: &Platform) -> bool {
        self == other
    }
}
impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("bad {0}")]
    Bad(String),
}
impl ImageError {
    pub fn metric_label(&self) -> &'static str {
        "bad"
    }
}
