//! A foreground `memcached` child process on a free loopback port (below the ephemeral
//! range, so a restart can bind it again).

use super::process::{ChildProcess, NotReady, wait_ready};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A memcached server; killed on drop. `stop()`/`restart()` keep the port.
pub struct Memcached {
    child: ChildProcess,
    port: u16,
    args: Vec<String>,
}

impl Memcached {
    /// `memcached -u root -l 127.0.0.1 -p PORT -U 0 -m 64`
    pub fn start() -> Memcached {
        Self::start_with_args(&[])
    }

    /// Like [`Self::start`] with extra arguments, e.g. `&["-I", "2m"]`.
    pub fn start_with_args(extra: &[&str]) -> Memcached {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last_err = String::new();
        for _ in 0..5 {
            // Tests stop and restart memcached on its port: one no connection can take.
            let port = super::restartable_port();
            match spawn(port, &args) {
                Ok(child) => {
                    return Memcached {
                        child: ChildProcess::new(child),
                        port,
                        args,
                    };
                }
                Err(e) => last_err = e,
            }
        }
        panic!("memcached did not start: {last_err}");
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `memcache://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("memcache://127.0.0.1:{}", self.port)
    }

    /// Kill and wait; the port is kept for [`Self::restart`]. Data is lost.
    pub fn stop(&mut self) {
        self.child.stop();
    }

    /// Stop (if running) and start again on the same port (empty cache).
    pub fn restart(&mut self) {
        let (port, args) = (self.port, &self.args);
        self.child
            .restart(
                Duration::from_secs(5),
                Duration::from_millis(50),
                || spawn(port, args),
                |_| true,
            )
            .unwrap_or_else(|e| panic!("memcached restart on port {port} failed: {e}"));
    }

    /// memcached's restartable mode: item memory in the file `memory` (`-e`), which a
    /// [`Self::graceful_restart`] keeps. Put it on tmpfs (`/dev/shm`), as memcached asks.
    pub fn start_restartable(memory: &std::path::Path) -> Memcached {
        Self::start_with_args(&["-e", memory.to_str().expect("UTF-8 path")])
    }

    /// Stops memcached as restartable mode asks (SIGUSR1: it saves its state and exits),
    /// then starts it again on the same port and file.
    pub fn graceful_restart(&mut self) {
        assert!(
            self.child.signal_and_wait("USR1", Duration::from_secs(10)),
            "memcached did not stop on SIGUSR1"
        );
        // memcached 1.6 refuses its saved state ("restart incompatible due to setting for
        // [stop_time]") when it starts again within the second it stopped in.
        std::thread::sleep(Duration::from_millis(1100));
        self.restart();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// Send one raw text-protocol command (e.g. `"stats\r\n"`) and return the reply up to
    /// and including a line that is `END`, `STORED`, `DELETED`, ... (blocking std I/O).
    pub fn raw(&self, command: &str) -> String {
        raw_command(&self.addr(), command).expect("memcached raw command")
    }

    /// Raw `get`: the value, or `None` on a miss.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let reply = self.raw(&format!("get {key}\r\n"));
        let (head, rest) = reply.split_once("\r\n")?;
        if !head.starts_with("VALUE ") {
            return None;
        }
        let len: usize = head.rsplit(' ').next()?.parse().ok()?;
        Some(rest.as_bytes()[..len].to_vec())
    }

    /// Raw `set` (flags 0); true if `STORED`.
    pub fn set(&self, key: &str, value: &[u8], ttl_secs: u32) -> bool {
        let mut cmd = format!("set {key} 0 {ttl_secs} {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        raw_bytes(&self.addr(), &cmd)
            .map(|r| r.starts_with("STORED"))
            .unwrap_or(false)
    }

    /// `flush_all`
    pub fn flush(&self) {
        let _ = self.raw("flush_all\r\n");
    }

    /// `stats` as name → value.
    pub fn stats(&self) -> std::collections::BTreeMap<String, String> {
        self.raw("stats\r\n")
            .lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn spawn(port: u16, extra: &[String]) -> Result<Child, String> {
    let mut child = Command::new("memcached")
        .args(["-u", "root", "-l", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", "0", "-m", "64"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn memcached (apt-get install memcached): {e}"))?;
    let addr = format!("127.0.0.1:{port}");
    // Ready when *this* process answers: the port came from a bind-and-release (or is an
    // old one, on a restart), so another test's server may hold it; its pid tells.
    let pid_line = format!("STAT pid {}\r\n", child.id());
    let ready = || raw_command(&addr, "stats\r\n").is_ok_and(|r| r.contains(&pid_line));
    match wait_ready(
        &mut child,
        Duration::from_secs(5),
        Duration::from_millis(10),
        ready,
    ) {
        Ok(()) => {
            // Nothing reads stderr from here on; memcached writes little, but do not let
            // a full pipe ever block it.
            drop(child.stderr.take());
            Ok(child)
        }
        Err(NotReady::Exited(status)) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            Err(format!("memcached exited ({status}): {err}"))
        }
        Err(NotReady::TimedOut) => Err(format!(
            "memcached (pid {}) did not answer `stats` on {addr} within 5s",
            child.id()
        )),
    }
}

fn raw_command(addr: &str, command: &str) -> std::io::Result<String> {
    raw_bytes(addr, command.as_bytes())
}

fn raw_bytes(addr: &str, command: &[u8]) -> std::io::Result<String> {
    let sock: std::net::SocketAddr = addr.parse().expect("addr");
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(command)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        let done = text.ends_with("\r\n")
            && text.lines().last().is_some_and(|l| {
                l == "END"
                    || l == "STORED"
                    || l == "NOT_STORED"
                    || l == "DELETED"
                    || l == "NOT_FOUND"
                    || l == "OK"
                    || l == "EXISTS"
                    || l.starts_with("VERSION")
                    || l.ends_with("ERROR")
                    || l.starts_with("SERVER_ERROR")
                    || l.starts_with("CLIENT_ERROR")
            });
        if done {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
