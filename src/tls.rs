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
    #[error("TLS {what} file {path}: no PEM {what} in it (expected a `-----BEGIN {marker}` block)")]
    NotPem { path: PathBuf, what: &'static str, marker: &'static str },
    #[error("self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The file's bytes when they hold a PEM block whose label ends in `marker` (`CERTIFICATE`,
/// `PRIVATE KEY`): a wrong or empty file is named at start, not found at the first handshake.
fn read_pem(path: &PathBuf, what: &'static str, marker: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let end = format!("{marker}-----");
    if text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&end)) {
        Ok(bytes)
    } else {
        Err(TlsError::NotPem { path: path.clone(), what, marker })
    }
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
            let cert_pem = read_pem(cert, "certificate", "CERTIFICATE")?;
            let key_pem = read_pem(key, "key", "PRIVATE KEY")?;
            tracing::info!(cert = %cert.display(), "ext_proc port: TLS with the mounted certificate");
            Identity::from_pem(cert_pem, key_pem)
        }
    };
    Ok(Some(ServerTlsConfig::new().identity(identity)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_the_pem_block_is_named_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).expect("certificate");
        let (cert, key, junk) = (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("j.pem"));
        std::fs::write(&cert, made.cert.pem()).expect("write");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write");
        std::fs::write(&junk, "not a certificate").expect("write");
        assert!(server_config(&TlsSource::Files { cert: cert.clone(), key: key.clone() }).is_ok());
        // A key where the certificate belongs, and junk where the key belongs: each named.
        let e = server_config(&TlsSource::Files { cert: key.clone(), key: key.clone() }).expect_err("refused");
        assert!(e.to_string().contains("certificate") && e.to_string().contains("k.pem"), "{e}");
        let e = server_config(&TlsSource::Files { cert, key: junk }).expect_err("refused");
        assert!(e.to_string().contains("PRIVATE KEY") && e.to_string().contains("j.pem"), "{e}");
    }
}
