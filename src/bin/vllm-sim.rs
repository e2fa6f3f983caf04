use clap::Parser;
use prefix_router::sim;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    prefix_router::telemetry::init();
    let args = sim::Args::parse();
    match sim::run(args, prefix_router::telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vllm-sim: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
