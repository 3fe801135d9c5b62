//! Pull secrets (docker config JSON).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::cache::keys::Scope;
use crate::credentials::DockerConfig;

/// Marks every secret the fuzz input carries, so any output that contains it is a leak.
const CANARY: &str = "\u{1}regcache-fuzz-canary\u{1}";
const SOURCE_NAME: &str = "fuzzed pull secret";

/// Docker config and pull secrets (`DockerConfig::from_config_json`, `from_dockercfg`).
///
/// The input is parsed as is (no panic), then, when it is JSON, again with every password,
/// token and `auth` secret extended by a canary. Properties: the canary never appears in a
/// parsed config's `Debug`, a credential's `Debug` or identity, a cache scope, or an error's
/// `Display`/`Debug`; changing only secrets changes no identity or scope, but does change
/// the credential's fingerprint (so the token cache never shares a token across secrets).
pub fn docker_config(data: &[u8]) {
    let _ = DockerConfig::from_config_json(SOURCE_NAME, data);
    let _ = DockerConfig::from_dockercfg(SOURCE_NAME, data);
    // An input already holding the canary would be reported as a leak of itself.
    // Host keys are lower-cased, so any spelling of it counts.
    if String::from_utf8_lossy(data)
        .to_ascii_lowercase()
        .contains("regcache-fuzz-canary")
    {
        return;
    }
    let Ok(plain) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut marked = plain.clone();
    if let Value::Object(top) = &mut marked {
        for (key, value) in top.iter_mut() {
            // Every top-level value is an entry to `.dockercfg`, even one under "auths"; to
            // `config.json`, "auths" holds the entries. Mark secrets for both readings.
            mark_entry(value);
            if let ("auths", Value::Object(hosts)) = (key.as_str(), value) {
                hosts.values_mut().for_each(mark_entry);
            }
        }
    }
    let plain = serde_json::to_vec(&plain).expect("JSON values serialise");
    let marked = serde_json::to_vec(&marked).expect("JSON values serialise");
    type Parser = fn(&str, &[u8]) -> Result<DockerConfig, crate::credentials::CredentialsError>;
    let parsers: [Parser; 2] = [DockerConfig::from_config_json, DockerConfig::from_dockercfg];
    for parse in parsers {
        let with_canary = parse(SOURCE_NAME, &marked);
        match &with_canary {
            Ok(config) => {
                assert_no_canary(&format!("{config:?}"));
                for host in config.hosts() {
                    let credential = config.credential_for(host);
                    assert_no_canary(&format!("{credential:?}"));
                    assert_no_canary(&credential.identity());
                    assert_no_canary(Scope::for_credential(host, "t", &credential).as_str());
                }
            }
            Err(e) => {
                assert_no_canary(&e.to_string());
                assert_no_canary(&format!("{e:?}"));
            }
        }
        let (Ok(with_canary), Ok(without)) = (with_canary, parse(SOURCE_NAME, &plain)) else {
            continue;
        };
        let hosts: Vec<&str> = without.hosts().collect();
        for host in hosts {
            let (a, b) = (
                without.credential_for(host),
                with_canary.credential_for(host),
            );
            if a.is_anonymous() || b.is_anonymous() {
                continue;
            }
            assert_eq!(
                a.identity(),
                b.identity(),
                "{host}: identity depends on the secret"
            );
            assert_eq!(
                Scope::for_credential(host, "t", &a),
                Scope::for_credential(host, "t", &b),
                "{host}: cache scope depends on the secret"
            );
            assert_ne!(
                a.fingerprint(),
                b.fingerprint(),
                "{host}: fingerprint ignores the secret"
            );
        }
    }
}

fn mark_entry(entry: &mut Value) {
    let Value::Object(fields) = entry else {
        return;
    };
    for (name, value) in fields.iter_mut() {
        let Value::String(s) = value else { continue };
        match name.as_str() {
            "password" | "identitytoken" | "registrytoken" => s.push_str(CANARY),
            "auth" => {
                let decoded = STANDARD
                    .decode(s.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok());
                match decoded {
                    Some(d) if d.contains(':') => *s = STANDARD.encode(format!("{d}{CANARY}")),
                    // Not a usable `auth`: the marked text must not surface in its error.
                    _ => s.push_str(CANARY),
                }
            }
            _ => {}
        }
    }
}

fn assert_no_canary(shown: &str) {
    assert!(
        !shown.contains("regcache-fuzz-canary"),
        "a secret appears in output: {shown:?}"
    );
}
