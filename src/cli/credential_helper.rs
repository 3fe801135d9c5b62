//! Docker credential helpers for `inspect` and `tags`: which helper a docker config names
//! for a registry host (`credHelpers`, then `credsStore`, as docker, skopeo and crane
//! choose), running `docker-credential-NAME get`, and reading its answer.
//!
//! A helper's stdout carries the secret, so no error quotes it; only the stderr of a failed
//! run is shown, cut to one line.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use super::CliError;
use crate::credentials::{Credential, CredentialsError, DockerConfig, Secret, normalize_host_key};
use crate::image::DOCKER_HUB;

/// docker waits for a helper forever; a debugging command hung on a locked keychain helps
/// nobody, and 30 s still leaves time to answer a keychain unlock prompt.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// A helper's answer is a few hundred bytes; more is a misbehaving program.
const MAX_OUTPUT: u64 = 64 * 1024;

/// How much of a failed helper's stderr an error shows.
const MAX_STDERR_CHARS: usize = 200;

/// The server docker asks helpers about for Docker Hub (what `docker login` stores).
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// What helpers print (on stdout, exit 1) when they hold nothing for the server; docker
/// then proceeds anonymously.
const NOT_FOUND: &str = "credentials not found";

/// The `Username` by which a helper says `Secret` is an identity (refresh) token.
const TOKEN_USERNAME: &str = "<token>";

/// A credential helper's failure. Messages name the helper and the registry host, never
/// what the helper printed on stdout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    #[error("{source_name}: {problem}")]
    Config {
        source_name: String,
        problem: &'static str,
    },
    #[error("{source_name}: `{field}` names credential helper {name:?}, which is not a plain name")]
    BadName {
        source_name: String,
        field: &'static str,
        name: String,
    },
    #[error("credential helper {program} for registry {host}: {problem}")]
    Run {
        program: String,
        host: String,
        problem: Problem,
    },
}

/// What went wrong running a helper.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("not found on PATH")]
    NotOnPath,
    #[error("cannot run it ({0})")]
    Spawn(String),
    #[error("no answer within {}s", HELPER_TIMEOUT.as_secs())]
    Timeout,
    #[error("printed more than {MAX_OUTPUT} bytes")]
    TooLong,
    #[error("{status}{}", stderr.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Failed {
        status: String,
        stderr: Option<String>,
    },
    #[error(
        "its answer is not a JSON object {{\"ServerURL\",\"Username\",\"Secret\"}} ({detail}); \
         the output is not shown, it may hold the secret"
    )]
    BadAnswer { detail: String },
}

/// A helper to ask, and the server to ask it about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// `docker-credential-NAME`, looked up on PATH.
    pub program: String,
    pub server: String,
}

/// The helper part of a docker config.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Helpers {
    /// `credHelpers`, by the key as written.
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

impl Helpers {
    /// Reads `credHelpers` and `credsStore`. Only field names and helper names appear in
    /// errors (the file's `auths` hold secrets).
    pub fn from_config_json(source_name: &str, bytes: &[u8]) -> Result<Self, HelperError> {
        const HELPERS_MAP: &str = "`credHelpers` must map registry hosts to helper names";
        const STORE_NAME: &str = "`credsStore` must be a helper name";
        let config_error = |problem| HelperError::Config {
            source_name: source_name.to_string(),
            problem,
        };
        let checked = |field, name: &str| {
            // A name, not a path: `docker-credential-../x` would run something else.
            if name.contains(['/', '\\']) || name.chars().any(char::is_whitespace) {
                Err(HelperError::BadName {
                    source_name: source_name.to_string(),
                    field,
                    name: name.to_string(),
                })
            } else {
                Ok(name.to_string())
            }
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| config_error("not valid JSON"))?;
        let mut helpers = Helpers::default();
        match value.get("credHelpers") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(map)) => {
                for (key, name) in map {
                    let name = name.as_str().ok_or_else(|| config_error(HELPERS_MAP))?;
                    // docker skips an empty name, and so do we.
                    if !name.is_empty() {
                        let name = checked("credHelpers", name)?;
                        helpers.cred_helpers.insert(key.clone(), name);
                    }
                }
            }
            Some(_) => return Err(config_error(HELPERS_MAP)),
        }
        match value.get("credsStore") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(name)) if name.is_empty() => {}
            Some(serde_json::Value::String(name)) => {
                helpers.creds_store = Some(checked("credsStore", name)?);
            }
            Some(_) => return Err(config_error(STORE_NAME)),
        }
        Ok(helpers)
    }

    /// The helper for a registry host, if any: a `credHelpers` entry whose key is that host
    /// (`https://` and a path allowed, Docker Hub by any of its names), else `credsStore`.
    pub fn for_host(&self, host: &str) -> Option<Choice> {
        let host = normalize_host_key(host);
        let hub = host == DOCKER_HUB;
        let mut entries: Vec<(&String, &String)> = self
            .cred_helpers
            .iter()
            .filter(|(key, _)| normalize_host_key(key) == host)
            .collect();
        // Two keys for one host: the one docker itself would look up wins.
        entries.sort_by_key(|(key, _)| {
            let exact = if hub {
                key.as_str() == DOCKER_HUB_SERVER
            } else {
                key.as_str() == host
            };
            !exact
        });
        let (program, server) = match entries.first() {
            Some((key, name)) => (name.as_str(), host_as_written(key)),
            None => (self.creds_store.as_deref()?, host.clone()),
        };
        Some(Choice {
            program: format!("docker-credential-{program}"),
            server: if hub {
                DOCKER_HUB_SERVER.to_string()
            } else {
                server
            },
        })
    }
}

/// A `credHelpers` key's host, case and port kept: `https://Reg.example:5000/v2/` →
/// `Reg.example:5000`.
fn host_as_written(key: &str) -> String {
    let key = key.trim();
    let lower = key.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &key["https://".len()..]
    } else if lower.starts_with("http://") {
        &key["http://".len()..]
    } else {
        key
    };
    rest.split('/').next().unwrap_or_default().to_string()
}

/// The credential for `host` from the docker config at `path`: its credential helper's when
/// it names one for the host, else its `auths` entry.
pub async fn credential_for(path: &Path, host: &str) -> Result<Credential, CliError> {
    let source_name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| CredentialsError::Unreadable {
        source_name: source_name.clone(),
        reason: e.kind().to_string(),
    })?;
    let auths = DockerConfig::from_config_json(&source_name, &bytes)?;
    match Helpers::from_config_json(&source_name, &bytes)?.for_host(host) {
        Some(choice) => Ok(get(&choice, host).await?),
        None => Ok(auths.credential_for(host)),
    }
}

/// Runs `PROGRAM get` for `choice` (`host` is for errors).
pub async fn get(choice: &Choice, host: &str) -> Result<Credential, HelperError> {
    tracing::debug!(helper = %choice.program, host, "asking the docker credential helper");
    ask(&choice.program, &choice.server, HELPER_TIMEOUT)
        .await
        .map_err(|problem| HelperError::Run {
            program: choice.program.clone(),
            host: host.to_string(),
            problem,
        })
}

async fn ask(program: &str, server: &str, timeout: Duration) -> Result<Credential, Problem> {
    let mut child = tokio::process::Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // On timeout the future, and with it the child, is dropped: do not leave it behind.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Problem::NotOnPath,
            kind => Problem::Spawn(kind.to_string()),
        })?;
    let run = async {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A helper that exits without reading stdin closes the pipe; its exit status and
        // output tell what happened, so a write error is not the error to report.
        let _ = stdin.write_all(server.as_bytes()).await;
        drop(stdin);
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (stdout, stderr) = tokio::try_join!(read_capped(stdout), read_capped(stderr))?;
        let status = child
            .wait()
            .await
            .map_err(|e| Problem::Spawn(e.kind().to_string()))?;
        Ok::<_, Problem>((status, stdout, stderr))
    };
    let (status, stdout, stderr) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| Problem::Timeout)??;
    if status.success() {
        return parse_answer(&stdout);
    }
    if says_not_found(&stdout) || says_not_found(&stderr) {
        return Ok(Credential::Anonymous);
    }
    Err(Problem::Failed {
        status: match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => status.to_string(),
        },
        stderr: first_line(&stderr),
    })
}

async fn read_capped(stream: impl AsyncRead + Unpin) -> Result<Vec<u8>, Problem> {
    let mut out = Vec::new();
    stream
        .take(MAX_OUTPUT + 1)
        .read_to_end(&mut out)
        .await
        .map_err(|e| Problem::Spawn(e.kind().to_string()))?;
    if out.len() as u64 > MAX_OUTPUT {
        return Err(Problem::TooLong);
    }
    Ok(out)
}

fn says_not_found(output: &[u8]) -> bool {
    String::from_utf8_lossy(output)
        .to_ascii_lowercase()
        .contains(NOT_FOUND)
}

/// The first non-blank line of a failed helper's stderr, at most [`MAX_STDERR_CHARS`].
fn first_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut shown: String = line.chars().take(MAX_STDERR_CHARS).collect();
    if line.chars().count() > MAX_STDERR_CHARS {
        shown.push('…');
    }
    Some(shown)
}

/// Reads `{"ServerURL","Username","Secret"}`. Field names match case-insensitively, as Go's
/// `encoding/json` (which docker and most helpers use) matches them.
fn parse_answer(stdout: &[u8]) -> Result<Credential, Problem> {
    let bad = |detail: &str| Problem::BadAnswer {
        detail: detail.to_string(),
    };
    // serde's messages quote the input, which here is the secret: only the category shows.
    let value: serde_json::Value = serde_json::from_slice(stdout).map_err(|e| {
        bad(match e.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected structure",
            serde_json::error::Category::Eof if stdout.trim_ascii().is_empty() => "empty",
            serde_json::error::Category::Eof => "unexpected end of input",
        })
    })?;
    let object = value.as_object().ok_or_else(|| bad("not an object"))?;
    let field = |name: &'static str| -> Result<String, Problem> {
        match object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            None | Some((_, serde_json::Value::Null)) => Ok(String::new()),
            Some((_, serde_json::Value::String(s))) => Ok(s.clone()),
            Some(_) => Err(Problem::BadAnswer {
                detail: format!("`{name}` is not a string"),
            }),
        }
    };
    let (username, secret) = (field("Username")?, field("Secret")?);
    Ok(if username == TOKEN_USERNAME {
        // docker leaves the username empty for an identity token.
        Credential::IdentityToken {
            username: String::new(),
            token: Secret::new(secret),
        }
    } else if username.is_empty() && secret.is_empty() {
        Credential::Anonymous
    } else {
        Credential::Basic {
            username,
            password: Secret::new(secret),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "canary-Helper-Secr3t-77";

    fn helpers(json: &str) -> Helpers {
        Helpers::from_config_json("config.json", json.as_bytes()).unwrap()
    }

    fn choice(program: &str, server: &str) -> Option<Choice> {
        Some(Choice {
            program: format!("docker-credential-{program}"),
            server: server.to_string(),
        })
    }

    #[test]
    fn cred_helpers_win_then_creds_store_then_none() {
        let h = helpers(
            r#"{"auths":{"ghcr.io":{"auth":"dTpw"}},
                "credHelpers":{"ghcr.io":"gh","https://Reg.Example:5000/v2/":"ecr-login",
                               "empty.example":""},
                "credsStore":"desktop"}"#,
        );
        assert_eq!(h.for_host("ghcr.io"), choice("gh", "ghcr.io"));
        // `https://` and a path are allowed in the key; the host is sent as written there.
        assert_eq!(
            h.for_host("reg.example:5000"),
            choice("ecr-login", "Reg.Example:5000")
        );
        assert_eq!(h.for_host("quay.io"), choice("desktop", "quay.io"));
        assert_eq!(
            h.for_host("empty.example"),
            choice("desktop", "empty.example")
        );
        assert_eq!(
            h.for_host("reg.example:5001"),
            choice("desktop", "reg.example:5001")
        );

        let h = helpers(r#"{"credHelpers":{"ghcr.io":"gh"},"credsStore":""}"#);
        assert_eq!(h.for_host("quay.io"), None);
        assert_eq!(helpers(r#"{"auths":{}}"#).for_host("ghcr.io"), None);
    }

    #[test]
    fn docker_hub_by_any_name_asks_about_index_docker_io() {
        for key in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ] {
            let h = helpers(&format!(r#"{{"credHelpers":{{"{key}":"hub"}}}}"#));
            assert_eq!(
                h.for_host("docker.io"),
                choice("hub", "https://index.docker.io/v1/"),
                "{key}"
            );
        }
        let h = helpers(r#"{"credsStore":"osxkeychain"}"#);
        assert_eq!(
            h.for_host("docker.io"),
            choice("osxkeychain", "https://index.docker.io/v1/")
        );
        // The key docker itself looks up wins over an alias.
        let h = helpers(
            r#"{"credHelpers":{"docker.io":"alias","https://index.docker.io/v1/":"docker"}}"#,
        );
        assert_eq!(
            h.for_host("docker.io"),
            choice("docker", "https://index.docker.io/v1/")
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        for (json, field) in [
            (r#"{"credHelpers":["gh"]}"#, "credHelpers"),
            (r#"{"credHelpers":{"ghcr.io":1}}"#, "credHelpers"),
            (r#"{"credsStore":true}"#, "credsStore"),
            (r#"{"credsStore":"../../bin/sh"}"#, "credsStore"),
            (r#"{"credHelpers":{"ghcr.io":"a b"}}"#, "credHelpers"),
        ] {
            let err = Helpers::from_config_json("config.json", json.as_bytes()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("config.json") && msg.contains(field), "{msg}");
        }
    }

    #[test]
    fn answers_parse_to_credentials() {
        let answer = |json: String| parse_answer(json.as_bytes());
        assert_eq!(
            answer(format!(
                r#"{{"ServerURL":"ghcr.io","Username":"alice","Secret":"{CANARY}"}}"#
            )),
            Ok(Credential::basic("alice", CANARY))
        );
        assert_eq!(
            answer(format!(r#"{{"username":"<token>","secret":"{CANARY}"}}"#)),
            Ok(Credential::IdentityToken {
                username: String::new(),
                token: Secret::new(CANARY)
            })
        );
        assert_eq!(
            answer(r#"{"ServerURL":"x","Username":"","Secret":""}"#.into()),
            Ok(Credential::Anonymous)
        );
    }

    #[test]
    fn bad_answers_never_quote_the_output() {
        for out in [
            format!(r#"{{"Username":"alice","Secret":"{CANARY}""#),
            format!(r#"{{"Username":"alice","Secret":{CANARY}}}"#),
            format!(r#"["{CANARY}"]"#),
            format!(r#"{{"Username":["{CANARY}"],"Secret":"x"}}"#),
            format!("{CANARY}\n"),
            String::new(),
        ] {
            let err = parse_answer(out.as_bytes()).unwrap_err();
            let msg = format!("{err} {err:?}");
            assert!(matches!(err, Problem::BadAnswer { .. }), "{msg}");
            assert!(!msg.contains(CANARY), "{msg}");
        }
    }

    #[test]
    fn stderr_is_cut_to_one_line() {
        assert_eq!(
            first_line(b"\n  keychain locked  \nsecond line"),
            Some("keychain locked".to_string())
        );
        assert_eq!(first_line(b" \n"), None);
        let long = "é".repeat(300);
        let cut = first_line(long.as_bytes()).unwrap();
        assert_eq!(cut.chars().count(), MAX_STDERR_CHARS + 1);
        assert!(says_not_found(
            b"credentials not found in native keychain\n"
        ));
        assert!(!says_not_found(b"error getting credentials"));
    }

    /// A helper script at an absolute path, so the test needs no change to PATH.
    fn script(dir: &Path, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    #[tokio::test]
    async fn runs_helpers_and_stops_slow_ones() {
        let dir = tempfile::tempdir().unwrap();
        let helper = script(
            dir.path(),
            "ok",
            r#"test "$1" = get || exit 2
server=$(cat)
printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s"}' "$server" "$server""#,
        );
        assert_eq!(
            ask(&helper, "ghcr.io", HELPER_TIMEOUT).await,
            Ok(Credential::basic("u-ghcr.io", "s"))
        );

        let helper = script(
            dir.path(),
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(
            ask(&helper, "ghcr.io", HELPER_TIMEOUT).await,
            Ok(Credential::Anonymous)
        );

        let helper = script(
            dir.path(),
            "fails",
            &format!("echo {CANARY}; echo locked >&2; exit 3"),
        );
        let err = ask(&helper, "ghcr.io", HELPER_TIMEOUT).await.unwrap_err();
        assert_eq!(err.to_string(), "exited with code 3: locked");

        let helper = script(dir.path(), "slow", "exec sleep 30");
        let started = std::time::Instant::now();
        let err = ask(&helper, "ghcr.io", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err, Problem::Timeout);
        assert!(started.elapsed() < Duration::from_secs(10));

        let missing = dir.path().join("docker-credential-missing");
        let err = ask(&missing.display().to_string(), "ghcr.io", HELPER_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(err, Problem::NotOnPath);
    }
}
