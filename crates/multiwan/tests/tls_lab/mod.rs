//! A TLS test bed shared by the https probe tests: a test CA and server certificates
//! generated at test time (rcgen), and real TLS servers (`openssl s_server -WWW`) in the
//! lab's inet namespace, on server 1 (198.18.0.1).
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use netns_lab::{ChildGuard, Lab};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

pub fn require_openssl() {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "openssl (Debian package openssl) is needed: run scripts/install-deps.sh"
    );
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("multiwan-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test CA's certificate (the probe's `ca_file`) and, for each server, its
/// certificate and key files.
pub struct Pki {
    pub ca_file: PathBuf,
    /// For the site's name, from the test CA.
    pub good: (PathBuf, PathBuf),
    /// For `other.example`, from the test CA.
    pub other_name: (PathBuf, PathBuf),
    /// For the site's name, from a CA nobody trusts.
    pub unknown_ca: (PathBuf, PathBuf),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    file: &str,
    name: &str,
    issuer: &CertifiedIssuer<'_, KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, issuer)
        .unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Certificates for `site` (a host name or an IP address) under `dir`.
pub fn pki(dir: &Path, site: &str) -> Pki {
    let test_ca = ca("multiwan test CA");
    let stranger = ca("someone else's CA");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, test_ca.pem()).unwrap();
    Pki {
        ca_file,
        good: leaf(dir, "good", site, &test_ca),
        other_name: leaf(dir, "other", "other.example", &test_ca),
        unknown_ca: leaf(dir, "stranger", site, &stranger),
    }
}

/// `openssl s_server -WWW` in inet on `port`, serving the files of `root`.
pub fn tls_server(
    lab: &Lab,
    root: &Path,
    port: u16,
    (cert, key): &(PathBuf, PathBuf),
) -> ChildGuard {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(port.to_string())
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = lab.inet().spawn(&mut cmd).unwrap();
    let addr = SocketAddr::new(lab.server(1).into(), port);
    lab.wait_until(
        Duration::from_secs(10),
        "openssl s_server listening",
        || {
            lab.inet()
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
        },
    )
    .unwrap();
    child
}
