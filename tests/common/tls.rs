//! A throwaway CA and a serving certificate it signed, for tests that need TLS (the webhook's
//! HTTPS, a registry over HTTPS behind the mirror).

/// A CA and a serving certificate it signed, as PEM.
pub struct Certs {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// A test CA, and a serving certificate for `names` (DNS names or IP addresses).
pub fn certs(names: &[&str]) -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "poolcast test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Certs {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}
