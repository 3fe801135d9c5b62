//! The progress display of `standalone --once` and `tags`: drawn under a pseudo-terminal
//! (tmux, whose rendered screen is captured), absent when standard error is a pipe and
//! with `--log-format json`. The real binary against the real registry.

use crate::support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{ImageSpec, ManifestKind, Registry, RegistryAuth};

const WATCHES: usize = 3;
const TAGS: usize = 2;

/// A registry holding `WATCHES` repositories of `TAGS` tags, and a directory of watches
/// of them.
async fn setup() -> (Registry, tempfile::TempDir) {
    let registry = Registry::start(RegistryAuth::Anonymous);
    let pusher = registry.pusher();
    let dir = tempfile::tempdir().unwrap();
    for w in 0..WATCHES {
        for t in 0..TAGS {
            pusher
                .push_image(
                    &format!("progress/r{w}"),
                    &format!("v{t}"),
                    &ImageSpec::new(ManifestKind::Oci).seed((w * TAGS + t) as u64),
                )
                .await;
        }
        std::fs::write(
            dir.path().join(format!("w{w}.yaml")),
            format!(
                "apiVersion: regcache.io/v1alpha1\nkind: ImageRepositoryWatch\nmetadata: {{name: w{w}}}\nspec:\n  image: {}/progress/r{w}\n  insecure: true\n",
                registry.host()
            ),
        )
        .unwrap();
    }
    (registry, dir)
}

/// Runs `args` in a detached tmux session (a pseudo-terminal of 160x40) with stdout to a
/// file, and returns the rendered screen once the command has exited, and its stdout.
fn on_a_terminal(args: &[String], dir: &Path) -> (String, String) {
    let session = format!("s{}", support::free_port());
    let out = dir.join(format!("{session}.out"));
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command = format!(
        "{} {} > {} ; echo EXIT=$? >> {} ; sleep 60",
        quote(env!("CARGO_BIN_EXE_regcache")),
        args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
        quote(&out.display().to_string()),
        quote(&out.display().to_string()),
    );
    let tmux = |socket: &str, a: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(socket)
            .args(a)
            .env_remove("TMUX")
            // tmux needs to know the outer terminal type even for a detached session (CI
            // runs without TERM).
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux (apt-get install tmux)")
    };
    // A server of its own per call. A new server now and then exits before it answers
    // ("server exited unexpectedly") when several start at once: try again on a new one.
    let mut attempt = 0;
    let socket = loop {
        let socket = format!("regcache-test-{}-{session}-{attempt}", std::process::id());
        let started = tmux(
            &socket,
            &[
                "new-session",
                "-d",
                "-s",
                &session,
                "-x",
                "160",
                "-y",
                "40",
                &command,
            ],
        );
        if started.status.success() {
            break socket;
        }
        let _ = tmux(&socket, &["kill-server"]);
        attempt += 1;
        assert!(
            attempt < 5,
            "tmux: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let stdout = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("EXIT=") {
            break text;
        }
        assert!(Instant::now() < deadline, "the command did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let screen = tmux(&socket, &["capture-pane", "-p", "-t", &session]);
    let _ = tmux(&socket, &["kill-server"]);
    (String::from_utf8_lossy(&screen.stdout).into_owned(), stdout)
}

fn once(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "standalone",
        "--watches",
        &dir.display().to_string(),
        "--once",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_shows_on_a_terminal_and_never_in_pipes_or_json_logs() {
    let (registry, dir) = setup().await;
    let work = tempfile::tempdir().unwrap();

    // A terminal: the bar's last state stays on screen, log lines above it.
    let (screen, stdout) = on_a_terminal(&once(dir.path(), &[]), work.path());
    assert!(stdout.contains("EXIT=0"), "{stdout}\n{screen}");
    let bar = screen
        .lines()
        .find(|l| l.contains(" watches · "))
        .unwrap_or_else(|| panic!("no progress line on screen:\n{screen}"));
    let tags = WATCHES * TAGS;
    assert!(
        bar.contains(&format!(
            "[{}] {WATCHES}/{WATCHES} watches · tags {tags} · ",
            "=".repeat(24)
        )),
        "{bar}"
    );
    // Every tag list, HEAD and GET of the three cold passes, by kind.
    assert!(
        bar.contains(&format!(
            "tag_list {WATCHES}, manifest_head {tags}, manifest_get {tags}, blob_get {tags}"
        )),
        "{bar}"
    );
    assert!(
        bar.contains(" requests, ") && bar.contains("/s") && bar.contains("ETA"),
        "{bar}"
    );
    assert_eq!(
        screen.lines().filter(|l| l.contains("warmed")).count(),
        WATCHES,
        "the log lines are on screen, whole:\n{screen}"
    );
    assert!(
        stdout.contains("w0") && stdout.contains("w2"),
        "the summary went to stdout: {stdout}"
    );

    // `tags` on a terminal: a spinner whose last line counts the tag list request.
    let repository = format!("{}/progress/r0", registry.host());
    let (screen, stdout) = on_a_terminal(
        &[
            "tags".into(),
            repository.clone(),
            "--insecure-registry".into(),
            registry.host(),
        ],
        work.path(),
    );
    let mut listed: Vec<&str> = stdout.lines().collect();
    listed.sort();
    assert_eq!(listed, ["EXIT=0", "v0", "v1"], "{stdout}");
    assert!(
        screen.contains(&format!("listing the tags of {repository} · 2 requests, "))
            && screen.contains("· ping 1, tag_list 1"),
        "{screen}"
    );

    // JSON logs on a terminal: no display, only JSON lines.
    let (screen, stdout) = on_a_terminal(&once(dir.path(), &["--log-format", "json"]), work.path());
    assert!(stdout.contains("EXIT=0"), "{stdout}");
    assert!(!screen.contains(" watches · "), "{screen}");
    assert!(
        screen
            .lines()
            .any(|l| l.starts_with('{') && l.contains("\"warmed\"")),
        "{screen}"
    );

    // A pipe: log lines only, no display and no terminal control codes.
    let out = Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(once(dir.path(), &[]))
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(" watches · ") && !stderr.contains('\r') && !stderr.contains('\u{1b}'),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("warmed")).count(),
        WATCHES,
        "{stderr}"
    );
}
