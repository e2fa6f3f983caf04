//! The ext_proc gRPC service. Each Envoy stream (one HTTP request) is answered by the state machine
//! in `stream.rs`, run as the stream's answers are polled, over the per-stream state of `state.rs`;
//! each phase has its own file. Imports go one way: `stream` → phases (`request_headers`,
//! `request_body`, `response`) → `state` → (`mutations`, `errors`).

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
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
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
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        Ok(Response::new(Box::pin(stream::replies(Arc::clone(&self.ctx), request.into_inner()))))
    }
}

#[cfg(test)]
mod tests;
