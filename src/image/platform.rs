//! Platforms (`os/architecture[/variant]`), as in an index entry or a `--platform` flag.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::*;

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
