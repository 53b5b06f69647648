//! A throwaway certificate authority and a server certificate for
//! 127.0.0.1, made with the openssl CLI (Debian's `openssl` package): the
//! same files an operator would hand to a broker and to regionflow's
//! `ssl.ca.location`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Certificates {
    /// The CA certificate clients trust (PEM).
    pub ca: PathBuf,
    /// The server certificate, signed by `ca`, for IP 127.0.0.1 and localhost.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Issues a CA and a server certificate signed by it, in `dir`.
pub fn issue(dir: &Path) -> Certificates {
    let (ca, ca_key) = self_signed_ca(dir, "test-ca");
    let server_key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let server_cert = dir.join("server.pem");
    let extensions = dir.join("server.ext");
    std::fs::write(
        &extensions,
        "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
    )
    .expect("write the server certificate's extensions");
    openssl(
        &[
            "req".as_ref(),
            "-newkey".as_ref(),
            "rsa:2048".as_ref(),
            "-nodes".as_ref(),
            "-subj".as_ref(),
            "/CN=localhost".as_ref(),
            "-keyout".as_ref(),
            server_key.as_os_str(),
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
            "2".as_ref(),
            "-in".as_ref(),
            csr.as_os_str(),
            "-CA".as_ref(),
            ca.as_os_str(),
            "-CAkey".as_ref(),
            ca_key.as_os_str(),
            "-extfile".as_ref(),
            extensions.as_os_str(),
            "-out".as_ref(),
            server_cert.as_os_str(),
        ],
        &server_cert,
    );
    Certificates { ca, server_cert, server_key }
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
