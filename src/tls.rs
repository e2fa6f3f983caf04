//! TLS for the ext_proc port. Gateway API Inference Extension pickers serve gRPC over TLS, and the
//! way Envoy Gateway reaches an InferencePool's picker always opens a TLS connection to it: from a
//! mounted certificate and key (e.g. a cert-manager Secret), or a self-signed pair made at start
//! when none is given. The separate health port stays plaintext (kubelet's gRPC probes speak no TLS).

use std::path::PathBuf;
use tonic::transport::{Identity, ServerTlsConfig};

/// Where the ext_proc port's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Off,
    /// Made at start for the names below (Envoy's picker connection does not verify it).
    SelfSigned,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate or key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Names the self-signed certificate is made for: the Service names a picker is reached by.
const SELF_SIGNED_NAMES: &[&str] = &["prefix-router", "prefix-router-epp", "localhost"];

/// The server TLS configuration, or `None` for plaintext.
pub fn server_config(source: &TlsSource) -> Result<Option<ServerTlsConfig>, TlsError> {
    let identity = match source {
        TlsSource::Off => return Ok(None),
        TlsSource::SelfSigned => {
            let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| (*n).to_owned()).collect();
            let made = rcgen::generate_simple_self_signed(names)?;
            tracing::info!("ext_proc port: TLS with a self-signed certificate made at start");
            Identity::from_pem(made.cert.pem(), made.signing_key.serialize_pem())
        }
        TlsSource::Files { cert, key } => {
            let read =
                |path: &PathBuf| std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source });
            tracing::info!(cert = %cert.display(), "ext_proc port: TLS with the mounted certificate");
            Identity::from_pem(read(cert)?, read(key)?)
        }
    };
    Ok(Some(ServerTlsConfig::new().identity(identity)))
}
