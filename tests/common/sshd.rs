//! A real OpenSSH server per test (scripts/harness/sshd.sh), stopped on drop, so each test
//! reads its own sshd log.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;

/// A running sshd and its credentials.
pub struct Sshd {
    dir: tempfile::TempDir,
    vars: BTreeMap<String, String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Starts sshd with a stub mode of scripts/harness/sshd.sh: `normal`, `hang`, `huge`,
    /// `metachar`, `no-remote-timeout` or `wrapper`.
    pub fn start(mode: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/harness/sshd.sh");
        let state = dir.path().join("sshd");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .arg(&state)
            .arg(free_port().to_string())
            .arg(mode)
            .output()
            .expect("run sshd.sh");
        assert!(
            out.status.success(),
            "sshd.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(state.join("sshd.env")).unwrap();
        let vars = env
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        Self { dir, vars }
    }

    /// A variable of sshd.env (`SSH_PORT`, `SSH_KEY_FILE`, ...).
    pub fn var(&self, key: &str) -> String {
        self.vars
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("sshd.env has no {key}"))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.var("SSH_PORT").parse().unwrap()
    }

    /// The contents of a file named by a variable.
    pub fn file(&self, key: &str) -> String {
        std::fs::read_to_string(self.var(key)).unwrap()
    }

    /// The sshd log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.var("SSH_LOG")).unwrap_or_default()
    }

    /// What the stubs logged so far (the ethtool stub's argv, one line per run).
    pub fn stub_log(&self) -> String {
        std::fs::read_to_string(self.var("SSH_STUB_LOG")).unwrap_or_default()
    }

    /// The command line of this server's hung stubs (`sleep N`, N unique per server).
    pub fn hung_command(&self) -> String {
        format!("sleep {}", self.var("SSH_STUB_SLEEP"))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/harness/sshd.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.dir.path().join("sshd"))
            .status();
    }
}
