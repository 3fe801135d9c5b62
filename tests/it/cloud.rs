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
    let wait = |ns, name, status, reason| wait_ready(&cluster, ns, name, status, reason);
    let a = wait("team-a", "app", "True", "Succeeded").await;
    let signed_in = std::time::Instant::now();
    wait("team-b", "app", "True", "Succeeded").await;
    let borrowed = wait("team-b", "borrowed", "False", "Unauthorized").await;
    let refused = wait("team-c", "app", "False", "CredentialsUnavailable").await;
    let elsewhere = wait("team-c", "elsewhere", "False", "ServiceAccountNotFound").await;
    assert_eq!(a["status"]["tagCount"], 1, "{a:#}");
    // The Ready condition's message says why.
    let message = ready_message;
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
    renewed_before_expiry(&cluster, "team-a", &a, signed_in, session, sign_ins_a).await;

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
    let scrape = support::scrape(&metrics).await;
    let logs = scrape
        + &std::fs::read_to_string(dir.path().join("controller.log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("controller-2.log")).unwrap();
    assert_not_shown(&cluster, &["team-a", "team-b", "team-c"], logs, &secrets).await;
}

/// The watch `ns/name` once its Ready condition has `status` and `reason`.
async fn wait_ready(cluster: &Cluster, ns: &str, name: &str, status: &str, reason: &str) -> Value {
    cluster
        .wait_for(
            &format!("{}/{name}", watches(ns)),
            WAIT,
            ready_is(status, reason),
        )
        .await
}

/// The Ready condition's message.
fn ready_message(w: &Value) -> String {
    w["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The watch `ns/app`, first ready as `first` after a sign-in at `signed_in` whose
/// credentials last `lifetime` seconds, passes again within three quarters of it without
/// a new sign-in, and after that with one (`sign_ins` counts them), before they expire.
async fn renewed_before_expiry(
    cluster: &Cluster,
    ns: &str,
    first: &Value,
    signed_in: std::time::Instant,
    lifetime: u64,
    sign_ins: impl Fn() -> usize,
) {
    let url = format!("{}/app", watches(ns));
    let pass = |value: &'static str, before: String| {
        let url = url.clone();
        async move {
            cluster
                .merge_patch(
                    &url,
                    json!({"metadata": {"annotations": {"regcache.io/requestedAt": value}}}),
                )
                .await;
            let after = cluster
                .wait_for(&url, WAIT, move |w| {
                    last_update(w) > before && w["status"]["lastError"].is_null()
                })
                .await;
            last_update(&after)
        }
    };
    let seen = pass("1", last_update(first)).await;
    assert!(
        signed_in.elapsed() < Duration::from_secs(lifetime * 3 / 4),
        "too slow to see a reuse"
    );
    assert_eq!(sign_ins(), 1, "fresh credentials were not reused");
    let renew_at = Duration::from_secs(lifetime * 3 / 4) + Duration::from_secs(1);
    tokio::time::sleep(renew_at.saturating_sub(signed_in.elapsed())).await;
    pass("2", seen).await;
    assert!(
        signed_in.elapsed() < Duration::from_secs(lifetime),
        "the renewal was not seen before the credentials' end"
    );
    assert_eq!(sign_ins(), 2, "credentials were not renewed");
}

/// None of `secrets` is in `logs`, nor in a watch's status or an Event of `namespaces`.
async fn assert_not_shown(
    cluster: &Cluster,
    namespaces: &[&str],
    logs: String,
    secrets: &[String],
) {
    let mut seen_by_users = logs;
    for ns in namespaces {
        seen_by_users += &cluster.text(&watches(ns)).await;
        seen_by_users += &cluster
            .text(&format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"))
            .await;
    }
    for secret in secrets {
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
        .env_remove("AZURE_FEDERATED_TOKEN_FILE")
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

/// The ACR host reaching `registry` (`--registry-host-address regcacheacr.azurecr.io=...`).
fn acr_host(registry: &Registry) -> String {
    format!("regcacheacr.azurecr.io:{}", registry.port())
}

/// ACR on the real API server, against the Entra stand-in over HTTPS and the harness token
/// server's `/oauth2/exchange`:
/// - each namespace's ServiceAccount signs in as its own Entra application (its token for
///   `api://AzureADTokenExchange` is the client assertion), in the tenant it names or
///   `--azure-tenant-id`, and reads only what that application was granted;
/// - a watch without a ServiceAccount signs in as the controller's workload identity
///   (`AZURE_FEDERATED_TOKEN_FILE`);
/// - an application Entra refuses is `CredentialsUnavailable` with Entra's message;
/// - the refresh token is reused while fresh and exchanged again before it expires;
/// - no token reaches a log, metric, status or Event.
#[tokio::test(flavor = "multi_thread")]
async fn acr_sign_in_by_each_service_accounts_entra_application_and_the_controllers_workload_identity()
 {
    let entra = support::entra::Entra::start();
    let registry = Registry::start(support::RegistryAuth::Token);
    for repository in ["team/a", "team/b", "team/c"] {
        registry
            .pusher()
            .push_image(repository, "v1", &ImageSpec::new(ManifestKind::Oci))
            .await;
    }
    let tokens = registry.token_server().expect("a token server");
    // Only regcache's requests from here on.
    tokens.reset_counts();
    tokens.acr_grant("client-a", &["team/a"]);
    tokens.acr_grant("client-b", &["team/b"]);
    tokens.acr_grant("controller-client", &["team/c"]);
    let refresh_lifetime = 20;
    tokens.set_acr_refresh_lifetime(refresh_lifetime as i64);
    let host = acr_host(&registry);

    let memcached = support::Memcached::start();
    let cluster = Cluster::install(
        &["team-a", "team-b", "team-c"],
        &["cloud.serviceAccountIdentities=true"],
    )
    .await;
    let accounts = [
        ("team-a", "puller", "client-a", Some("tenant-a")),
        ("team-b", "puller", "client-b", None),
        ("team-b", "denied", "denied-client", None),
    ];
    for (ns, name, client, tenant) in accounts {
        let mut annotations = json!({"azure.workload.identity/client-id": client});
        if let Some(t) = tenant {
            annotations["azure.workload.identity/tenant-id"] = json!(t);
        }
        cluster
            .create(
                &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
                json!({"metadata": {"name": name, "namespace": ns, "annotations": annotations}}),
            )
            .await;
    }
    let azure_watch = |name: &str, ns: &str, repository: &str, account: Option<&str>| {
        let mut w = watch(name, ns, &format!("{host}/{repository}"), account);
        w["spec"]["provider"] = json!("azure");
        w
    };
    for w in [
        azure_watch("app", "team-a", "team/a", Some("puller")),
        azure_watch("app", "team-b", "team/b", Some("puller")),
        // team-b's application was not granted team-a's repository.
        azure_watch("borrowed", "team-b", "team/a", Some("puller")),
        azure_watch("refused", "team-b", "team/b", Some("denied")),
        azure_watch("app", "team-c", "team/c", None),
    ] {
        let ns = w["metadata"]["namespace"].as_str().unwrap().to_string();
        cluster.create(&watches(&ns), w).await;
    }

    let dir = tempfile::tempdir().unwrap();
    let federated = dir.path().join("azure-identity-token");
    std::fs::write(&federated, "controller-federated-token-canary").unwrap();
    let authority = entra.authority_host();
    let federated_path = federated.to_str().unwrap().to_string();
    let env = [
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_FEDERATED_TOKEN_FILE", federated_path.as_str()),
        ("AZURE_CLIENT_ID", "controller-client"),
        ("AZURE_TENANT_ID", "tenant-controller"),
    ];
    let args = vec![
        "--memcached".to_string(),
        memcached.addr(),
        "--registry-host-address".to_string(),
        "regcacheacr.azurecr.io=127.0.0.1".to_string(),
        "--azure-tenant-id=tenant-default".to_string(),
        format!("--azure-ca-file={}", entra.ca_file().display()),
        "--log-level=info,regcache::cloud=debug".to_string(),
    ];
    let controller =
        cluster.controller_with_env(&strs(&args), &env, dir.path().join("controller.log"));
    let wait = |ns, name, status, reason| wait_ready(&cluster, ns, name, status, reason);
    let a = wait("team-a", "app", "True", "Succeeded").await;
    let signed_in = std::time::Instant::now();
    assert_eq!(a["status"]["tagCount"], 1, "{a:#}");
    wait("team-b", "app", "True", "Succeeded").await;
    wait("team-c", "app", "True", "Succeeded").await;
    let borrowed = wait("team-b", "borrowed", "False", "Unauthorized").await;
    let refused = wait("team-b", "refused", "False", "CredentialsUnavailable").await;
    assert!(
        ready_message(&refused).contains("AADSTS700016"),
        "{refused:#}"
    );
    assert!(ready_message(&borrowed).contains("401"), "{borrowed:#}");

    // Each ServiceAccount's own token was its application's assertion, in its tenant.
    for (ns, client, tenant) in [
        ("team-a", "client-a", "tenant-a"),
        ("team-b", "client-b", "tenant-default"),
    ] {
        let requests = entra.requests_of(tenant);
        let request = requests
            .iter()
            .find(|r| r.form("client_id").as_deref() == Some(client))
            .unwrap_or_else(|| panic!("no Entra request of {client}: {:#?}", entra.seen()));
        assert_eq!(
            request.form("scope").as_deref(),
            Some("https://containerregistry.azure.net/.default")
        );
        let c = claims(&request.form("client_assertion").unwrap());
        assert_eq!(
            c["sub"],
            format!("system:serviceaccount:{ns}:puller").as_str(),
            "{c:#}"
        );
        assert_eq!(c["aud"], json!(["api://AzureADTokenExchange"]), "{c:#}");
    }
    // The controller's identity: the federated token file, as the workload identity webhook
    // mounts it.
    let controller_requests = entra.requests_of("tenant-controller");
    assert!(
        controller_requests.iter().all(|r| {
            r.form("client_id").as_deref() == Some("controller-client")
                && r.form("client_assertion").as_deref()
                    == Some("controller-federated-token-canary")
        }) && !controller_requests.is_empty(),
        "{controller_requests:#?}"
    );
    // Every exchange named the registry's service and the identity's tenant; the registry
    // then saw ACR's user.
    let exchanges = tokens.acr_exchanges();
    let exchange_of = |client: &str| {
        exchanges
            .iter()
            .find(|e| e.client == client)
            .unwrap_or_else(|| panic!("no exchange for {client}: {exchanges:#?}"))
            .clone()
    };
    assert_eq!(exchange_of("client-a").tenant.as_deref(), Some("tenant-a"));
    assert_eq!(
        exchange_of("client-b").tenant.as_deref(),
        Some("tenant-default")
    );
    assert_eq!(
        exchange_of("controller-client").tenant.as_deref(),
        Some("tenant-controller")
    );
    assert!(
        exchanges
            .iter()
            .all(|e| e.service.as_deref() == Some(tokens.service())),
        "{exchanges:#?}"
    );
    assert!(
        tokens
            .request_log()
            .iter()
            .filter(|r| r.user.is_some())
            .all(|r| r.user.as_deref() == Some(support::token::ACR_USER)),
        "{:#?}",
        tokens.request_log()
    );

    // The refresh token (20 s here) is reused while fresh and renewed before it expires.
    let exchanges_a = || {
        tokens
            .acr_exchanges()
            .iter()
            .filter(|e| e.client == "client-a")
            .count()
    };
    assert_eq!(exchanges_a(), 1, "one exchange for team-a's application");
    renewed_before_expiry(
        &cluster,
        "team-a",
        &a,
        signed_in,
        refresh_lifetime,
        exchanges_a,
    )
    .await;

    let metrics = controller.address("metrics").await;
    let errors = support::scrape_metric(
        &metrics,
        r#"regcache_cloud_sign_ins_total{provider="azure",identity="service_account",result="error"}"#,
    )
    .await;
    assert!(errors >= 1.0, "the refused sign-in is counted");
    let scrape = support::scrape(&metrics).await;
    let mut secrets: Vec<String> = tokens
        .acr_exchanges()
        .into_iter()
        .map(|e| e.refresh_token)
        .collect();
    secrets.extend(
        ["client-a", "client-b", "controller-client"]
            .iter()
            .zip(["tenant-a", "tenant-default", "tenant-controller"])
            .map(|(c, t)| support::entra::access_token(t, c)),
    );
    secrets.push("controller-federated-token-canary".into());
    let logs = scrape + &controller.logs();
    assert_not_shown(&cluster, &["team-a", "team-b", "team-c"], logs, &secrets).await;
}

/// regcache's own Azure identity in standalone mode, as a service principal
/// (`AZURE_CLIENT_SECRET`): the secret reaches Entra ID only, the exchanged refresh token
/// opens the registry, and without `--azure-ca-file` the stand-in's certificate is refused
/// with a message that says so.
#[tokio::test(flavor = "multi_thread")]
async fn acr_sign_in_as_regcaches_own_service_principal_in_standalone_mode() {
    let entra = support::entra::Entra::start();
    let registry = Registry::start(support::RegistryAuth::Token);
    registry
        .pusher()
        .push_image("team/app", "v1", &ImageSpec::new(ManifestKind::Oci))
        .await;
    let tokens = registry.token_server().expect("a token server");
    tokens.acr_grant("principal", &["team/app"]);
    let dir = tempfile::tempdir().unwrap();
    let w = json!({"apiVersion": "regcache.io/v1alpha1", "kind": "ImageRepositoryWatch",
                   "metadata": {"name": "acr", "namespace": "default"},
                   "spec": {"image": format!("{}/team/app", acr_host(&registry)),
                            "provider": "azure", "insecure": true}});
    let authority = entra.authority_host();
    let env = [
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_CLIENT_ID", "principal"),
        ("AZURE_TENANT_ID", "tenant-sp"),
        ("AZURE_CLIENT_SECRET", "service-principal-secret-canary"),
    ];
    let ca = format!("--azure-ca-file={}", entra.ca_file().display());
    let mapping = [
        "--registry-host-address",
        "regcacheacr.azurecr.io=127.0.0.1",
    ];
    let args = [mapping[0], mapping[1], ca.as_str()];
    let (ok, summary, stderr) = standalone_once(dir.path(), &w, &args, &env);
    assert!(ok, "{summary:#}\n{stderr}\n{:#?}", entra.seen());
    assert_eq!(summary[0]["tagCount"], 1, "{summary:#}");
    let requests = entra.requests_of("tenant-sp");
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(
        requests[0].form("client_secret").as_deref(),
        Some("service-principal-secret-canary")
    );
    let exchanges = tokens.acr_exchanges();
    assert_eq!(exchanges.len(), 1, "{exchanges:#?}");
    assert_eq!(exchanges[0].tenant.as_deref(), Some("tenant-sp"));

    // The stand-in's CA is not a public root.
    let (ok, summary, stderr) = standalone_once(dir.path(), &w, &mapping, &env);
    assert!(!ok, "{summary:#}");
    let error = summary[0]["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("Entra ID token")
            && error.contains("regcacheacr.azurecr.io")
            && error.contains("invalid peer certificate"),
        "{summary:#}"
    );
    let mut secrets = vec![
        "service-principal-secret-canary".to_string(),
        support::entra::access_token("tenant-sp", "principal"),
    ];
    secrets.extend(exchanges.into_iter().map(|e| e.refresh_token));
    for secret in &secrets {
        assert!(
            !stderr.contains(secret.as_str()) && !summary.to_string().contains(secret.as_str()),
            "a secret is in the output"
        );
    }
}
