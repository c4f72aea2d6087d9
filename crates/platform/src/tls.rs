//! TLS inside the mesh. One private CA signs a certificate per service (and
//! one for Envoy, one for operators); each service is configured with its
//! own certificate and key and the CA (`TLS_CERT_FILE`, `TLS_KEY_FILE`,
//! `TLS_CA_FILE`: all three, or none for plaintext on loopback in tests).
//!
//! With TLS on:
//! - the gRPC port accepts only clients with a certificate the CA signed
//!   (mutual TLS: Envoy, operators, other services);
//! - the HTTP side port (JWKS, health, metrics) is served over TLS without
//!   asking for a client certificate: what it serves is public (public keys,
//!   counters), and what matters is that its clients know it is the real one;
//! - the JWKS is fetched over HTTPS only, trusting this CA alone, with the
//!   service's own certificate presented.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::Env;

/// A service's certificate, key and the CA it trusts, as PEM.
#[derive(Clone)]
pub struct Tls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

/// Longest a TLS handshake on the side port may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The variables `Tls::from_env` reads.
pub const ENV_VARS: [&str; 3] = ["TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"];

impl Tls {
    /// From `TLS_CERT_FILE`, `TLS_KEY_FILE` and `TLS_CA_FILE`: all three (TLS
    /// on) or none (plaintext). Some but not all is an error, never a silent
    /// fall back to plaintext.
    pub fn from_env(env: &impl Env) -> Result<Option<Arc<Self>>> {
        let vars = ENV_VARS;
        let paths: Vec<Option<String>> = vars.iter().map(|v| env.var(v)).collect();
        match paths.as_slice() {
            [None, None, None] => Ok(None),
            [Some(cert), Some(key), Some(ca)] => Ok(Some(Arc::new(Self::from_files(cert, key, ca)?))),
            _ => bail!("TLS needs all of {} or none of them", vars.join(", ")),
        }
    }

    pub fn from_files(cert: &str, key: &str, ca: &str) -> Result<Self> {
        let read = |path: &str| std::fs::read(path).with_context(|| format!("failed to read {path}"));
        let tls = Self::from_pem(read(cert)?, read(key)?, read(ca)?);
        // Refuse unusable files at start, not at the first connection.
        tls.server_config(None).context("TLS certificate, key or CA unusable")?;
        Ok(tls)
    }

    pub fn from_pem(cert: Vec<u8>, key: Vec<u8>, ca: Vec<u8>) -> Self {
        Self { cert, key, ca }
    }

    /// The gRPC server's TLS: this service's identity, and only clients
    /// with a certificate from the CA.
    pub fn grpc_server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// A gRPC client's TLS towards `domain` (a name in the server's
    /// certificate), presenting this identity.
    pub fn grpc_client(&self, domain: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(domain)
    }

    /// An HTTPS-only client that trusts this CA alone and presents this
    /// identity (the JWKS fetch).
    pub fn https_client(&self, timeout: Duration) -> Result<reqwest::Client> {
        let mut identity = self.key.clone();
        identity.extend_from_slice(&self.cert);
        Ok(reqwest::Client::builder()
            .timeout(timeout)
            .https_only(true)
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca).context("TLS CA is not PEM")?)
            .identity(reqwest::Identity::from_pem(&identity).context("TLS certificate or key is not PEM")?)
            .build()?)
    }

    fn server_config(&self, alpn: Option<&[u8]>) -> Result<rustls::ServerConfig> {
        let certs = CertificateDer::pem_slice_iter(&self.cert).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(ca?)?;
        }
        if roots.is_empty() {
            bail!("the CA file holds no certificate");
        }
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
        Ok(config)
    }

    /// A listener for axum that hands out connections once their TLS
    /// handshake is done. Handshakes run concurrently, each bounded in time,
    /// so a client that never finishes one holds up nobody.
    pub fn http_listener(&self, listener: TcpListener) -> Result<TlsListener> {
        let acceptor = TlsAcceptor::from(Arc::new(self.server_config(Some(b"http/1.1"))?));
        let local_addr = listener.local_addr()?;
        let (done, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local_addr, accepting })
    }
}

/// Whether the certificate `der` is valid for the DNS name `name` (its
/// subject alternative names): how a server tells which peer it talks to.
pub fn certificate_names(der: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(name) else { return false };
    webpki::EndEntityCert::try_from(der).is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task never ends while we hold the listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn some_but_not_all_tls_files_is_an_error_not_plaintext() {
        let none: HashMap<&str, &str> = HashMap::new();
        assert!(Tls::from_env(&none).unwrap().is_none());
        let partial: HashMap<&str, &str> = HashMap::from([("TLS_CERT_FILE", "/x.pem")]);
        let err = Tls::from_env(&partial).unwrap_err().to_string();
        assert!(err.contains("TLS_KEY_FILE"), "{err}");
    }
}
