//! Child processes of the real binaries, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct Proc {
    pub child: Child,
    /// The last `http://` address on the start-up line.
    pub addr: SocketAddr,
    /// The whole start-up line, for binaries that report several addresses.
    pub line: String,
}

impl Proc {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a binary that prints `... listening on http://ADDR` on stdout once it serves.
pub(crate) fn spawn_listening(bin: &str, args: &[&str]) -> Proc {
    spawn_listening_env(bin, args, &[])
}

/// As `spawn_listening`, with extra environment variables.
pub(crate) fn spawn_listening_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.rsplit_once("http://").and_then(|(_, a)| a.trim().parse::<SocketAddr>().ok()) {
                let _ = tx.send((addr, line.clone()));
            }
        }
    });
    let (addr, line) = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("{bin} did not report its address")
    });
    Proc { child, addr, line }
}

pub(crate) fn sim(extra: &[&str]) -> Proc {
    sim_at(0, extra)
}

/// A sim on a given port (0 = any), e.g. to bring a killed pod back on its address.
pub(crate) fn sim_at(port: u16, extra: &[&str]) -> Proc {
    let tok = super::fixture_dir();
    let tok = tok.to_str().expect("utf-8 path");
    let port = port.to_string();
    let mut args = vec!["--port", port.as_str(), "--model", "tiny-chat", "--tokenizer", tok];
    args.extend_from_slice(extra);
    let bin = super::bins::vllm_sim();
    spawn_listening(bin.to_str().expect("utf-8 path"), &args)
}
