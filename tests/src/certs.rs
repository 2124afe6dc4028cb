//! Certificates made at test time (rcgen): a CA that signs server and client leaves for `localhost` / 127.0.0.1,
//! for the tests of TLS, mTLS and certificate rotation.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's certificate (`serverAuth`).
    Server,
    /// A client's certificate for mTLS (`clientAuth`).
    Client,
}

/// A CA that signs server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        Self { issuer: CertifiedIssuer::self_signed(params, key).expect("a self-signed CA") }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// `(certificate PEM, key PEM)` of a leaf named `name` for `localhost` / 127.0.0.1.
    pub fn leaf(&self, name: &str, usage: Usage) -> (String, String) {
        self.sign(name, usage, |_| {})
    }

    /// A leaf like [`Ca::leaf`] that expired long ago (valid during 2020 only).
    pub fn expired_leaf(&self, name: &str, usage: Usage) -> (String, String) {
        self.sign(name, usage, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn sign(&self, name: &str, usage: Usage, adjust: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        adjust(&mut params);
        let key = KeyPair::generate().expect("a leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("a signed leaf");
        (cert.pem(), key.serialize_pem())
    }
}
