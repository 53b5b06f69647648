//! Redis over TLS for tests: the certificates and the ACL user of a
//! TLS-only Redis Cluster with mutual TLS (`RedisCluster::start_tls`), the
//! redis-server and redis-cli arguments that set it up, and clients and
//! regionflow settings that reach it.
//!
//! The nodes disable the `default` user, so every client (regionflow, the
//! harness, redis-cli, replicas through `masteruser`) authenticates as
//! [`USER`]; the password is random per cluster, so a test can require that
//! it appears in no message.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{ClientTlsConfig, TlsCertificates};

use super::certs::{self, Certificates};

/// The ACL user regionflow and the harness connect as.
pub const USER: &str = "app";

pub struct RedisTls {
    pub certs: Certificates,
    /// The client certificate regionflow and the harness present.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The nodes' own client certificate, for the cluster bus and
    /// replication (with `tls-auth-clients yes` nodes verify each other).
    node_cert: PathBuf,
    node_key: PathBuf,
    pub password: String,
}

impl RedisTls {
    /// Issues a CA, a server certificate for 127.0.0.1 and two client
    /// certificates in `dir`, and picks a random password.
    pub fn issue(dir: &Path) -> RedisTls {
        let certs = certs::issue(dir);
        let (client_cert, client_key) = certs::issue_client(dir, &certs, "regionflow", 3);
        let (node_cert, node_key) = certs::issue_client(dir, &certs, "redis-node", 4);
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let password = format!("pw-{:016x}", hasher.finish());
        RedisTls { certs, client_cert, client_key, node_cert, node_key, password }
    }

    /// redis-server arguments: TLS only, on `port` (its cluster bus on
    /// `port` + 10000), client certificates required, and the ACL user.
    pub fn server_args(&self, port: u16) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut arg = |name: &str, values: &[&OsString]| {
            args.push(format!("--{name}").into());
            args.extend(values.iter().map(|v| (*v).clone()));
        };
        let os = |s: &str| OsString::from(s);
        let path = |p: &Path| p.as_os_str().to_owned();
        arg("port", &[&os("0")]);
        arg("tls-port", &[&os(&port.to_string())]);
        arg("tls-cert-file", &[&path(&self.certs.server_cert)]);
        arg("tls-key-file", &[&path(&self.certs.server_key)]);
        arg("tls-client-cert-file", &[&path(&self.node_cert)]);
        arg("tls-client-key-file", &[&path(&self.node_key)]);
        arg("tls-ca-cert-file", &[&path(&self.certs.ca)]);
        arg("tls-auth-clients", &[&os("yes")]);
        arg("tls-cluster", &[&os("yes")]);
        arg("tls-replication", &[&os("yes")]);
        let password = os(&format!(">{}", self.password));
        arg("user", &[&os("default"), &os("off")]);
        arg("user", &[&os(USER), &os("on"), &password, &os("~*"), &os("&*"), &os("+@all")]);
        arg("masteruser", &[&os(USER)]);
        arg("masterauth", &[&os(&self.password)]);
        args
    }

    /// redis-cli arguments for TLS and the user; the password goes in the
    /// `REDISCLI_AUTH` environment variable ([`Self::cli_env`]).
    pub fn cli_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--tls".into(), "--cacert".into(), self.certs.ca.clone().into()];
        args.extend(["--cert".into(), self.client_cert.clone().into(), "--key".into(), self.client_key.clone().into()]);
        args.extend(["--user".into(), USER.into()]);
        args
    }

    pub fn cli_env(&self) -> (&'static str, &str) {
        ("REDISCLI_AUTH", &self.password)
    }

    /// The CA and the client certificate, as redis-rs takes them.
    pub fn certificates(&self) -> TlsCertificates {
        let read = |path: &Path| std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        TlsCertificates {
            client_tls: Some(ClientTlsConfig {
                client_cert: read(&self.client_cert),
                client_key: read(&self.client_key),
            }),
            root_cert: Some(read(&self.certs.ca)),
        }
    }

    /// A client for one node (the harness's own checks).
    pub fn node_client(&self, port: u16) -> redis::RedisResult<redis::Client> {
        redis::Client::build_with_tls(
            format!("rediss://{USER}:{}@127.0.0.1:{port}", self.password),
            self.certificates(),
        )
    }

    /// A cluster client, to read regions back.
    pub fn cluster_client(&self, urls: &[String]) -> ClusterClient {
        ClusterClientBuilder::new(urls.to_vec())
            .username(USER)
            .password(&self.password)
            .certs(self.certificates())
            .build()
            .expect("TLS cluster client")
    }

    /// `[redis]` keys for regionflow: the user, the password and mutual TLS.
    pub fn settings_toml(&self) -> String {
        format!(
            "username = \"{USER}\"\npassword = \"{}\"\n\
             tls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\n",
            self.password,
            self.certs.ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}
