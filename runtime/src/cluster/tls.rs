//! Mutual TLS between nodes: a cluster CA, one certificate per node naming its node id, and
//! the acceptor and connector the cluster port uses.
//!
//! Every cluster connection, both ways, is TLS 1.3 (or 1.2) with certificates checked against
//! the cluster's CA: a node dials a peer expecting the peer's id in its certificate, and
//! accepts only peers that present a certificate of the CA. A peer is who its certificate
//! says: the id it then claims in ractor_cluster's handshake must be a name of that
//! certificate, or the membership actor closes the session (`Identities`).
//!
//! `node certs` writes, into one directory: `ca.pem`, `ca.key` (keep it out of the nodes'
//! reach in production), and `<id>.pem` / `<id>.key` per node; `[cluster.tls] dir` points a
//! node at it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use crate::error::{Result, RuntimeError};

/// A node's TLS material, ready to accept and to dial.
#[derive(Clone)]
pub struct ClusterTls {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    /// For seeds, whose node id is not known before the handshake: any certificate of the
    /// CA; the id the peer then claims is checked against it (`Identities`).
    any_node: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ClusterTls")
    }
}

fn tls_error(what: &str, error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Config(format!("cluster TLS: {what}: {error}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl ClusterTls {
    /// Loads `ca.pem`, `<node>.pem` and `<node>.key` from `directory`.
    pub fn load(directory: &Path, node: &str) -> Result<Self> {
        let read = |name: &str| {
            std::fs::read(directory.join(name)).map_err(|error| {
                tls_error(
                    &format!("cannot read {name} in `cluster.tls.dir`"),
                    format!("{error} (create the files with `node certs`)"),
                )
            })
        };
        let ca = CertificateDer::from_pem_slice(&read("ca.pem")?)
            .map_err(|error| tls_error("ca.pem", error))?;
        let chain = CertificateDer::pem_slice_iter(&read(&format!("{node}.pem"))?)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|error| tls_error(&format!("{node}.pem"), error))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&format!("{node}.key"))?)
            .map_err(|error| tls_error(&format!("{node}.key"), error))?;
        Self::new(ca, chain, key)
    }

    pub fn new(
        ca: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca)
            .map_err(|error| tls_error("the CA certificate", error))?;
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|error| tls_error("client verifier", error))?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| tls_error("protocol versions", error))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| tls_error("the node's certificate or key", error))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| tls_error("protocol versions", error))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|error| tls_error("the node's certificate or key", error))?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|error| tls_error("server verifier", error))?;
        let any_node = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| tls_error("protocol versions", error))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyNodeOfTheCa(webpki)))
            .with_client_auth_cert(chain, key)
            .map_err(|error| tls_error("the node's certificate or key", error))?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            any_node: tokio_rustls::TlsConnector::from(Arc::new(any_node)),
        })
    }

    /// The server side of a handshake; returns the stream and the client's certificate.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(
        tokio_rustls::server::TlsStream<TcpStream>,
        CertificateDer<'static>,
    )> {
        let stream = self.acceptor.accept(stream).await?;
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|certificate| certificate.clone().into_owned())
            .ok_or_else(|| std::io::Error::other("the peer presented no certificate"))?;
        Ok((stream, certificate))
    }

    /// The client side of a handshake with the node `peer`, whose certificate must name it.
    pub async fn connect(
        &self,
        stream: TcpStream,
        peer: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(peer.to_string()).map_err(|error| {
            std::io::Error::other(format!("{peer:?} is not a certificate name: {error}"))
        })?;
        self.connector.connect(name, stream).await
    }
}

impl ClusterTls {
    /// The client side of a handshake with a seed: any node certificate of the CA.
    pub async fn connect_any(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from("seed")
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        self.any_node.connect(name, stream).await
    }
}

/// Verifies a server's chain against the CA and its signatures, but not its name: used to
/// dial seeds, whose ids are not known yet; the membership actor then checks the id the peer
/// claims against its certificate, as for every connection.
#[derive(Debug)]
struct AnyNodeOfTheCa(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyNodeOfTheCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked after the chain: a name mismatch means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls12_signature(message, certificate, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0
            .verify_tls13_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether `certificate` (already checked against the CA) names `node`.
pub fn certificate_names(certificate: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(name) = ServerName::try_from(node) else {
        return false;
    };
    webpki::EndEntityCert::try_from(certificate)
        .is_ok_and(|certificate| certificate.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The certificates of the cluster connections whose handshake has not been checked yet, by
/// the label ractor_cluster reports them under. The membership actor takes a connection's
/// certificate when its session is ready and compares it with the name the peer claims.
#[derive(Clone, Default)]
pub struct Identities {
    certificates: Arc<Mutex<HashMap<String, CertificateDer<'static>>>>,
}

impl Identities {
    pub fn insert(&self, label: String, certificate: CertificateDer<'static>) {
        self.certificates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(label, certificate);
    }

    /// The certificate of the connection labelled `label`, taken out of the table.
    pub fn take(&self, label: &str) -> Option<CertificateDer<'static>> {
        self.certificates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(label)
    }

    pub fn forget(&self, label: &str) {
        let _ = self.take(label);
    }
}

/// Writes a new cluster CA and a certificate per node id into `directory` (which must not
/// hold a CA already), each node's naming its id and `hosts` (addresses it is reached at).
pub fn generate(directory: &Path, nodes: &[(String, Vec<String>)]) -> Result<()> {
    if directory.join("ca.pem").exists() {
        return Err(tls_error(
            "refusing to overwrite",
            format!(
                "{} holds a CA already: `node certs` adds node certificates signed by it",
                directory.display()
            ),
        ));
    }
    std::fs::create_dir_all(directory).map_err(|error| tls_error("create the directory", error))?;
    let ca_key = rcgen::KeyPair::generate().map_err(|error| tls_error("CA key", error))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|error| tls_error("CA", error))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ActorHub cluster CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key)
        .map_err(|error| tls_error("CA certificate", error))?;
    write_private(
        &directory.join("ca.key"),
        ca.key().serialize_pem().as_bytes(),
    )?;
    write(&directory.join("ca.pem"), ca.pem().as_bytes())?;
    for (node, hosts) in nodes {
        issue(directory, &ca, node, hosts)?;
    }
    Ok(())
}

/// Adds certificates for `nodes` signed by the CA already in `directory`.
pub fn add(directory: &Path, nodes: &[(String, Vec<String>)]) -> Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(directory.join(name))
            .map_err(|error| tls_error(&format!("cannot read {name}"), error))
    };
    let key =
        rcgen::KeyPair::from_pem(&read("ca.key")?).map_err(|error| tls_error("ca.key", error))?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.pem")?, key)
        .map_err(|error| tls_error("ca.pem", error))?;
    for (node, hosts) in nodes {
        issue(directory, &issuer, node, hosts)?;
    }
    Ok(())
}

fn issue(
    directory: &Path,
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    node: &str,
    hosts: &[String],
) -> Result<()> {
    let mut names = vec![node.to_string()];
    names.extend(hosts.iter().cloned());
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|error| tls_error(node, error))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().map_err(|error| tls_error("node key", error))?;
    let certificate = params
        .signed_by(&key, issuer)
        .map_err(|error| tls_error(node, error))?;
    write_private(
        &directory.join(format!("{node}.key")),
        key.serialize_pem().as_bytes(),
    )?;
    write(
        &directory.join(format!("{node}.pem")),
        certificate.pem().as_bytes(),
    )
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|error| tls_error("write", error))
}

/// Writes a key readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| tls_error("write a key", error))?;
    file.write_all(bytes)
        .map_err(|error| tls_error("write a key", error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_node_and_no_other() {
        let directory = tempfile::tempdir().expect("tempdir");
        generate(
            directory.path(),
            &[
                ("n1".into(), vec!["127.0.0.1".into()]),
                ("n2".into(), vec![]),
            ],
        )
        .expect("generated");
        let pem = std::fs::read(directory.path().join("n2.pem")).expect("n2.pem");
        let certificate = CertificateDer::from_pem_slice(&pem).expect("parses");
        assert!(certificate_names(&certificate, "n2"));
        assert!(!certificate_names(&certificate, "n3"));
        ClusterTls::load(directory.path(), "n1").expect("n1 loads");
        assert!(
            generate(directory.path(), &[]).is_err(),
            "never overwrites a CA"
        );
        add(directory.path(), &[("n4".into(), vec![])]).expect("a node added later");
        ClusterTls::load(directory.path(), "n4").expect("n4 loads");
    }
}
