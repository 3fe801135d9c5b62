//! Test certificates made with the `openssl` CLI: a CA plus a server leaf for TLS
//! registries (rustls refuses a self-signed leaf), and a self-signed RSA cert for signing
//! registry tokens.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, as files and as PEM bytes.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl CertPair {
    /// DER bytes of the (first) certificate.
    pub fn cert_der(&self) -> Vec<u8> {
        pem_certs_der(&self.cert_pem)
            .into_iter()
            .next()
            .expect("certificate in PEM")
    }
}

/// CA and a leaf for `localhost` / `127.0.0.1` signed by it.
#[derive(Clone, Debug)]
pub struct TlsCerts {
    pub ca: CertPair,
    pub leaf: CertPair,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = regcache-test
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[v3_signing]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign
subjectKeyIdentifier = hash
";

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_cnf(dir: &Path) -> PathBuf {
    let cnf = dir.join("openssl-harness.cnf");
    std::fs::write(&cnf, OPENSSL_CNF).expect("write openssl config");
    cnf
}

fn read_pair(cert_path: PathBuf, key_path: PathBuf) -> CertPair {
    CertPair {
        cert_pem: std::fs::read(&cert_path).expect("read cert"),
        key_pem: std::fs::read(&key_path).expect("read key"),
        cert_path,
        key_path,
    }
}

fn serial() -> String {
    format!("0x{:016x}", rand::random::<u64>() >> 1)
}

/// `-newkey` arguments: EC P-256 (fast) and RSA-2048.
const EC_P256: &[&str] = &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
const RSA_2048: &[&str] = &["rsa:2048"];
/// Validity of every certificate.
const DAYS: &str = "3";

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `openssl req -new` with a fresh unencrypted key (`newkey`) written to `key`, subject
/// `subj`, and the harness config `cnf`. With `self_signed = Some(extensions)`, `out` is
/// a self-signed certificate with those extensions and a random serial; otherwise a CSR.
fn new_key_and_req(
    cnf: &Path,
    newkey: &[&str],
    key: &Path,
    out: &Path,
    subj: &str,
    self_signed: Option<&str>,
) {
    let mut args = vec!["req", "-new", "-newkey"];
    args.extend(newkey);
    args.extend(["-nodes", "-keyout", path_str(key), "-out", path_str(out)]);
    args.extend(["-config", path_str(cnf), "-subj", subj]);
    let serial = serial();
    if let Some(ext) = self_signed {
        args.extend([
            "-x509",
            "-days",
            DAYS,
            "-extensions",
            ext,
            "-set_serial",
            &serial,
        ]);
    }
    openssl(&args);
}

/// Make `ca.crt`/`ca.key` (CA:TRUE) and `server.crt`/`server.key` (serverAuth,
/// SAN DNS:localhost, IP:127.0.0.1; signed by the CA) in `dir`. EC P-256 keys (fast).
pub fn generate_tls(dir: &Path) -> TlsCerts {
    let cnf = write_cnf(dir);
    let p = |name: &str| dir.join(name);
    let (ca_crt, ca_key) = (p("ca.crt"), p("ca.key"));
    let (leaf_crt, leaf_key, leaf_csr) = (p("server.crt"), p("server.key"), p("server.csr"));
    new_key_and_req(
        &cnf,
        EC_P256,
        &ca_key,
        &ca_crt,
        "/CN=regcache-test-ca",
        Some("v3_ca"),
    );
    new_key_and_req(&cnf, EC_P256, &leaf_key, &leaf_csr, "/CN=localhost", None);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&leaf_csr),
        "-CA",
        path_str(&ca_crt),
        "-CAkey",
        path_str(&ca_key),
        "-set_serial",
        &serial(),
        "-out",
        path_str(&leaf_crt),
        "-days",
        DAYS,
        "-extfile",
        path_str(&cnf),
        "-extensions",
        "v3_leaf",
    ]);
    TlsCerts {
        ca: read_pair(ca_crt, ca_key),
        leaf: read_pair(leaf_crt, leaf_key),
    }
}

/// A self-signed RSA-2048 certificate + key (`<name>.crt`, `<name>.key`, key in PKCS#8)
/// for RS256 token signing.
pub fn generate_signing_cert(dir: &Path, name: &str) -> CertPair {
    let cnf = write_cnf(dir);
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    new_key_and_req(
        &cnf,
        RSA_2048,
        &key,
        &crt,
        &format!("/CN={name}"),
        Some("v3_signing"),
    );
    read_pair(crt, key)
}

/// DER bytes of every `CERTIFICATE` block in `pem`.
pub fn pem_certs_der(pem: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut inside = false;
    let mut b64 = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = true;
            b64.clear();
        } else if line == "-----END CERTIFICATE-----" {
            inside = false;
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .expect("certificate base64"),
            );
        } else if inside {
            b64.push_str(line);
        }
    }
    out
}
