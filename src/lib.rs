pub mod hf;
pub mod sim;
pub mod telemetry;
