//! Leader election on a `coordination.k8s.io/v1` Lease: only the leader warms and writes.
//! Every write carries the Lease's resourceVersion, so two candidates racing for an
//! expired lease cannot both win (the loser gets 409 Conflict).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This candidate's name (the pod name in a cluster).
    pub identity: String,
    /// A leader that has not renewed for this long is replaced.
    pub duration: Duration,
    /// How often the leader renews, and candidates retry.
    pub retry: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Leading,
    /// Someone else holds a valid lease.
    Following(String),
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(now)),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease once.
    pub async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let name = &self.settings.name;
        let Some(mut lease) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following(String::new())),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = SignedDuration::from_secs(
            spec.lease_duration_seconds
                .unwrap_or(self.settings.duration.as_secs() as i32)
                .into(),
        );
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0 + duration < Timestamp::now());
        let mine = holder == self.settings.identity;
        if !mine && !expired && !holder.is_empty() {
            return Ok(Attempt::Following(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(transitions, acquired));
        // `replace` sends the resourceVersion we read: a concurrent winner makes this 409.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following(holder)),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up, when this candidate holds it: the holder is cleared, so another
    /// candidate takes it at its next retry instead of waiting for the lease to expire.
    /// Called on a graceful shutdown, after the controller stopped writing.
    pub async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        lease.spec = Some(spec);
        // With the resourceVersion read above: if the lease changed hands meanwhile, the
        // 409 leaves the new holder alone.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads.
    pub async fn acquire(&self) {
        let mut last = None;
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became leader");
                    return;
                }
                Ok(Attempt::Following(holder)) => {
                    if last.as_ref() != Some(&holder) {
                        tracing::info!(leader = %holder, "waiting for leadership");
                        last = Some(holder);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election request failed"),
            }
            tokio::time::sleep(self.settings.retry).await;
        }
    }

    /// Renews until leadership is lost (another holder, or no successful renewal for a
    /// whole lease duration); then returns.
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry).await;
            match self.try_acquire().await {
                Ok(Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::Following(holder)) => {
                    tracing::error!(leader = %holder, "lost leadership");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_renewal.elapsed() >= self.settings.duration {
                        tracing::error!("lease not renewed within its duration; lost leadership");
                        return;
                    }
                }
            }
        }
    }
}
