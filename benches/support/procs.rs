//! Starting the real binaries for the load harnesses: a child killed on drop, its start-up line,
//! free loopback ports, and Envoy from the project's venv.
//! Each harness uses a subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub(crate) struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Kill {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// Starts `bin` (warnings only in its log) and returns it with its first stdout line.
pub(crate) fn start(bin: &str, args: &[&str]) -> (Kill, String) {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("start-up line");
    (Kill(child), line)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

pub(crate) fn envoy_bin() -> String {
    std::env::var("ENVOY_BIN").unwrap_or_else(|_| {
        let out = Command::new("bash").arg(".ci/envoy.sh").output().expect("run .ci/envoy.sh");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// Envoy on `config` (written to a temporary file) with `concurrency` workers.
pub(crate) fn envoy(config: &str, concurrency: usize) -> Kill {
    let path = std::env::temp_dir().join(format!("bench-envoy-{}-{}.yaml", std::process::id(), free_port()));
    std::fs::write(&path, config).expect("write bootstrap");
    let child = Command::new(envoy_bin())
        .args(["-c", path.to_str().expect("utf-8"), "--concurrency", &concurrency.to_string()])
        .args(["--disable-hot-restart", "--log-level", "error"])
        .spawn()
        .expect("start envoy");
    Kill(child)
}

pub(crate) async fn wait_port(port: u16) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("port {port} never opened");
}

/// The value after `key` (e.g. `grpc=`) on a start-up line.
pub(crate) fn field(line: &str, key: &str) -> String {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or_else(|| panic!("{key} in {line}")).to_owned()
}

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
pub(crate) fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// CPU seconds the process has used (user + system).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime, stime are 14, 15.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
