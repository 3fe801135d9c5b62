//! A server child process (memcached, docker-registry) that can be stopped and started
//! again; killed and waited for on drop.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// See the module docs.
pub struct ChildProcess {
    child: Option<Child>,
}

impl ChildProcess {
    pub fn new(child: Child) -> ChildProcess {
        ChildProcess { child: Some(child) }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Send `signal` (`USR1`, `TERM`, ...) and wait for the process to exit by itself;
    /// killed if it has not within `within`. Whether it exited in time.
    pub fn signal_and_wait(&mut self, signal: &str, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(c.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + within;
        while sent && Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill_and_wait(&mut c);
        false
    }

    /// Kill and wait (no-op when not running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_wait(&mut c);
        }
    }

    /// Stop, then call `spawn` until it succeeds. After an error it is called again
    /// `pause` later while `retry(&error)` holds and `within` has not passed since the
    /// stop; otherwise that error is returned (and nothing runs).
    pub fn restart<E>(
        &mut self,
        within: Duration,
        pause: Duration,
        mut spawn: impl FnMut() -> Result<Child, E>,
        retry: impl Fn(&E) -> bool,
    ) -> Result<(), E> {
        self.stop();
        let deadline = Instant::now() + within;
        loop {
            match spawn() {
                Ok(c) => {
                    self.child = Some(c);
                    return Ok(());
                }
                Err(e) if retry(&e) && Instant::now() < deadline => std::thread::sleep(pause),
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn kill_and_wait(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a freshly spawned child did not become ready, see [`wait_ready`].
pub enum NotReady {
    /// It exited with this status.
    Exited(ExitStatus),
    /// `ready` did not hold within the time limit; the child has been killed.
    TimedOut,
}

/// Poll every `poll` until `ready()` holds (Ok), the child exits, or `within` passes.
pub fn wait_ready(
    child: &mut Child,
    within: Duration,
    poll: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if ready() {
            return Ok(());
        }
        std::thread::sleep(poll);
    }
    kill_and_wait(child);
    Err(NotReady::TimedOut)
}
