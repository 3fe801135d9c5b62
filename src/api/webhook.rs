//! Registry push notifications: which repositories a payload says were pushed. Three
//! payload kinds are recognised by their shape — the distribution registry's event
//! envelope, Docker Hub's webhook and Harbor's — and all yield canonical repositories.

use serde_json::Value;

use crate::image::{ImageRef, Repository};

/// Distribution events that mean "new content": pushes of manifests. Blob pushes share
/// the action and are told apart by their target URL.
const PUSH: &str = "push";
/// Harbor's event type for a pushed artifact.
const HARBOR_PUSH: &str = "PUSH_ARTIFACT";
const DOCKER_HUB: &str = "docker.io";

/// The repositories a notification reports pushed, canonical, sorted and without
/// duplicates; events that are not pushes are skipped. The error says what is wrong.
pub(crate) fn pushed_repositories(body: &[u8]) -> Result<Vec<Repository>, String> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| format!("the payload is not JSON: {e}"))?;
    if !payload.is_object() {
        return Err("the payload is not a JSON object".to_string());
    }
    let mut repositories = if let Some(events) = payload.get("events") {
        distribution(events)?
    } else if payload.get("push_data").is_some() {
        docker_hub(&payload)?
    } else if payload.get("event_data").is_some() {
        harbor(&payload)?
    } else {
        return Err(
            "not a registry notification: expected `events` (distribution registry), \
                    `push_data` (Docker Hub) or `event_data` (Harbor)"
                .to_string(),
        );
    };
    repositories.sort();
    repositories.dedup();
    Ok(repositories)
}

fn str_at<'a>(value: &'a Value, pointer: &str, what: &str) -> Result<&'a str, String> {
    match value.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(format!("{what} is not a non-empty string")),
        None => Err(format!("{what} is missing")),
    }
}

fn repository(host: &str, path: &str, what: &str) -> Result<Repository, String> {
    Repository::parse(&format!("{host}/{path}")).map_err(|e| format!("{what}: {e}"))
}

fn distribution(events: &Value) -> Result<Vec<Repository>, String> {
    let events = events
        .as_array()
        .ok_or_else(|| "`events` is not an array".to_string())?;
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let at = |field: &str| format!("events[{i}].{field}");
        if str_at(event, "/action", &at("action"))? != PUSH {
            continue;
        }
        // A blob comes before the manifest that uses it, and the manifest's own event follows:
        // a pass started for the blob is wasted, and may list a tag the registry is still
        // writing.
        if event
            .pointer("/target/url")
            .and_then(Value::as_str)
            .is_some_and(|url| url.contains("/blobs/"))
        {
            continue;
        }
        let path = str_at(event, "/target/repository", &at("target.repository"))?;
        // The host the pusher used; without it, the host of the target's URL.
        let host = match str_at(event, "/request/host", &at("request.host")) {
            Ok(host) => host.to_string(),
            Err(missing) => {
                let url = str_at(event, "/target/url", &at("target.url"))
                    .map_err(|_| format!("{missing}, and so is events[{i}].target.url"))?;
                let url = url::Url::parse(url).map_err(|e| format!("{}: {e}", at("target.url")))?;
                match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    (None, _) => return Err(format!("{} has no host", at("target.url"))),
                }
            }
        };
        out.push(repository(&host, path, &at("target.repository"))?);
    }
    Ok(out)
}

fn docker_hub(payload: &Value) -> Result<Vec<Repository>, String> {
    let path = str_at(payload, "/repository/repo_name", "repository.repo_name")?;
    Ok(vec![repository(DOCKER_HUB, path, "repository.repo_name")?])
}

fn harbor(payload: &Value) -> Result<Vec<Repository>, String> {
    let kind = str_at(payload, "/type", "type")?;
    if kind != HARBOR_PUSH {
        return Ok(Vec::new());
    }
    let resources = payload
        .pointer("/event_data/resources")
        .and_then(Value::as_array)
        .ok_or_else(|| "event_data.resources is missing or not an array".to_string())?;
    if resources.is_empty() {
        return Err("event_data.resources is empty".to_string());
    }
    resources
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let what = format!("event_data.resources[{i}].resource_url");
            let url = str_at(r, "/resource_url", &what)?;
            ImageRef::parse(url)
                .map(|image| image.repository)
                .map_err(|e| format!("{what}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(body: &str) -> Result<Vec<String>, String> {
        pushed_repositories(body.as_bytes()).map(|r| r.iter().map(|r| r.canonical()).collect())
    }

    #[test]
    fn distribution_envelope_takes_the_host_from_the_request_and_skips_pulls_and_blobs() {
        let body = r#"{"events":[
            {"action":"push","target":{"repository":"team/layers","mediaType":"application/octet-stream","url":"http://127.0.0.1:5000/v2/team/layers/blobs/sha256:01"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"push","target":{"repository":"team/app","tag":"v2"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"push","target":{"repository":"team/app","digest":"sha256:00"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"pull","target":{"repository":"team/other"},"request":{"host":"127.0.0.1:5000"}},
            {"action":"push","target":{"repository":"x","url":"https://reg.example.com:8443/v2/x/manifests/sha256:00"}}
        ]}"#;
        assert_eq!(
            names(body).unwrap(),
            ["127.0.0.1:5000/team/app", "reg.example.com:8443/x"]
        );
    }

    #[test]
    fn docker_hub_and_harbor_payloads() {
        assert_eq!(
            names(r#"{"push_data":{"tag":"v1"},"repository":{"repo_name":"org/app"}}"#).unwrap(),
            ["docker.io/org/app"]
        );
        let harbor = r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[
            {"resource_url":"harbor.example.com/proj/app:v1"}],"repository":{"repo_full_name":"proj/app"}}}"#;
        assert_eq!(names(harbor).unwrap(), ["harbor.example.com/proj/app"]);
        let deleted = r#"{"type":"DELETE_ARTIFACT","event_data":{"resources":[]}}"#;
        assert_eq!(names(deleted).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        assert!(names("not json").unwrap_err().contains("not JSON"));
        assert!(
            names("{}")
                .unwrap_err()
                .contains("`push_data` (Docker Hub)")
        );
        assert!(
            names(r#"{"events":{}}"#)
                .unwrap_err()
                .contains("not an array")
        );
        let no_repo = r#"{"events":[{"action":"push","target":{},"request":{"host":"h"}}]}"#;
        assert_eq!(
            names(no_repo).unwrap_err(),
            "events[0].target.repository is missing"
        );
        let bad = r#"{"push_data":{},"repository":{"repo_name":"Org/App"}}"#;
        assert!(
            names(bad).unwrap_err().contains("lowercase"),
            "{:?}",
            names(bad)
        );
        let no_host = r#"{"events":[{"action":"push","target":{"repository":"a"}}]}"#;
        assert!(
            names(no_host)
                .unwrap_err()
                .contains("request.host is missing")
        );
    }
}
