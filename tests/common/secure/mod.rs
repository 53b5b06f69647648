//! Kafka over TLS for tests: a test CA and a server certificate made with
//! the openssl CLI, and stunnel terminating TLS in front of a real
//! Kafka-protocol broker (tansu) that advertises the TLS address, so every
//! connection a client opens (bootstrap, partition leader, group
//! coordinator) goes through TLS.
//!
//! Why stunnel and not the broker's own TLS: tansu 0.6.0 lists `--cert` and
//! `--key`, but refuses the two together ("cannot be used with"), and with
//! `--cert` alone its listener stays plaintext (it reads the TLS
//! ClientHello as a Kafka frame).

pub mod certs;
pub mod redis_tls;
pub mod stunnel;
pub mod tansu;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use certs::Certificates;
use stunnel::Stunnel;
use tansu::Tansu;

/// A broker reachable only through TLS, with a certificate for 127.0.0.1
/// signed by `certs.ca`.
pub struct TlsKafka {
    // Dropped in this order: the TLS front first, then the broker.
    pub stunnel: Stunnel,
    pub tansu: Tansu,
    pub certs: Certificates,
    /// `host:port` of the TLS listener, for `bootstrap.servers`.
    pub brokers: String,
}

impl TlsKafka {
    /// Starts tansu and stunnel on free loopback ports in `dir`, with the
    /// given topics (name, partitions).
    pub fn start(dir: &Path, topics: &[(&str, i32)]) -> TlsKafka {
        let certs = certs::issue(dir);
        let tls_port = free_port();
        let tansu = Tansu::start(dir, tls_port);
        for (name, partitions) in topics {
            tansu.create_topic(name, *partitions);
        }
        let stunnel = Stunnel::start(dir, tls_port, tansu.port, &certs);
        TlsKafka { stunnel, tansu, certs, brokers: format!("127.0.0.1:{tls_port}") }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("cannot bind a free loopback port").port()
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`;
/// panics with `what` and `log()` after `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration, what: &str, log: impl Fn() -> String) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < timeout,
            "{what} did not listen on 127.0.0.1:{port} within {timeout:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
