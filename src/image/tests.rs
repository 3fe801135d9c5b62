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
