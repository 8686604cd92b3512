//! Throwaway test PKI: a certificate authority generated per test run and leaf certificates
//! signed by it, written as PEM files for PostgreSQL, the gateway and clients to load.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Paths of the PEM files written for one leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFiles {
    /// The leaf certificate (PEM, only the leaf, not the chain).
    pub cert: PathBuf,
    /// The leaf's PKCS#8 private key (PEM), created with mode 0600.
    pub key: PathBuf,
}

/// A certificate authority that lives for the duration of a test run.
///
/// The CA certificate is written to `<dir>/ca.pem`; its private key is kept in memory only.
pub struct TestCa {
    dir: PathBuf,
    ca_pem: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// Creates a new CA and writes its certificate to `<dir>/ca.pem`; `dir` is created if
    /// missing.
    pub fn new(dir: &Path) -> TestCa {
        fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create CA directory {}: {e}", dir.display()));
        let key = KeyPair::generate().expect("generating the CA key pair");
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name("pgveil test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let cert = params
            .self_signed(&key)
            .expect("self-signing the CA certificate");
        let cert_pem = cert.pem();
        let ca_pem = dir.join("ca.pem");
        write_file(&ca_pem, cert_pem.as_bytes(), 0o644);
        TestCa {
            dir: dir.to_path_buf(),
            ca_pem,
            cert_pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// Directory holding `ca.pem` and the leaf files issued by this CA.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the CA certificate PEM file (use as a client's root of trust).
    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem
    }

    /// The CA certificate in PEM form.
    pub fn ca_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate signed by this CA and writes `<dir>/<name>.pem` and
    /// `<dir>/<name>.key` (mode 0600).
    ///
    /// Each entry of `sans` becomes an IP address SAN when it parses as an IPv4 or IPv6
    /// address (brackets around IPv6 are accepted), and a DNS name SAN otherwise. The
    /// first SAN, or `name` when `sans` is empty, is used as the subject common name. The
    /// certificate carries the serverAuth extended key usage.
    pub fn issue_leaf(&self, name: &str, sans: &[&str]) -> LeafFiles {
        assert!(
            !name.is_empty() && !name.contains('/') && !name.starts_with('.'),
            "leaf name must be a plain file stem, got {name:?}"
        );
        let key = KeyPair::generate().expect("generating a leaf key pair");
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(sans.first().copied().unwrap_or(name));
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| panic!("signing leaf {name:?} with the test CA: {e}"));
        let files = LeafFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        write_file(&files.cert, cert.pem().as_bytes(), 0o644);
        write_file(&files.key, key.serialize_pem().as_bytes(), 0o600);
        files
    }
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn set_validity(params: &mut CertificateParams) {
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 12, 31);
}

fn san(entry: &str) -> SanType {
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            entry
                .try_into()
                .unwrap_or_else(|e| panic!("SAN {entry:?} is not a valid DNS name: {e}")),
        ),
    }
}

/// Writes `data` to `path`, creating or truncating it, and leaves it with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()));
    // `mode` only applies on creation; enforce it when the file already existed.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot set mode {mode:o} on {}: {e}", path.display()));
    file.write_all(data)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
