use clap::Parser;
use prefix_router::{config::Config, server, telemetry};

/// mimalloc returns freed memory to the system within moments; glibc's malloc kept a 6 MB prompt's
/// tokenization buffers (hundreds of MiB) resident after the spike (BENCHMARKS.md, load and soak).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    telemetry::init();
    let cfg = Config::parse();
    match server::run(cfg, telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prefix-router: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
