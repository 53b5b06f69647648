//! `[redis]` security settings: TLS files and the ACL user, checked once at
//! load so that a missing file or a `redis://` seed with TLS settings is
//! refused with its key instead of failing at the first connection.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ConfigError, RedisConfig};

/// `redis.tls`: how regionflow verifies the servers and identifies itself.
/// Needs `rediss://` seed nodes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM bundle of the CAs the servers' certificates must chain to;
    /// absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (`tls-auth-clients yes`),
    /// with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM), with `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (self-signed test setups only): the
    /// connection is encrypted but anyone on the path can impersonate Redis.
    #[serde(default)]
    pub danger_accept_invalid_certificates: bool,
}

impl RedisTlsConfig {
    /// The files regionflow reads, with their keys.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("redis.tls.ca_file", &self.ca_file),
            ("redis.tls.cert_file", &self.cert_file),
            ("redis.tls.key_file", &self.key_file),
        ]
        .into_iter()
        .filter_map(|(key, path)| path.as_deref().map(|path| (key, path)))
    }
}

impl RedisConfig {
    /// Refuses TLS settings without `rediss://` seeds, half a client
    /// certificate, unreadable or non-PEM files, and a password given both
    /// here and in the URLs.
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { key: key.into(), message };
        if let Some(tls) = &self.tls {
            if let Some(i) = self.nodes.iter().position(|node| node.starts_with("redis://")) {
                return Err(invalid(
                    "redis.tls",
                    format!(
                        "TLS settings need rediss:// seed nodes, but redis.nodes[{i}] is a plain-text redis:// URL; \
                         use rediss://host:port or remove redis.tls"
                    ),
                ));
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(invalid("redis.tls.key_file", "set it with redis.tls.cert_file (mutual TLS)".into()))
                }
                (None, Some(_)) => {
                    return Err(invalid("redis.tls.cert_file", "set it with redis.tls.key_file (mutual TLS)".into()))
                }
                _ => {}
            }
            for (key, path) in tls.files() {
                let text =
                    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
                if !text.windows(11).any(|w| w == b"-----BEGIN ") {
                    return Err(invalid(key, format!("{} is not a PEM file (no -----BEGIN line)", path.display())));
                }
            }
        }
        let password_in_urls = self.nodes.iter().any(|node| url_has_password(node));
        if self.username.is_some() && self.password.is_none() && !password_in_urls {
            return Err(invalid(
                "redis.password",
                "set it with redis.username (Redis ACL users log in with both)".into(),
            ));
        }
        if self.password.is_some() && password_in_urls {
            if let Some(i) = self.nodes.iter().position(|node| url_has_password(node)) {
                return Err(invalid(
                    "redis.password",
                    format!("redis.nodes[{i}] carries a password too; give it in one place"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a URL's user info holds a password (`redis://user:pw@host`).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .and_then(|(user_info, _)| user_info.split_once(':'))
        .is_some_and(|(_, password)| !password.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_recognised() {
        assert!(url_has_password("rediss://app:pw@h:1"));
        assert!(url_has_password("redis://:pw@h:1/0"));
        assert!(!url_has_password("redis://app@h:1"));
        assert!(!url_has_password("rediss://h:1"));
    }
}
