//! The fault matrix: the real `regcache controller` binary against a real API server, a real
//! basic-auth registry behind the fault proxy and real memcached. Each test
//! is one row of `docs/reliability.md`: it warms two watches (the one the fault is aimed
//! at and a bystander on the same registry host, whose paths the fault does not match),
//! injects the fault, triggers a pass, checks what the status shows and what the read API
//! serves meanwhile, clears the fault and checks that the next pass recovers everything.
//!
//! Passes are triggered with the `regcache.io/requestedAt` annotation (the watches' interval
//! is an hour), and every wait polls with a generous deadline: nothing here depends on
//! timing.

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::kube::ready;
use support::rig::*;
use support::{CANARY_PASSWORD, Fault, FaultProxy, Kind, PushedImage, Rule, TEST_USER};

/// The common shape of a registry fault aimed at the affected repository:
/// `inject` adds the proxy rules (and may push a new tag, returned); then a pass fails
/// (`expect_error` must accept its lastError), the bystander stays clean, the affected
/// watch keeps serving its previous data; the rules are cleared and the next pass serves
/// everything, the new tag included.
async fn registry_fault_row(
    new_tag: bool,
    reason: &str,
    inject: impl FnOnce(&Rig, Option<&PushedImage>),
    expect_error: impl Fn(&str) -> bool,
) -> Rig {
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let new = if new_tag {
        Some(rig.push_affected("v3", 3).await)
    } else {
        None
    };
    inject(&rig, new.as_ref());

    let failed = rig.pass_fails(&rig.affected).await;
    let error = last_error(&failed).unwrap();
    assert!(expect_error(&error), "unexpected lastError: {error}");
    assert!(!error.contains(CANARY_PASSWORD));
    assert_eq!(
        ready(&failed).unwrap(),
        ("False".to_string(), reason.to_string()),
        "{failed:#}"
    );
    assert_eq!(
        failed["status"]["lastUpdate"], before["status"]["lastUpdate"],
        "lastUpdate does not move on a failed pass"
    );
    assert!(
        rig.proxy.rule_hits().iter().any(|n| *n > 0),
        "the fault fired"
    );
    rig.assert_running();
    // Previously cached data is still served, with the error beside it.
    rig.assert_serves(&rig.affected, &rig.affected.digests())
        .await;
    let (_, body) = rig.read(&rig.affected).await;
    assert_eq!(body["lastError"].as_str(), Some(error.as_str()), "{body:#}");
    rig.assert_bystander_clean().await;

    rig.proxy.clear_rules();
    rig.pass_succeeds(&rig.affected, &failed).await;
    rig.assert_running();
    if let Some(img) = new {
        rig.affected.images.insert("v3".to_string(), img);
    }
    rig.assert_serves(&rig.affected, &rig.affected.digests())
        .await;
    rig.assert_no_secrets().await;
    rig
}

/// A path regex for a manifest GET by digest of `image` in the affected repository.
fn manifest_of(image: &PushedImage) -> String {
    affected_path(&format!("manifests/{}", regex::escape(&image.digest)))
}

fn blob_of(digest: &str) -> String {
    affected_path(&format!("blobs/{}", regex::escape(digest)))
}

/// Requests of `kind` (a `regcache_registry_requests_total` kind label) that the affected
/// watch's first failed pass sent, retries included, from the controller's debug line for
/// that pass (`warm pass finished ... requests=tag_list=3 error=...`). Later passes, which
/// retry the failure after a back-off, do not blur the count.
fn requests_of_first_failed_pass(rig: &Rig, kind: &str) -> u64 {
    let logs = rig.controller.logs();
    let watch = format!("watch={NS}/{}", rig.affected.name);
    let line = logs
        .lines()
        .find(|l| l.contains("warm pass finished") && l.contains(&watch) && l.contains(" error="))
        .unwrap_or_else(|| panic!("no failed pass of {watch} in the log:\n{}", rig.log_tail()));
    let summary = line
        .split_once(" requests=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no requests= in {line}"));
    summary
        .split(',')
        .filter_map(|part| part.split_once('='))
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, n)| n.parse().expect("a count"))
}

// ----- rate limits --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_with_short_retry_after_is_waited_out() {
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    rig.proxy.add_rule(
        Rule::new(&affected_path("tags/list"), Fault::too_many(Some("1")))
            .method("GET")
            .times(2),
    );
    rig.proxy.reset_counts();
    rig.pass_succeeds(&rig.affected, &before).await;
    assert_eq!(rig.proxy.rule_hits(), [2], "both 429s were answered");
    let lists = rig
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.kind == Kind::TagList && r.path_and_query.contains(AFFECTED))
        .count();
    assert_eq!(lists, 3, "two 429s, then the list that succeeded");
    rig.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_with_retry_after_as_http_date_is_waited_out() {
    // RFC 9110 allows Retry-After as an HTTP date as well as seconds.
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let at = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    rig.proxy.add_rule(
        Rule::new(&affected_path("tags/list"), Fault::too_many(Some(&at)))
            .method("GET")
            .times(1),
    );
    rig.proxy.reset_counts();
    let started = std::time::Instant::now();
    rig.pass_succeeds(&rig.affected, &before).await;
    assert_eq!(rig.proxy.rule_hits(), [1], "the 429 was answered");
    let lists: Vec<_> = rig
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.kind == Kind::TagList && r.path_and_query.contains(AFFECTED))
        .collect();
    assert_eq!(lists.len(), 2, "the 429, then the list that succeeded");
    // The date was read: the pause lasted until it (whole seconds, so at least 3 s), not
    // the 1 s regcache waits after a 429 that gives no usable Retry-After.
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "waited {:?} for {at}",
        started.elapsed()
    );
    rig.assert_healthy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_without_retry_after_fails_the_pass_and_recovers() {
    // The three attempts of one pass answer 429 (a 429 closes the whole host, so a fault
    // that never ended would keep closing it for the bystander too, for ever longer pauses,
    // and the row would measure that race instead).
    let rig = registry_fault_row(
        false,
        "RateLimited",
        |rig, _| {
            rig.proxy.add_rule(
                Rule::new(&affected_path("tags/list"), Fault::too_many(None))
                    .method("GET")
                    .times(3),
            )
        },
        |e| e.contains("429") && e.contains("rate limiting"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "tag_list"),
        3,
        "two 429s waited out, the third ends the pass"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_with_long_retry_after_closes_the_host_until_it_ends() {
    // Over the 60 s regcache is willing to wait inside a pass: the pass ends at once and
    // the whole host (a 429 is about the client, not one repository) stays closed for the
    // pause. Affected: the watch whose request got the 429 fails; every watch on the host
    // waits, without an error.
    const PAUSE: &str = "65";
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let bystander_before = rig.get(&rig.bystander).await;
    rig.proxy.add_rule(
        Rule::new(&affected_path("tags/list"), Fault::too_many(Some(PAUSE)))
            .method("GET")
            .times(1),
    );
    let failed = rig.pass_fails(&rig.affected).await;
    let limited_at = rig
        .proxy
        .seen()
        .into_iter()
        .find(|r| r.fault.is_some())
        .expect("the 429 was answered")
        .at;
    let error = last_error(&failed).unwrap();
    assert!(
        error.contains("429") && error.contains("retry after 65s"),
        "{error}"
    );
    assert_eq!(ready(&failed).unwrap().1, "RateLimited");
    assert_eq!(
        failed["status"]["lastUpdate"],
        before["status"]["lastUpdate"]
    );
    rig.assert_serves(&rig.affected, &rig.affected.digests())
        .await;

    // While the host is closed nothing is sent to it, although both watches ask for passes.
    rig.proxy.reset_counts();
    rig.rescan(&rig.bystander).await;
    rig.rescan(&rig.affected).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.proxy.total(), 0, "{:?}", rig.proxy.seen());
    let waiting = rig.get(&rig.bystander).await;
    assert!(
        last_error(&waiting).is_none(),
        "the bystander only waits: {waiting:#}"
    );
    assert_eq!(ready(&waiting).unwrap().0, "True");
    rig.assert_serves(&rig.bystander, &rig.bystander.digests())
        .await;
    rig.assert_running();

    // When the pause ends, both passes run (nobody asks again) and succeed.
    let long = Duration::from_secs(150);
    for (w, b) in [
        (&rig.affected, &failed),
        (&rig.bystander, &bystander_before),
    ] {
        let deadline = Instant::now() + long;
        let check = succeeded_after(last_update(b));
        while !check(&rig.get(w).await) {
            assert!(
                Instant::now() < deadline,
                "{} did not recover after the pause\n{}",
                w.name,
                rig.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert_eq!(rig.proxy.rule_hits(), [1]);
    // Nothing reached the host before the pause had passed.
    let first = rig
        .proxy
        .seen()
        .into_iter()
        .map(|r| r.at)
        .min()
        .expect("the passes after the pause reached the registry");
    assert!(
        first >= limited_at + Duration::from_secs(PAUSE.parse().unwrap()),
        "a request {:?} after the 429, before its {PAUSE} s Retry-After",
        first - limited_at
    );
    for w in rig.watches() {
        rig.assert_serves(w, &w.digests()).await;
    }
    rig.assert_running();
}

// ----- server errors ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn server_error_500_on_tag_list() {
    let rig = registry_fault_row(
        false,
        "RegistryUnavailable",
        |rig, _| {
            rig.proxy
                .add_rule(Rule::new(&affected_path("tags/list"), Fault::status(500)))
        },
        |e| e.contains("answered 500 Internal Server Error"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "tag_list"),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_502_on_manifest_get() {
    let rig = registry_fault_row(
        true,
        "RegistryUnavailable",
        |rig, new| {
            rig.proxy
                .add_rule(Rule::new(&manifest_of(new.unwrap()), Fault::status(502)).method("GET"))
        },
        |e| e.contains("answered 502 Bad Gateway") && e.contains("v3"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "manifest_get"),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_503_on_config_blob() {
    let rig = registry_fault_row(
        true,
        "RegistryUnavailable",
        |rig, new| {
            rig.proxy.add_rule(Rule::new(
                &blob_of(&new.unwrap().config_digest),
                Fault::unavailable(None),
            ))
        },
        |e| e.contains("answered 503 Service Unavailable") && e.contains("v3"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "blob_get"),
        3,
        "one attempt and two retries"
    );
}

// ----- broken connections -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connection_reset_on_manifest_head() {
    let rig = registry_fault_row(
        true,
        "RegistryUnavailable",
        |rig, _| {
            rig.proxy
                .add_rule(Rule::new(&affected_path("manifests/v3"), Fault::Reset).method("HEAD"))
        },
        |e| e.contains("v3") && e.contains("failed mid-request"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "manifest_head"),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_on_tag_list() {
    let rig = registry_fault_row(
        false,
        "RegistryUnavailable",
        |rig, _| {
            rig.proxy.add_rule(Rule::new(
                &affected_path("tags/list"),
                Fault::Delay(Duration::from_secs(10)),
            ))
        },
        |e| e.contains("timed out"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "tag_list"),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_manifest_body() {
    let rig = registry_fault_row(
        true,
        "RegistryUnavailable",
        |rig, new| {
            rig.proxy.add_rule(
                Rule::new(&manifest_of(new.unwrap()), Fault::TruncateBody { keep: 10 })
                    .method("GET"),
            )
        },
        |e| e.contains("v3") && e.contains("failed mid-request"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "manifest_get"),
        3,
        "one attempt and two retries"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_body_within_the_timeout_is_not_an_error() {
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let new = rig.push_affected("v3", 3).await;
    // A few hundred bytes in 64-byte pieces, 100 ms apart: about a second, under the 3 s
    // request timeout.
    rig.proxy.add_rule(
        Rule::new(
            &manifest_of(&new),
            Fault::SlowBody {
                chunk: 64,
                pause: Duration::from_millis(100),
            },
        )
        .method("GET"),
    );
    rig.pass_succeeds(&rig.affected, &before).await;
    assert_eq!(
        rig.proxy.rule_hits(),
        [1],
        "the slow manifest was fetched once"
    );
    rig.assert_new_tag_served_by_a_healthy_rig("v3", new).await;
}

// ----- bad bodies ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn oversized_manifest_body_is_cut_at_the_cap() {
    let rig = registry_fault_row(
        true,
        "WarmFailed",
        |rig, new| {
            // 6 MiB streamed without a Content-Length: the 4 MiB manifest cap must stop it.
            rig.proxy.add_rule(
                Rule::new(
                    &manifest_of(new.unwrap()),
                    Fault::OversizedBody {
                        bytes: 6 << 20,
                        declare_length: false,
                    },
                )
                .method("GET"),
            )
        },
        |e| e.contains("v3") && e.contains("larger than the 4194304-byte limit"),
    )
    .await;
    assert_eq!(
        requests_of_first_failed_pass(&rig, "manifest_get"),
        1,
        "not retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_digest_manifest_is_refused() {
    let rig = registry_fault_row(
        true,
        "WarmFailed",
        |rig, new| {
            // Another (valid) manifest under v3's digest.
            let other = &rig.affected.images["v1"];
            rig.proxy.add_rule(
                Rule::new(
                    &manifest_of(new.unwrap()),
                    Fault::ReplaceBody {
                        body: other.manifest_bytes.clone(),
                        content_type: Some(other.media_type.clone()),
                    },
                )
                .method("GET"),
            )
        },
        |e| e.contains("v3") && e.contains("does not match its digest"),
    )
    .await;
    // v1's metadata never got stored under v3's digest.
    let (_, body) = rig.read(&rig.affected).await;
    assert_eq!(
        image_of(&body, "v3")["platforms"][0]["configDigest"],
        rig.affected.images["v3"].config_digest.as_str(),
        "{body:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_tag_list_json() {
    registry_fault_row(
        false,
        "WarmFailed",
        |rig, _| {
            rig.proxy.add_rule(
                Rule::new(
                    &affected_path("tags/list"),
                    Fault::ReplaceBody {
                        body: format!("{{\"name\":\"{AFFECTED}\",\"tags\":[\"v1\",").into_bytes(),
                        content_type: Some("application/json".into()),
                    },
                )
                .method("GET"),
            )
        },
        |e| e.contains("invalid tag list"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_content_type_falls_back_to_the_body_media_type() {
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let new = rig.push_affected("v3", 3).await;
    rig.proxy.add_rule(Rule::new(
        &affected_path("manifests/"),
        Fault::ContentType("application/vnd.example.unknown+json".into()),
    ));
    rig.pass_succeeds(&rig.affected, &before).await;
    assert!(
        rig.proxy.rule_hits()[0] >= 2,
        "HEAD and GET of v3 rewritten"
    );
    let (_, body) = rig.read(&rig.affected).await;
    assert_eq!(
        image_of(&body, "v3")["mediaType"],
        support::OCI_MANIFEST,
        "{body:#}"
    );
    rig.assert_new_tag_served_by_a_healthy_rig("v3", new).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_digest_header_falls_back_to_one_get() {
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let new = rig.push_affected("v3", 3).await;
    rig.proxy.add_rule(
        Rule::new(&affected_path("manifests/v3"), Fault::DropDigestHeader).method("HEAD"),
    );
    rig.proxy.reset_counts();
    rig.pass_succeeds(&rig.affected, &before).await;
    let gets: Vec<String> = rig
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET" && r.kind == Kind::Manifest)
        .map(|r| r.path_and_query)
        .collect();
    assert_eq!(
        gets,
        [format!("/v2/{AFFECTED}/manifests/v3")],
        "one GET by tag replaces the HEAD; the manifest is not fetched again by digest"
    );
    rig.assert_new_tag_served_by_a_healthy_rig("v3", new).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_redirect_to_another_host_is_followed_without_credentials() {
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let new = rig.push_affected("v3", 3).await;
    // The blob host has its own access to the storage (like a pre-signed URL); the
    // registry's credentials must not be sent there.
    let blob_host = FaultProxy::start_authorizing(
        &rig.registry.base_url(),
        None,
        &support::basic_auth_header(TEST_USER, CANARY_PASSWORD),
    );
    rig.proxy.add_rule(
        Rule::new(
            &affected_path("blobs/sha256:"),
            Fault::Redirect {
                status: 307,
                base: blob_host.base_url().replace("127.0.0.1", "localhost"),
            },
        )
        .method("GET"),
    );
    rig.proxy.reset_counts();
    rig.pass_succeeds(&rig.affected, &before).await;
    assert_eq!(
        rig.proxy.rule_hits(),
        [1],
        "v3's config blob was redirected"
    );
    let at_blob_host = blob_host.seen();
    assert_eq!(at_blob_host.len(), 1, "{at_blob_host:?}");
    assert!(
        at_blob_host[0].path_and_query.ends_with(&new.config_digest),
        "{at_blob_host:?}"
    );
    assert!(
        !at_blob_host[0].authorized,
        "registry credentials were sent to the blob host"
    );
    assert!(
        rig.proxy
            .seen()
            .iter()
            .any(|r| r.kind == Kind::Blob && r.authorized),
        "the registry itself got credentials"
    );
    rig.assert_no_secrets().await;
    rig.assert_new_tag_served_by_a_healthy_rig("v3", new).await;
}

// ----- memcached ----------------------------------------------------------------------------

/// Polls `/readyz` until its status is `want` and its body starts with `body`.
async fn wait_readyz(rig: &Rig, want: u16, body_start: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = rig.readyz().await;
        if status == want && body.starts_with(body_start) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status} {body}\n{}",
            rig.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_down_at_start() {
    // Affected: every watch (nothing can be cached); the process must wait for the cache.
    let mut rig = Rig::start(Options {
        memcached: 1,
        memcached_down_at_start: true,
        ..Options::default()
    })
    .await;
    let mut failed = Vec::new();
    for w in rig.watches() {
        let v = rig.wait(w, |v| last_error(v).is_some()).await;
        let error = last_error(&v).unwrap();
        assert!(error.contains("caching"), "{error}");
        assert_eq!(
            ready(&v).unwrap(),
            ("False".into(), "CacheUnavailable".into()),
            "{v:#}"
        );
        // Not "not cached": the cache cannot be asked, so a reader must retry.
        let (status, body) = rig.read(w).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (503, Some("CacheUnavailable")),
            "an unreachable cache is not an empty one: {body:#}"
        );
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!(
                "cannot reach memcached {}",
                rig.memcached[0].addr()
            )),
            "{message}"
        );
        failed.push(v);
    }
    wait_readyz(&rig, 503, "cache unreachable").await;
    rig.assert_running();

    rig.memcached[0].restart();
    wait_readyz(&rig, 200, "ok").await;
    for (w, before) in rig.watches().into_iter().zip(&failed) {
        rig.pass_succeeds(w, before).await;
        rig.assert_serves(w, &w.digests()).await;
    }
    rig.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_restart_mid_pass() {
    // Affected: every watch (the restart empties the cache).
    let mut rig = Rig::start(Options::default()).await;
    let before = rig.get(&rig.affected).await;
    let new = rig.push_affected("v3", 3).await;
    // Hold the pass at v3's HEAD while memcached restarts underneath it (the restart
    // takes milliseconds; the margin is for a busy machine).
    rig.proxy.add_rule(
        Rule::new(
            &affected_path("manifests/v3"),
            Fault::Delay(Duration::from_secs(5)),
        )
        .method("HEAD")
        .times(1),
    );
    rig.rescan(&rig.affected).await;
    let deadline = Instant::now() + WAIT;
    while rig.proxy.rule_hits()[0] == 0 {
        assert!(Instant::now() < deadline, "the pass never reached v3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.memcached[0].restart();
    // The pass goes on into the restarted (empty) memcached and succeeds: it writes v3's
    // image and the whole index; v1's and v2's images were lost with the restart.
    let straddled = rig
        .wait(&rig.affected, succeeded_after(last_update(&before)))
        .await;
    rig.assert_running();
    let only_v3: BTreeMap<String, String> = [("v3".to_string(), new.digest.clone())].into();
    rig.assert_serves(&rig.affected, &only_v3).await;
    let (_, body) = rig.read(&rig.affected).await;
    assert_eq!(
        body["tags"]
            .as_object()
            .map(|t| t.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["v1".to_string(), "v2".to_string(), "v3".to_string()]),
        "the index itself is whole: {body:#}"
    );
    let (status, body) = rig.read(&rig.bystander).await;
    assert_eq!(
        status, 404,
        "the bystander's data went with the restart: {body:#}"
    );
    assert_eq!(body["reason"], "NotCached");

    // The next pass restores what the restart lost, by digest: no HEADs, one GET per
    // lost manifest and config.
    rig.proxy.reset_counts();
    rig.pass_succeeds(&rig.affected, &straddled).await;
    let mut gets: Vec<String> = rig
        .proxy
        .seen()
        .into_iter()
        .filter(|r| r.method == "GET" && r.kind == Kind::Manifest)
        .map(|r| r.path_and_query)
        .collect();
    gets.sort();
    let mut lost: Vec<String> = ["v1", "v2"]
        .iter()
        .map(|t| {
            format!(
                "/v2/{AFFECTED}/manifests/{}",
                rig.affected.images[*t].digest
            )
        })
        .collect();
    lost.sort();
    assert_eq!(gets, lost);
    assert_eq!(rig.proxy.count("HEAD", Kind::Manifest), 0);
    assert_eq!(rig.proxy.count("GET", Kind::Blob), 2);
    rig.affected.images.insert("v3".into(), new);
    rig.assert_serves(&rig.affected, &rig.affected.digests())
        .await;
    let bystander = rig.get(&rig.bystander).await;
    rig.pass_succeeds(&rig.bystander, &bystander).await;
    rig.assert_serves(&rig.bystander, &rig.bystander.digests())
        .await;
    rig.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_flush_all() {
    // Affected: every watch; an emptied cache is not an error, it is re-warmed.
    let mut rig = Rig::start(Options::default()).await;
    let before: Vec<Value> = vec![rig.get(&rig.affected).await, rig.get(&rig.bystander).await];
    rig.memcached[0].flush();
    for w in rig.watches() {
        let (status, body) = rig.read(w).await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (404, Some("NotCached")),
            "a flushed cache serves nothing: {body:#}"
        );
    }
    rig.proxy.reset_counts();
    for (w, b) in rig.watches().into_iter().zip(&before) {
        rig.pass_succeeds(w, b).await;
        rig.assert_serves(w, &w.digests()).await;
    }
    // Re-warmed with the minimum: one HEAD per tag, one GET per manifest and config.
    let counts = rig.proxy.counts();
    assert_eq!(counts.get("HEAD", Kind::Manifest), 3, "{counts:?}");
    assert_eq!(counts.get("GET", Kind::Manifest), 3, "{counts:?}");
    assert_eq!(counts.get("GET", Kind::Blob), 3, "{counts:?}");
    rig.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_of_three_memcached_servers_down() {
    use regcache::cache::keys;
    use regcache::cache::memcached::server_for;
    use regcache::credentials::Credential;
    use regcache::image::Repository;

    let mut rig = Rig::start(Options {
        memcached: 3,
        ..Options::default()
    })
    .await;
    let servers: Vec<String> = rig.memcached.iter().map(|m| m.addr()).collect();
    let scope =
        keys::Scope::for_credential(&rig.proxy.host(), NS, &Credential::basic(TEST_USER, "any"));
    let head_of = |w: &Watch| {
        let repository = Repository::parse(&w.repository).unwrap();
        server_for(&servers, &keys::repository_head(&scope, &repository)).unwrap()
    };
    // Affected: the watch whose tag index head lives on the server that goes down.
    let down = head_of(&rig.affected);
    let before = rig.get(&rig.affected).await;
    let index = servers.iter().position(|s| *s == down).unwrap();
    wait_readyz(&rig, 200, "ok").await;
    rig.memcached[index].stop();

    // One answering server is enough to stay ready.
    let (status, body) = rig.readyz().await;
    assert_eq!(status, 200, "{body}");
    let failed = rig.pass_fails(&rig.affected).await;
    let error = last_error(&failed).unwrap();
    assert!(
        error.contains("caching") && error.contains(&down),
        "names the server: {error}"
    );
    assert_eq!(ready(&failed).unwrap().1, "CacheUnavailable");
    assert_eq!(
        failed["status"]["lastUpdate"], before["status"]["lastUpdate"],
        "lastUpdate does not move"
    );
    // Its index lives on the stopped server: the cache cannot answer for it (503, retry),
    // which is not the same as "not cached".
    let (status, body) = rig.read(&rig.affected).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("CacheUnavailable")),
        "{body:#}"
    );
    assert!(
        body["message"].as_str().unwrap_or_default().contains(&down),
        "names the server: {body:#}"
    );
    // The bystander is served whole from the live servers, or (when one of its keys lived
    // on the stopped one) refused as unavailable; never partly, never "not cached".
    let (status, body) = rig.read(&rig.bystander).await;
    match status {
        200 => assert_eq!(served(&body), rig.bystander.digests(), "{body:#}"),
        503 => assert_eq!(body["reason"], "CacheUnavailable", "{body:#}"),
        _ => panic!("bystander read: {status} {body:#}"),
    }
    rig.assert_running();
    let (status, _) = rig.readyz().await;
    assert_eq!(status, 200);

    rig.memcached[index].restart();
    rig.pass_succeeds(&rig.affected, &failed).await;
    rig.assert_serves(&rig.affected, &rig.affected.digests())
        .await;
    let bystander = rig.get(&rig.bystander).await;
    rig.pass_succeeds(&rig.bystander, &bystander).await;
    rig.assert_serves(&rig.bystander, &rig.bystander.digests())
        .await;
    rig.assert_running();
}

// ----- Kubernetes API -----------------------------------------------------------------------

const IRW: &str = "regcache.io/v1alpha1/imagerepositorywatches";

async fn admin(rig: &Rig, method: reqwest::Method, path: &str, body: Value) -> Value {
    let resp = rig
        .http
        .request(method, rig.kube.emulator().url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("emulator admin API");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

async fn counter(rig: &Rig, family: &str, key: &str) -> u64 {
    rig.kube.emulator().counters().await[family][key]
        .as_u64()
        .unwrap_or(0)
}

// Watches dropped and expired (410 Gone), and an API server restart, are produced by a real
// API server: `controller_e2e::watch_expiry_and_api_server_restart_lose_no_change`.

/// The one row on the Kubernetes API emulator: a real API server answers a status write
/// with 409 Conflict only for a stale resourceVersion or another field manager's field,
/// and regcache's status apply carries no resourceVersion and forces its fields, so no
/// real server can be made to refuse it on demand. The emulator refuses the next three.
#[tokio::test(flavor = "multi_thread")]
async fn status_patch_conflicts_are_retried() {
    let mut rig = Rig::start(Options {
        emulator: true,
        ..Options::default()
    })
    .await;
    let key = format!("{IRW}/status");
    let conflicts = counter(&rig, "conflicts", &key).await;
    let config = admin(
        &rig,
        reqwest::Method::PUT,
        "/_emulator/config",
        json!({"status_conflicts": 3}),
    )
    .await;
    assert_eq!(config["status_conflicts"], 3);
    let before = rig.get(&rig.affected).await;
    rig.pass_succeeds(&rig.affected, &before).await;
    assert_eq!(
        counter(&rig, "conflicts", &key).await - conflicts,
        3,
        "three status writes were refused, then one landed"
    );
    rig.assert_healthy().await;
}
