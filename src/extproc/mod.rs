//! The ext_proc gRPC service. One task per Envoy stream (one HTTP request) runs the state machine
//! in `stream.rs` over the per-stream state of `state.rs`; each phase has its own file. Imports go
//! one way: `stream` → phases (`request_headers`, `request_body`, `response`) → `state` →
//! (`mutations`, `errors`).

mod errors;
mod mutations;
mod request_body;
mod request_headers;
mod response;
mod state;
mod stream;

pub use errors::Reject;
pub use mutations::{MAX_CHUNK, METADATA_KEY};
pub use state::{BodyMode, Context};
pub use stream::run;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub struct ExtProc {
    ctx: Arc<Context>,
}

impl ExtProc {
    pub fn new(ctx: Context) -> Self {
        Self { ctx: Arc::new(ctx) }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let (tx, rx) = mpsc::channel(32);
        // Owned by the stream: it ends when Envoy closes the stream or we stop answering.
        tokio::spawn(stream::run(Arc::clone(&self.ctx), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests;
