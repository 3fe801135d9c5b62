//! regcache as its Helm chart installs it into a real API server: the chart installed by
//! the real helm, and the controller binary run as the chart's ServiceAccount (a token from
//! the TokenRequest API, not the admin's) with the access-deciding flags of the chart's
//! Deployment. A rule missing from the chart's RBAC shows as a Forbidden here.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::apiserver::ApiServer;
use super::kube::ControllerProcess;

/// The namespace the chart is installed in (its Lease lives there).
pub const RELEASE_NS: &str = "regcache-system";
/// The release name; the chart names its objects after it.
pub const RELEASE: &str = "regcache";

/// The flags of the chart's Deployment that decide which API calls regcache makes.
const ACCESS_FLAGS: [&str; 9] = [
    "--discovery",
    "--cloud-service-account-identity",
    "--cloud-controller-identity",
    "--leader-elect",
    "--leader-election-id",
    "--lease-duration",
    "--lease-retry",
    "--watch-namespace",
    "--api-auth",
];

pub struct Cluster {
    pub server: ApiServer,
    /// A kubeconfig holding a token of the chart's ServiceAccount.
    pub kubeconfig: PathBuf,
    /// The chart Deployment's access flags, and `--leader-election-namespace`.
    pub flags: Vec<String>,
    /// The chart's ServiceAccount, as the API server names its user.
    pub user: String,
}

impl std::ops::Deref for Cluster {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        &self.server
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut ApiServer {
        &mut self.server
    }
}

impl Cluster {
    /// A fresh API server with `namespaces`, and the chart installed with `--set` `values`.
    pub async fn install(namespaces: &[&str], values: &[&str]) -> Cluster {
        Cluster::install_on(
            tokio::task::spawn_blocking(ApiServer::start).await.unwrap(),
            namespaces,
            values,
        )
        .await
    }

    /// [`Cluster::install`] on a server already started.
    pub async fn install_on(server: ApiServer, namespaces: &[&str], values: &[&str]) -> Cluster {
        for ns in namespaces {
            server.namespace(ns).await;
        }
        let chart = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/regcache");
        let mut args = vec![
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "-n",
            RELEASE_NS,
            "--create-namespace",
        ];
        for v in values {
            args.extend(["--set", v]);
        }
        let (ok, out, err) = server.helm(&args);
        assert!(ok, "helm install {values:?}:\n{out}\n{err}");
        server.wait_for_crd().await;
        let deployment = server
            .get(&format!(
                "/apis/apps/v1/namespaces/{RELEASE_NS}/deployments/{RELEASE}"
            ))
            .await
            .expect("the chart's Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let account = pod["serviceAccountName"]
            .as_str()
            .expect("the Deployment names its ServiceAccount")
            .to_string();
        let mut flags: Vec<String> = pod["containers"][0]["args"]
            .as_array()
            .expect("container args")
            .iter()
            .filter_map(Value::as_str)
            .filter(|a| ACCESS_FLAGS.contains(&a.split('=').next().unwrap()))
            .map(str::to_string)
            .collect();
        // The Deployment sets it from the Pod's namespace.
        flags.push(format!("--leader-election-namespace={RELEASE_NS}"));
        let token = server.service_account_token(RELEASE_NS, &account).await;
        let kubeconfig = server.kubeconfig_for("chart", &token);
        Cluster {
            server,
            kubeconfig,
            flags,
            user: format!("system:serviceaccount:{RELEASE_NS}:{account}"),
        }
    }

    /// The chart's flags that `args` does not set itself, followed by `args`.
    pub fn args(&self, args: &[&str]) -> Vec<String> {
        let given = |flag: &str| {
            let name = flag.split('=').next().unwrap();
            args.iter().any(|a| a.split('=').next() == Some(name))
        };
        self.flags
            .iter()
            .filter(|f| !given(f))
            .cloned()
            .chain(args.iter().map(|a| a.to_string()))
            .collect()
    }

    /// `regcache controller` as the chart's ServiceAccount, with [`Cluster::args`].
    pub fn controller(&self, args: &[&str], log: PathBuf) -> ControllerProcess {
        self.controller_with_env(args, &[], log)
    }

    /// [`Cluster::controller`] with environment variables.
    pub fn controller_with_env(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> ControllerProcess {
        let args = self.args(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ControllerProcess::start_with_env(&self.kubeconfig, &args, env, log)
    }

    /// The chart's Lease's path (with leader election on).
    pub fn lease_path(&self) -> String {
        let id = self
            .flags
            .iter()
            .find_map(|f| f.strip_prefix("--leader-election-id="))
            .unwrap_or("regcache-leader");
        format!("/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NS}/leases/{id}")
    }

    /// Audit Events of requests the chart's ServiceAccount made that were refused (403),
    /// outside the `excepted` spans of time (when the API server was starting).
    pub fn forbidden(&self, excepted: &[(DateTime<Utc>, DateTime<Utc>)]) -> Vec<Value> {
        self.audit_events()
            .into_iter()
            .filter(|e| e["user"]["username"] == self.user.as_str())
            .filter(|e| e["responseStatus"]["code"] == 403)
            .filter(|e| {
                let received = e["requestReceivedTimestamp"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                !received.is_some_and(|t| excepted.iter().any(|(from, to)| *from <= t && t <= *to))
            })
            .collect()
    }

    /// Fails when the chart's ServiceAccount was refused anything.
    pub fn assert_nothing_forbidden(&self) {
        self.assert_nothing_forbidden_except(&[]);
    }

    /// Fails when the chart's ServiceAccount was refused anything outside `excepted`: an
    /// API server that is starting answers 403 until its RBAC authorizer has read the
    /// roles, and a client that reconnects at once meets that.
    pub fn assert_nothing_forbidden_except(&self, excepted: &[(DateTime<Utc>, DateTime<Utc>)]) {
        let refused = self.forbidden(excepted);
        assert!(
            refused.is_empty(),
            "the chart's RBAC refused the controller: {:#}",
            Value::Array(refused)
        );
    }
}
