//! The OCI distribution-spec conformance suite (`oci-conformance`, built by
//! scripts/testbin.sh from opencontainers/distribution-spec/conformance) run read-only
//! against regcache's registry API: OCI content pushed into a real registry, warmed by
//! `regcache standalone`, then tags listed (with `last`), manifests pulled and HEADed by tag
//! and by digest, and config blobs pulled and HEADed, all from regcache. The same suite
//! against the upstream registry itself is printed beside it, not asserted.

use crate::support;

use std::process::Command;

use support::{ImageSpec, IndexKind, ManifestKind, PlatformSpec, Registry, RegistryAuth};

/// Testcases allowed not to pass against regcache, each with why: (a substring of the
/// testcase's name, the reason). Empty: every read-only test that runs passes. Layer blobs
/// are out of scope (regcache serves metadata only and answers BLOB_UNKNOWN for them), so
/// they are never given to the suite as `OCI_RO_DATA_BLOBS`.
const ALLOWED_FAILURES: &[(&str, &str)] = &[];

/// Testcases the suite reports as skipped because this run disables their API
/// (`OCI_API_PUSH=false`, `OCI_API_*_DELETE=false`): a read-only registry has neither.
const SKIPPED_BY_CONFIGURATION: &[&str] = &["/read-only/push/", "/read-only/delete/"];

/// The suite's filter: the read-only branch, the only one that runs without pushing.
const FILTER: &str = "OCI Conformance Test/read-only";

/// What the suite is told exists in the repository (`OCI_RO_DATA_*`).
struct ReadOnlyData {
    tags: Vec<String>,
    manifests: Vec<String>,
    blobs: Vec<String>,
}

/// One `<testcase>` of junit.xml.
#[derive(Debug)]
struct Testcase {
    name: String,
    status: String,
    /// Its `system-out` and `system-err` (the requests and answers the suite logged).
    output: String,
}

/// What one run of the suite left in its results directory.
struct SuiteRun {
    /// `failures` and `errors` of the `<testsuite>`.
    failures: usize,
    errors: usize,
    testcases: Vec<Testcase>,
    stdout: String,
    stderr: String,
}

/// Runs `oci-conformance` read-only against `registry` (`HOST:PORT`, plain HTTP), in a fresh
/// working directory (it would read an `oci-conformance.yaml` found in the current one).
fn run_suite(registry: &str, repo: &str, data: &ReadOnlyData) -> SuiteRun {
    let bin = support::apiserver::testbin().join("oci-conformance");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/testbin.sh",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let mut command = Command::new(&bin);
    command.current_dir(dir.path());
    // Nothing from the caller's environment configures the suite.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCI_") {
            command.env_remove(name);
        }
    }
    let out = command
        .env("HOME", dir.path())
        .env("OCI_REGISTRY", registry)
        .env("OCI_TLS", "disabled")
        .env("OCI_REPO1", repo)
        .env("OCI_RO_DATA_TAGS", data.tags.join(" "))
        .env("OCI_RO_DATA_MANIFESTS", data.manifests.join(" "))
        .env("OCI_RO_DATA_BLOBS", data.blobs.join(" "))
        .env("OCI_API_PUSH", "false")
        .env("OCI_API_TAGS_DELETE", "false")
        .env("OCI_API_MANIFESTS_DELETE", "false")
        .env("OCI_API_BLOBS_DELETE", "false")
        .env("OCI_API_REFERRER", "false")
        .env("OCI_API_PULL", "true")
        .env("OCI_API_TAGS_LIST", "true")
        .env("OCI_FILTER_TEST", FILTER)
        .env("OCI_RESULTS_DIR", &results)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // It exits 0 when it could not even set up (then it writes nothing): the results decide.
    for file in ["results.yaml", "junit.xml", "report.html"] {
        assert!(
            results.join(file).is_file(),
            "oci-conformance against {registry} wrote no {file} (exit {:?}):\n{stdout}\n{stderr}",
            out.status.code()
        );
    }
    let junit = std::fs::read_to_string(results.join("junit.xml")).unwrap();
    parse_junit(&junit, stdout, stderr)
}

/// The suite's counts and testcases, from junit.xml (no XML crate: the suite writes one
/// `<testsuite>` of flat `<testcase>` elements, each with a `status` attribute).
fn parse_junit(junit: &str, stdout: String, stderr: String) -> SuiteRun {
    let suite = regex::Regex::new(r"<testsuite\s[^>]*>").unwrap();
    let suite = suite
        .find(junit)
        .unwrap_or_else(|| panic!("no <testsuite> in junit.xml:\n{junit}"))
        .as_str();
    let attribute = |element: &str, name: &str| -> Option<String> {
        regex::Regex::new(&format!(r#"\s{name}="([^"]*)""#))
            .unwrap()
            .captures(element)
            .map(|c| unescape(&c[1]))
    };
    let count = |name: &str| -> usize {
        attribute(suite, name)
            .unwrap_or_else(|| panic!("no {name} in {suite}"))
            .parse()
            .unwrap()
    };
    let (failures, errors) = (count("failures"), count("errors"));
    // `<testcase .../>` or `<testcase ...>...</testcase>`.
    let testcase = regex::Regex::new(r"(?s)<testcase\s([^>]*?)(/>|>(.*?)</testcase>)").unwrap();
    let inner =
        regex::Regex::new(r"(?s)<(system-out|system-err)>(.*?)</(?:system-out|system-err)>")
            .unwrap();
    let testcases = testcase
        .captures_iter(junit)
        .map(|c| {
            let head = format!(" {}", &c[1]);
            let body = c.get(3).map_or("", |m| m.as_str());
            let output = inner
                .captures_iter(body)
                .map(|o| format!("<{}>\n{}", &o[1], unescape(&o[2])))
                .collect::<Vec<_>>()
                .join("\n");
            Testcase {
                name: attribute(&head, "name").unwrap_or_default(),
                status: attribute(&head, "status").unwrap_or_default(),
                output,
            }
        })
        .collect();
    SuiteRun {
        failures,
        errors,
        testcases,
        stdout,
        stderr,
    }
}

/// XML's predefined entities and character references, and CDATA markers.
fn unescape(text: &str) -> String {
    let text = text.replace("<![CDATA[", "").replace("]]>", "");
    let reference = regex::Regex::new(r"&(#x[0-9a-fA-F]+|#[0-9]+|lt|gt|amp|quot|apos);").unwrap();
    reference
        .replace_all(&text, |c: &regex::Captures| {
            let r = &c[1];
            let ch = match r {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ if r.starts_with("#x") => u32::from_str_radix(&r[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                _ => r[1..].parse().ok().and_then(char::from_u32),
            };
            ch.map_or_else(|| c[0].to_string(), String::from)
        })
        .into_owned()
}

fn print_run(what: &str, run: &SuiteRun) {
    eprintln!(
        "oci-conformance ({FILTER}) against {what}: {} testcases, failures={} errors={}",
        run.testcases.len(),
        run.failures,
        run.errors
    );
    for t in &run.testcases {
        eprintln!("  {:<8} {}", t.status, t.name);
    }
}

/// Each testcase `pick` selects, with its output, for a message.
fn details(run: &SuiteRun, pick: impl Fn(&Testcase) -> bool) -> String {
    run.testcases
        .iter()
        .filter(|t| pick(t))
        .map(|t| format!("--- {} [{}]\n{}", t.name, t.status, t.output))
        .collect::<Vec<_>>()
        .join("\n")
}

fn allowed(name: &str) -> Option<&'static str> {
    ALLOWED_FAILURES
        .iter()
        .find(|(pattern, _)| name.contains(pattern))
        .map(|(_, why)| *why)
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_distribution_spec_read_only_conformance_passes_against_warmed_content() {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let repo = "conformance/app";
    let pusher = registry.pusher();
    // Three OCI images (so the tag list has at least two entries and the `last` check runs)
    // and an OCI index of two OCI images: only OCI media types, which is all the suite's
    // manifest requests accept.
    let mut data = ReadOnlyData {
        tags: Vec::new(),
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    for (i, tag) in ["1.0.0", "1.1.0", "2.0.0"].iter().enumerate() {
        let image = pusher
            .push_image(
                repo,
                tag,
                &ImageSpec::new(ManifestKind::Oci).seed(100 + i as u64),
            )
            .await;
        data.tags.push(tag.to_string());
        data.manifests.push(image.digest);
        data.blobs.push(image.config_digest);
    }
    let index = pusher
        .push_index(
            repo,
            "multi",
            IndexKind::Oci,
            &[
                PlatformSpec::linux_amd64(),
                PlatformSpec::linux("arm64", None),
            ],
        )
        .await;
    data.tags.push("multi".to_string());
    data.manifests.push(index.digest.clone());
    for child in &index.children {
        data.manifests.push(child.digest.clone());
        data.blobs.push(child.config_digest.clone());
    }
    data.blobs.sort();
    data.blobs.dedup();

    let memcached = support::Memcached::start();
    let image = format!("{}/{repo}", registry.host());
    let regcache = support::standalone::Standalone::start(&image, &memcached).await;
    regcache.wait_warmed(&image, data.tags.len()).await;

    let started = std::time::Instant::now();
    let ours = run_suite(&regcache.api, "default/app", &data);
    let ours_took = started.elapsed();
    let started = std::time::Instant::now();
    let upstream = run_suite(&registry.host(), repo, &data);
    let upstream_took = started.elapsed();
    print_run(&format!("regcache ({ours_took:.1?})"), &ours);
    print_run(
        &format!("the upstream registry, not asserted ({upstream_took:.1?})"),
        &upstream,
    );
    for (what, run) in [("regcache", &ours), ("the upstream registry", &upstream)] {
        eprintln!(
            "tag-list testcase against {what}:\n{}",
            details(run, |t| t.name.ends_with("/read-only/tag-list"))
        );
    }

    let not_passed: Vec<&Testcase> = ours
        .testcases
        .iter()
        .filter(|t| t.status != "passed")
        .filter(|t| {
            !(t.status == "skipped" && SKIPPED_BY_CONFIGURATION.iter().any(|p| t.name.contains(p)))
        })
        .filter(|t| allowed(&t.name).is_none())
        .collect();
    assert!(
        not_passed.is_empty(),
        "testcases that did not pass against regcache: {:?}\n{}\n{}\n{}",
        not_passed
            .iter()
            .map(|t| (&t.name, &t.status))
            .collect::<Vec<_>>(),
        details(&ours, |t| not_passed.iter().any(|n| std::ptr::eq(*n, t))),
        ours.stdout,
        ours.stderr
    );
    if ALLOWED_FAILURES.is_empty() {
        assert_eq!(
            (ours.failures, ours.errors),
            (0, 0),
            "junit.xml counts failures or errors\n{}",
            ours.stdout
        );
    }
    // What must have run, and passed, once per item given: the tag list (with `last`),
    // manifests by tag and by digest, GET and HEAD, and the config blobs, GET and HEAD.
    let (tags, manifests, blobs) = (data.tags.len(), data.manifests.len(), data.blobs.len());
    for (what, pattern, expected) in [
        ("tag list", "/read-only/tag-list", 1),
        (
            "manifest GET by tag",
            "/read-only/pull/manifest-by-tag",
            tags,
        ),
        (
            "manifest GET by digest",
            "/read-only/pull/manifest-by-digest",
            manifests,
        ),
        ("blob GET", "/read-only/pull/blob-get", blobs),
        (
            "manifest HEAD by tag",
            "/read-only/head/manifest-head-by-tag",
            tags,
        ),
        (
            "manifest HEAD by digest",
            "/read-only/head/manifest-head-by-digest",
            manifests,
        ),
        ("blob HEAD", "/read-only/head/blob-head", blobs),
    ] {
        let statuses: Vec<&str> = ours
            .testcases
            .iter()
            .filter(|t| t.name.ends_with(pattern))
            .map(|t| t.status.as_str())
            .collect();
        assert_eq!(
            statuses,
            vec!["passed"; expected],
            "{what} testcases ({pattern}) against regcache"
        );
    }
    // The tag list's `last` check ran: it needs at least two tags listed.
    let tag_list = details(&ours, |t| t.name.ends_with("/read-only/tag-list"));
    assert!(tag_list.contains("tags/list?last="), "{tag_list}");
}
