pub mod discovery;
pub mod hf;
pub mod openai;
pub mod prefix;
pub mod sim;
pub mod telemetry;
pub mod tokenizer;
