//! A throwaway certificate authority, a server certificate for 127.0.0.1
//! and client certificates, made with the openssl CLI (Debian's `openssl`
//! package): the same files an operator would hand to a broker or a Redis
//! node and to regionflow (`ssl.ca.location`, `redis.tls.ca_file`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certificates {
    /// The CA certificate clients trust (PEM).
    pub ca: PathBuf,
    /// The server certificate, signed by `ca`, for IP 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The CA's private key, to sign client certificates with.
    pub ca_key: PathBuf,
}

/// Issues a CA and a server certificate signed by it, in `dir`.
pub fn issue(dir: &Path) -> Certificates {
    let (ca, ca_key) = self_signed_ca(dir, "test-ca");
    let (server_cert, server_key) = signed(
        dir,
        "server",
        "localhost",
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nextendedKeyUsage = serverAuth\n",
        (&ca, &ca_key),
        2,
    );
    Certificates { ca, server_cert, server_key, ca_key }
}

/// A client certificate (and its key) signed by `certs.ca`, for mutual
/// TLS; `serial` must differ between certificates of one CA.
pub fn issue_client(dir: &Path, certs: &Certificates, name: &str, serial: u32) -> (PathBuf, PathBuf) {
    signed(dir, name, name, "extendedKeyUsage = clientAuth\n", (&certs.ca, &certs.ca_key), serial)
}

/// A certificate for `subject` with `usage` extensions, signed by `ca`
/// (certificate, key); returns the certificate and its key.
fn signed(dir: &Path, name: &str, subject: &str, usage: &str, ca: (&Path, &Path), serial: u32) -> (PathBuf, PathBuf) {
    let (ca, ca_key) = ca;
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let extensions = dir.join(format!("{name}.ext"));
    std::fs::write(
        &extensions,
        format!("basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n{usage}"),
    )
    .expect("write the certificate's extensions");
    let subject = format!("/CN={subject}");
    let serial = serial.to_string();
    openssl(
        &[
            "req".as_ref(),
            "-newkey".as_ref(),
            "rsa:2048".as_ref(),
            "-nodes".as_ref(),
            "-subj".as_ref(),
            subject.as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            csr.as_os_str(),
        ],
        &csr,
    );
    openssl(
        &[
            "x509".as_ref(),
            "-req".as_ref(),
            "-days".as_ref(),
            "2".as_ref(),
            "-set_serial".as_ref(),
            serial.as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            ca.as_os_str(),
            "-CAkey".as_ref(),
            ca_key.as_os_str(),
            "-extfile".as_ref(),
            extensions.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ],
        &cert,
    );
    (cert, key)
}

/// A CA certificate that signed nothing the broker presents: trusting only
/// it must make the TLS handshake fail.
pub fn unrelated_ca(dir: &Path) -> PathBuf {
    self_signed_ca(dir, "unrelated-ca").0
}

/// Returns the CA's certificate and key.
fn self_signed_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let subject = format!("/CN={name}");
    openssl(
        &[
            "req".as_ref(),
            "-x509".as_ref(),
            "-newkey".as_ref(),
            "rsa:2048".as_ref(),
            "-nodes".as_ref(),
            "-days".as_ref(),
            "2".as_ref(),
            "-subj".as_ref(),
            subject.as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ],
        &cert,
    );
    (cert, key)
}

/// Runs `openssl <args>` and checks that it wrote `produces`.
fn openssl(args: &[&OsStr], produces: &Path) {
    let output = Command::new("openssl").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}): run scripts/setup-test-deps.sh (Debian package openssl)")
    });
    assert!(
        output.status.success() && produces.exists(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
