//! Cloud registry sign-in against stand-ins: moto's server as STS and ECR (the AWS SDK's
//! endpoint settings point there), real API servers' TokenRequest for ServiceAccount
//! tokens, and real registries that accept only the ECR credentials of one AWS account.
//! The ECR hosts (`ACCOUNT.dkr.ecr.us-east-1.amazonaws.com:PORT`) reach the local
//! registries through `--registry-host-address`.
//!
//! moto accepts any web identity token and any role, and derives its ECR password from
//! the caller's account (`ACCOUNT-auth-token`): each registry below accepts one account's.

use crate::support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::google::{self, Google};
use support::kube::ready_is;
use support::moto::{EcrPublic, Moto};
use support::{ImageSpec, ManifestKind, Registry};

const ACCOUNT_A: &str = "111111111111";
const ACCOUNT_B: &str = "222222222222";
/// The account moto gives access keys it did not issue: the controller's own identity here.
const CONTROLLER_ACCOUNT: &str = "123456789012";
const WAIT: Duration = Duration::from_secs(60);

fn watches(ns: &str) -> String {
    format!("/apis/regcache.io/v1alpha1/namespaces/{ns}/imagerepositorywatches")
}

fn role(account: &str) -> String {
    format!("arn:aws:iam::{account}:role/puller")
}

/// A registry that accepts only `account`'s ECR credentials, with one image, and its ECR
/// host name.
async fn ecr_registry(account: &str) -> (Registry, String) {
    let registry = Registry::start_basic_as("AWS", &format!("{account}-auth-token"));
    registry
        .pusher()
        .push_image("team/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let host = format!(
        "{account}.dkr.ecr.us-east-1.amazonaws.com:{}",
        registry.port()
    );
    (registry, host)
}

fn watch(name: &str, ns: &str, image: &str, account: Option<&str>) -> Value {
    let mut spec = json!({"image": image, "provider": "aws", "insecure": true, "interval": "1h"});
    if let Some(a) = account {
        spec["serviceAccountName"] = json!(a);
    }
    json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The claims of a JWT (its middle part), unverified.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("base64url claims");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn last_update(w: &Value) -> String {
    w["status"]["lastUpdate"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn ecr_sign_in_by_each_namespaces_role_renewed_before_expiry_and_the_controllers_only_when_allowed()
 {
    let moto = tokio::task::spawn_blocking(Moto::start).await.unwrap();
    let (_a, host_a) = ecr_registry(ACCOUNT_A).await;
    let (_b, host_b) = ecr_registry(ACCOUNT_B).await;
    let (_c, host_c) = ecr_registry(CONTROLLER_ACCOUNT).await;
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(
        &["team-a", "team-b", "team-c"],
        &[
            "cloud.serviceAccountIdentities=true",
            "cloud.controllerIdentity=false",
        ],
    )
    .await;
    for (ns, account) in [("team-a", ACCOUNT_A), ("team-b", ACCOUNT_B)] {
        cluster
            .create(
                &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
                json!({"metadata": {"name": "puller", "namespace": ns,
                       "annotations": {"eks.amazonaws.com/role-arn": role(account)}}}),
            )
            .await;
    }
    let image = |host: &str| format!("{host}/team/app");
    for w in [
        watch("app", "team-a", &image(&host_a), Some("puller")),
        watch("app", "team-b", &image(&host_b), Some("puller")),
        // team-b's role is not team-a's: registry A refuses its credentials.
        watch("borrowed", "team-b", &image(&host_a), Some("puller")),
        // No ServiceAccount, and the controller lends no identity (the chart's value).
        watch("app", "team-c", &image(&host_c), None),
        // A ServiceAccount name resolves in the watch's own namespace only.
        watch("elsewhere", "team-c", &image(&host_a), Some("puller")),
    ] {
        let ns = w["metadata"]["namespace"].as_str().unwrap().to_string();
        cluster.create(&watches(&ns), w).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let ip = |host: &str| format!("{}=127.0.0.1", host.rsplit_once(':').unwrap().0);
    let addresses = [ip(&host_a), ip(&host_b), ip(&host_c)].join(",");
    let moto_url = moto.url();
    let env = [
        ("AWS_ENDPOINT_URL", moto_url.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        // The controller's own identity: keys moto did not issue (its default account).
        ("AWS_ACCESS_KEY_ID", "AKIAREGCACHECONTROLLER"),
        ("AWS_SECRET_ACCESS_KEY", "regcache-controller-secret-canary"),
    ];
    let session = 20;
    let args = |controller_identity: bool| {
        vec![
            "--memcached".to_string(),
            memcached.addr(),
            "--registry-host-address".to_string(),
            addresses.clone(),
            format!("--aws-session-duration={session}s"),
            format!("--cloud-controller-identity={controller_identity}"),
            "--log-level=info,regcache::cloud=debug,regcache::warmer=debug".to_string(),
        ]
    };
    let first_args = args(false);
    let mut controller =
        cluster.controller_with_env(&strs(&first_args), &env, dir.path().join("controller.log"));
    let wait =
        |ns: &'static str, name: &'static str, status: &'static str, reason: &'static str| {
            let cluster = &cluster;
            async move {
                cluster
                    .wait_for(
                        &format!("{}/{name}", watches(ns)),
                        WAIT,
                        ready_is(status, reason),
                    )
                    .await
            }
        };
    let a = wait("team-a", "app", "True", "Succeeded").await;
    let signed_in = std::time::Instant::now();
    wait("team-b", "app", "True", "Succeeded").await;
    let borrowed = wait("team-b", "borrowed", "False", "Unauthorized").await;
    let refused = wait("team-c", "app", "False", "CredentialsUnavailable").await;
    let elsewhere = wait("team-c", "elsewhere", "False", "ServiceAccountNotFound").await;
    assert_eq!(a["status"]["tagCount"], 1, "{a:#}");
    // The Ready condition's message says why.
    let message = |w: &Value| {
        w["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        message(&borrowed).contains("401") || message(&borrowed).contains("refused"),
        "{borrowed:#}"
    );
    assert!(
        message(&refused).contains("--cloud-controller-identity=false"),
        "{refused:#}"
    );
    assert!(
        message(&elsewhere).contains("team-c/puller"),
        "{elsewhere:#}"
    );

    // Each namespace's role was assumed with a token of its own ServiceAccount, for STS.
    let assumed = moto.calls_of("AssumeRoleWithWebIdentity");
    for (ns, account) in [("team-a", ACCOUNT_A), ("team-b", ACCOUNT_B)] {
        let call = assumed
            .iter()
            .find(|c| c["RoleArn"] == role(account).as_str())
            .unwrap_or_else(|| panic!("no AssumeRoleWithWebIdentity for {ns}: {assumed:#?}"));
        let token = call["WebIdentityToken"].as_str().unwrap();
        let c = claims(token);
        assert_eq!(
            c["sub"],
            format!("system:serviceaccount:{ns}:puller").as_str(),
            "{c:#}"
        );
        assert_eq!(c["aud"], json!(["sts.amazonaws.com"]), "{c:#}");
        assert_eq!(call["DurationSeconds"], session.to_string().as_str());
    }
    assert!(
        assumed
            .iter()
            .all(|c| c["RoleArn"] != role(CONTROLLER_ACCOUNT).as_str()),
        "{assumed:#?}"
    );
    let sign_ins_a = || {
        moto.calls_of("AssumeRoleWithWebIdentity")
            .iter()
            .filter(|c| c["RoleArn"] == role(ACCOUNT_A).as_str())
            .count()
    };
    // The borrowed watch assumed team-b's role too, but nobody assumed a role in the
    // controller's name, and team-a's role was assumed once (two watches, one login each).
    assert_eq!(sign_ins_a(), 1, "{assumed:#?}");

    // Renewal: credentials are reused while fresh (three quarters of the 20 s session),
    // and renewed before the session ends; no pass fails for it.
    let rescan = |value: String| {
        let cluster = &cluster;
        async move {
            cluster
                .merge_patch(
                    &format!("{}/app", watches("team-a")),
                    json!({"metadata": {"annotations": {"regcache.io/requestedAt": value}}}),
                )
                .await;
        }
    };
    let passed_after = |before: String| {
        let cluster = &cluster;
        async move {
            cluster
                .wait_for(&format!("{}/app", watches("team-a")), WAIT, move |w| {
                    last_update(w) > before && w["status"]["lastError"].is_null()
                })
                .await
        }
    };
    let mut seen = last_update(&a);
    rescan("1".into()).await;
    seen = last_update(&passed_after(seen).await);
    assert!(
        signed_in.elapsed() < Duration::from_secs(session * 3 / 4),
        "too slow to see a reuse"
    );
    assert_eq!(sign_ins_a(), 1, "fresh credentials were not reused");
    let renew_at = Duration::from_secs(session * 3 / 4) + Duration::from_secs(1);
    tokio::time::sleep(renew_at.saturating_sub(signed_in.elapsed())).await;
    rescan("2".into()).await;
    passed_after(seen).await;
    assert!(
        signed_in.elapsed() < Duration::from_secs(session),
        "the renewal was not seen before the session's end"
    );
    assert_eq!(sign_ins_a(), 2, "credentials were not renewed");

    // Allowed to lend its own identity, the controller signs team-c in as itself.
    controller.kill();
    let second_args = args(true);
    let second = cluster.controller_with_env(
        &strs(&second_args),
        &env,
        dir.path().join("controller-2.log"),
    );
    wait("team-c", "app", "True", "Succeeded").await;
    let ecr_calls = moto.calls_of("GetAuthorizationToken");
    assert!(!ecr_calls.is_empty());

    // No credential reached a log, a status or an Event.
    let mut secrets: Vec<String> = [ACCOUNT_A, ACCOUNT_B, CONTROLLER_ACCOUNT]
        .iter()
        .flat_map(|a| {
            let password = format!("{a}-auth-token");
            let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
            [password, token]
        })
        .collect();
    secrets.push("regcache-controller-secret-canary".into());
    secrets.extend(
        assumed
            .iter()
            .filter_map(|c| c["WebIdentityToken"].as_str().map(str::to_string)),
    );
    // Each sign-in is counted by identity and result; reuses are not.
    let metrics = second.address("metrics").await;
    let ok = support::scrape_metric(
        &metrics,
        r#"regcache_cloud_sign_ins_total{provider="aws",identity="controller",result="ok"}"#,
    )
    .await;
    assert_eq!(ok, 1.0, "team-c signed in once as the controller");
    let scrape = support::http_client(None)
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logs = scrape
        + &std::fs::read_to_string(dir.path().join("controller.log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("controller-2.log")).unwrap();
    let mut seen_by_users = logs;
    for ns in ["team-a", "team-b", "team-c"] {
        seen_by_users += &cluster.text(&watches(ns)).await;
        seen_by_users += &cluster
            .text(&format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"))
            .await;
    }
    for secret in &secrets {
        assert!(
            !seen_by_users.contains(secret.as_str()),
            "a credential ({}...) is in the logs, metrics, a status or an Event",
            &secret[..8.min(secret.len())]
        );
    }
}

/// `regcache standalone --once` over one watch file, with `env`: its exit status and JSON
/// summary.
fn standalone_once(
    dir: &std::path::Path,
    watch: &Value,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, Value, String) {
    let file = dir.join("watch.json");
    std::fs::write(&file, watch.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(["standalone", "--watches"])
        .arg(&file)
        .args(["--once", "-o", "json"])
        .args(args)
        // Hermetic: no profile or well-known credential file of the machine's user.
        .env("HOME", dir)
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .envs(env.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run regcache standalone");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}):\n{stderr}"));
    (out.status.success(), summary, stderr)
}

/// ECR Public (moto has none: a stand-in answers `GetAuthorizationToken`), as regcache's
/// own identity in standalone mode: the SDK signs the call in us-east-1 with the
/// environment's key, the token opens the registry, and a refusal is reported with the
/// cloud's message.
#[tokio::test(flavor = "multi_thread")]
async fn ecr_public_sign_in_as_regcaches_own_identity() {
    let password = "ecr-public-password-canary";
    let registry = Registry::start_basic_as("AWS", password);
    registry
        .pusher()
        .push_image("team/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let ecr_public = EcrPublic::start(password);
    let dir = tempfile::tempdir().unwrap();
    let image = format!("public.ecr.aws:{}/team/app", registry.port());
    let w = json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                   "metadata": {"name": "public", "namespace": "default"},
                   "spec": {"image": image, "provider": "aws", "insecure": true}});
    let url = ecr_public.url();
    let env = [
        ("AWS_ENDPOINT_URL_ECR_PUBLIC", url.as_str()),
        ("AWS_ACCESS_KEY_ID", "AKIAREGCACHEPUBLIC"),
        ("AWS_SECRET_ACCESS_KEY", "regcache-public-secret-canary"),
    ];
    let args = ["--registry-host-address", "public.ecr.aws=127.0.0.1"];
    let (ok, summary, stderr) = standalone_once(dir.path(), &w, &args, &env);
    assert!(ok, "{summary:#}\n{stderr}");
    assert_eq!(summary[0]["tagCount"], 1, "{summary:#}");
    let calls = ecr_public.authorizations();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("AWS4-HMAC-SHA256 Credential=AKIAREGCACHEPUBLIC/")
            && calls[0].contains("/us-east-1/ecr-public/aws4_request"),
        "{}",
        calls[0]
    );

    ecr_public.deny();
    let (ok, summary, stderr) = standalone_once(dir.path(), &w, &args, &env);
    assert!(!ok, "{summary:#}");
    let error = summary[0]["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("ECR Public GetAuthorizationToken")
            && error.contains("not allowed to pull here")
            && error.contains("public.ecr.aws"),
        "{summary:#}"
    );
    for secret in [password, "regcache-public-secret-canary"] {
        assert!(
            !stderr.contains(secret) && !summary.to_string().contains(secret),
            "a secret is in the output"
        );
    }
}

/// An Artifact Registry host reaching `registry`, and a registry that accepts only `token`
/// as the password of `oauth2accesstoken`.
async fn google_registry(token: &str) -> (Registry, String) {
    let registry = Registry::start_basic_as("oauth2accesstoken", token);
    registry
        .pusher()
        .push_image("proj/repo/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let host = format!("us-docker.pkg.dev:{}", registry.port());
    (registry, host)
}

fn gcp_watch(name: &str, ns: &str, image: &str, account: Option<&str>) -> Value {
    let mut w = watch(name, ns, image, account);
    w["spec"]["provider"] = json!("gcp");
    w
}

/// regcache's own Google identity (application default credentials), in standalone mode:
/// first the metadata server, then a workload identity federation file whose token
/// exchange goes to the stand-in's STS.
#[tokio::test(flavor = "multi_thread")]
async fn gcp_sign_in_as_regcaches_own_identity_by_metadata_server_and_federation_file() {
    let google = Google::start();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--registry-host-address", "us-docker.pkg.dev=127.0.0.1"];

    let (_metadata_registry, host) = google_registry(google::METADATA_TOKEN).await;
    let w = gcp_watch("gar", "default", &format!("{host}/proj/repo/app"), None);
    let metadata_host = google.host();
    let env = [("GCE_METADATA_HOST", metadata_host.as_str())];
    let (ok, summary, stderr) = standalone_once(dir.path(), &w, &args, &env);
    assert!(ok, "{summary:#}\n{stderr}\n{:#?}", google.seen());
    assert_eq!(summary[0]["tagCount"], 1, "{summary:#}");
    assert!(
        !google
            .seen_at("/computeMetadata/v1/instance/service-accounts/default/token")
            .is_empty()
    );

    // A federation credential file (as `gcloud iam workload-identity-pools
    // create-cred-config` writes one): the subject token from a file, exchanged at STS.
    let (_federated_registry, host) = google_registry(google::FEDERATED_TOKEN).await;
    let subject = dir.path().join("subject-token");
    std::fs::write(&subject, "oidc-subject-token-canary").unwrap();
    let config = dir.path().join("federation.json");
    std::fs::write(
        &config,
        json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/oidc",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", google.url()),
            "credential_source": {"file": subject},
        })
        .to_string(),
    )
    .unwrap();
    let w = gcp_watch("gar", "default", &format!("{host}/proj/repo/app"), None);
    let config = config.to_str().unwrap().to_string();
    let env = [
        ("GOOGLE_APPLICATION_CREDENTIALS", config.as_str()),
        ("GCE_METADATA_HOST", "127.0.0.1:9"),
    ];
    let (ok, summary, stderr) = standalone_once(dir.path(), &w, &args, &env);
    assert!(ok, "{summary:#}\n{stderr}\n{:#?}", google.seen());
    assert_eq!(summary[0]["tagCount"], 1, "{summary:#}");
    let exchanges = google.seen_at("/v1/token");
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    assert_eq!(
        exchanges[0].form("subject_token").as_deref(),
        Some("oidc-subject-token-canary")
    );
    assert_eq!(
        exchanges[0].form("audience").as_deref(),
        Some(
            "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/oidc"
        )
    );
    for secret in [
        google::METADATA_TOKEN,
        google::FEDERATED_TOKEN,
        "oidc-subject-token-canary",
    ] {
        assert!(
            !stderr.contains(secret) && !summary.to_string().contains(secret),
            "a secret is in the output"
        );
    }
}

/// Each ServiceAccount's Google service account on the real API server: its token is
/// exchanged at STS for the pool's federated token, which impersonates the account named
/// in `iam.gke.io/gcp-service-account`; a refused impersonation is `CredentialsUnavailable`
/// with Google's message.
#[tokio::test(flavor = "multi_thread")]
async fn gcp_sign_in_as_each_service_accounts_google_account() {
    const READER: &str = "reader@proj.iam.gserviceaccount.com";
    const DENIED: &str = "denied@proj.iam.gserviceaccount.com";
    const PROVIDER: &str =
        "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/k8s";
    let google = Google::start();
    let (_registry, host) = google_registry(&google::impersonated_token(READER)).await;
    let memcached = support::Memcached::start();
    let cluster = Cluster::install(&["team-g"], &["cloud.serviceAccountIdentities=true"]).await;
    for (name, email) in [("reader", READER), ("denied", DENIED)] {
        cluster
            .create(
                "/api/v1/namespaces/team-g/serviceaccounts",
                json!({"metadata": {"name": name, "namespace": "team-g",
                       "annotations": {"iam.gke.io/gcp-service-account": email}}}),
            )
            .await;
    }
    let image = format!("{host}/proj/repo/app");
    for (name, account) in [("app", "reader"), ("refused", "denied")] {
        cluster
            .create(
                &watches("team-g"),
                gcp_watch(name, "team-g", &image, Some(account)),
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let sts = format!("{}/v1/token", google.url());
    let args = vec![
        "--memcached".to_string(),
        memcached.addr(),
        "--registry-host-address".to_string(),
        "us-docker.pkg.dev=127.0.0.1".to_string(),
        format!("--gcp-workload-identity-provider={PROVIDER}"),
        format!("--gcp-sts-url={sts}"),
        format!("--gcp-iam-credentials-url={}", google.url()),
    ];
    let env = [("GCE_METADATA_HOST", "127.0.0.1:9")];
    let controller =
        cluster.controller_with_env(&strs(&args), &env, dir.path().join("controller.log"));
    let ready = cluster
        .wait_for(
            &format!("{}/app", watches("team-g")),
            WAIT,
            ready_is("True", "Succeeded"),
        )
        .await;
    assert_eq!(ready["status"]["tagCount"], 1, "{ready:#}");
    let refused = cluster
        .wait_for(
            &format!("{}/refused", watches("team-g")),
            WAIT,
            ready_is("False", "CredentialsUnavailable"),
        )
        .await;
    let message = refused["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("PERMISSION_DENIED") || message.contains("denied on denied@"),
        "{refused:#}"
    );

    // The exchanged tokens were the ServiceAccounts' own, for the pool's https audience.
    let exchanges = google.seen_at("/v1/token");
    let mut subjects: Vec<String> = exchanges
        .iter()
        .map(|e| {
            let c = claims(&e.form("subject_token").unwrap());
            assert_eq!(
                c["aud"],
                json!([PROVIDER.replacen("//", "https://", 1)]),
                "{c:#}"
            );
            assert_eq!(e.form("audience").as_deref(), Some(PROVIDER));
            c["sub"].as_str().unwrap().to_string()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(
        subjects,
        [
            "system:serviceaccount:team-g:denied",
            "system:serviceaccount:team-g:reader"
        ]
    );
    let impersonations: Vec<String> = google
        .seen_at("/v1/projects/-/serviceAccounts/")
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(
        impersonations
            .iter()
            .any(|p| p.contains(&format!("{READER}:generateAccessToken"))),
        "{impersonations:?}"
    );
    let metrics = controller.address("metrics").await;
    let errors = support::scrape_metric(
        &metrics,
        r#"regcache_cloud_sign_ins_total{provider="gcp",identity="service_account",result="error"}"#,
    )
    .await;
    assert!(errors >= 1.0, "the refused sign-in is counted");
    let logs = controller.logs();
    for secret in [
        google::FEDERATED_TOKEN.to_string(),
        google::impersonated_token(READER),
    ] {
        assert!(!logs.contains(&secret), "a token is in the log");
        assert!(!message.contains(&secret), "a token is in the status");
    }
}
