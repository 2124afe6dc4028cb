//! TLS for control's listener (rustls, ring) from PEM files, with optional client certificates (mTLS) verified
//! against a client CA.
//!
//! [`ReloadingTls`] holds the `rustls::ServerConfig` in use and rebuilds it when one of its files changes: new
//! connections get the new certificate, open ones keep theirs. A change that does not load (a half-written file, a
//! key that does not match) is logged and the previous config stays in use, so a botched rotation never takes
//! control down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// The PEM files of control's TLS setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that sign client certificates; enables mTLS. Clients without a certificate may still
    /// connect (admin clients use tokens); the access policy decides what they may call.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }

    /// Reads the files and builds a server config that offers HTTP/2 (gRPC) and HTTP/1.1 by ALPN.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let certs = read_certs(&self.cert).context("the TLS certificate")?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|error| anyhow::anyhow!("cannot read the TLS private key {}: {error}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path).context("the client CA")? {
                    roots.add(cert).with_context(|| format!("the client CA {} is not usable", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .context("cannot build the client certificate verifier")?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).with_context(|| {
            format!("the TLS key {} does not fit the certificate {}", self.key.display(), self.cert.display())
        })?;
        // h2 for gRPC; http/1.1 for scrapers of /metrics, which the listener also serves.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
    Ok(certs)
}

/// A modification stamp of a file: mtime and length (a rewrite within the mtime's granularity still shows).
pub(super) type Stamp = Option<(SystemTime, u64)>;

pub(super) fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().and_then(|metadata| Some((metadata.modified().ok()?, metadata.len())))
}

/// The TLS server config in use, rebuilt when its files change.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Stamp>>,
}

impl ReloadingTls {
    /// Loads the files; fails when they do not make a usable config.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let stamps = files.paths().into_iter().map(stamp).collect();
        let config = files.server_config()?;
        Ok(Arc::new(Self { files, current: RwLock::new(Arc::new(config)), stamps: Mutex::new(stamps) }))
    }

    /// Whether client certificates are verified.
    pub fn verifies_clients(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The config new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Rebuilds the config if a file changed since the last look; true when a new config is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now: Vec<Stamp> = self.files.paths().into_iter().map(stamp).collect();
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if *stamps == now {
                return false;
            }
            *stamps = now;
        }
        match self.files.server_config() {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed; reloaded");
                true
            }
            Err(error) => {
                // Often a rotation caught half-way (cert written, key not yet): the next change retries.
                tracing::error!(
                    error = format!("{error:#}"),
                    "TLS files changed but do not load; keeping the previous certificate"
                );
                false
            }
        }
    }
}
