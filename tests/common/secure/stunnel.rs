//! stunnel (Debian's `stunnel4`) terminating TLS on one loopback port and
//! forwarding the plaintext to a broker on another.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::certs::Certificates;

pub struct Stunnel {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Stunnel {
    /// Accepts TLS on 127.0.0.1:`accept` with the server certificate and
    /// forwards to 127.0.0.1:`connect`.
    pub fn start(dir: &Path, accept: u16, connect: u16, certs: &Certificates) -> Stunnel {
        let config = dir.join(format!("stunnel-{accept}.conf"));
        let log = dir.join(format!("stunnel-{accept}.log"));
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{accept}\n\
                 connect = 127.0.0.1:{connect}\ncert = {cert}\nkey = {key}\n",
                cert = certs.server_cert.display(),
                key = certs.server_key.display(),
            ),
        )
        .expect("write the stunnel configuration");
        let output = std::fs::File::create(&log).expect("create the stunnel log");
        let child = program()
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start stunnel ({e}): run scripts/setup-test-deps.sh (Debian package stunnel4)")
            });
        let stunnel = Stunnel { child, port: accept, log };
        super::wait_for_port(accept, Duration::from_secs(10), "stunnel", || super::tail(&stunnel.log));
        stunnel
    }

    pub fn log(&self) -> String {
        super::tail(&self.log)
    }
}

/// Debian installs the program as `stunnel4` (and `stunnel`, as an
/// alternative); other systems as `stunnel`.
fn program() -> Command {
    let found = ["stunnel4", "stunnel"]
        .into_iter()
        .find(|name| Command::new(name).arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok());
    Command::new(found.unwrap_or("stunnel4"))
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("stunnel log (test panicked):\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
