use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    vllm_sim::init_logging();
    let args = vllm_sim::Args::parse();
    match vllm_sim::run(args, vllm_sim::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vllm-sim: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
