use clap::Parser;
use prefix_router::{config::Config, server, telemetry};

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
