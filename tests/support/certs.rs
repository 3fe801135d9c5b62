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

/// Make `ca.crt`/`ca.key` (CA:TRUE) and `server.crt`/`server.key` (serverAuth,
/// SAN DNS:localhost, IP:127.0.0.1; signed by the CA) in `dir`. EC P-256 keys (fast).
pub fn generate_tls(dir: &Path) -> TlsCerts {
    let cnf = write_cnf(dir);
    let cnf = cnf.to_str().unwrap();
    let p = |name: &str| dir.join(name);
    let (ca_crt, ca_key) = (p("ca.crt"), p("ca.key"));
    let (leaf_crt, leaf_key, leaf_csr) = (p("server.crt"), p("server.key"), p("server.csr"));
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        ca_key.to_str().unwrap(),
        "-out",
        ca_crt.to_str().unwrap(),
        "-days",
        "3",
        "-config",
        cnf,
        "-extensions",
        "v3_ca",
        "-subj",
        "/CN=regcache-test-ca",
        "-set_serial",
        &serial(),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        leaf_key.to_str().unwrap(),
        "-out",
        leaf_csr.to_str().unwrap(),
        "-config",
        cnf,
        "-subj",
        "/CN=localhost",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        leaf_csr.to_str().unwrap(),
        "-CA",
        ca_crt.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
        "-set_serial",
        &serial(),
        "-out",
        leaf_crt.to_str().unwrap(),
        "-days",
        "3",
        "-extfile",
        cnf,
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
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
        "-days",
        "3",
        "-config",
        cnf.to_str().unwrap(),
        "-extensions",
        "v3_signing",
        "-subj",
        &format!("/CN={name}"),
        "-set_serial",
        &serial(),
    ]);
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
