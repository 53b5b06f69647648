//! Secrets: where they may come from, and that they are never shown.
//!
//! A value of a librdkafka property, a Redis seed-node URL or
//! `redis.password` may be a reference instead of the secret itself,
//! resolved at load:
//!
//! - `${file:/run/secrets/kafka-password}`: the file's content, without the
//!   trailing newline (Docker and Kubernetes secrets mounted as files);
//! - `${env:KAFKA_PASSWORD}`: an environment variable.
//!
//! References may stand inside a value (`redis://app:${file:/run/pw}@host:6379`).
//! In the environment a librdkafka property is written with `_` for `.`
//! (`REGIONFLOW__KAFKA__PROPERTIES__SASL_PASSWORD` sets `sasl.password`):
//! librdkafka's names have no underscores, so the mapping is unambiguous.
//!
//! [`Settings::redacted`] is what may be printed: every property that holds
//! a secret ([`is_secret_property`]), every password in a URL and
//! `redis.password` replaced. `redis.password` is a [`Secret`], whose
//! `Debug` shows no value either.

use std::collections::BTreeMap;

use super::{ConfigError, Settings};

/// What stands in for a secret wherever settings are shown.
pub const REDACTED: &str = "<redacted>";

/// A secret setting: serialized as is (for [`Settings::redacted`] to
/// replace), debug-printed as [`REDACTED`].
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Whether a librdkafka property holds a secret: every `*.password`, the
/// OAUTHBEARER client secret and configuration, private keys and JAAS
/// configuration (which embeds passwords).
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with("password")
        || name.contains("secret")
        || name == "sasl.oauthbearer.config"
        || name == "sasl.jaas.config"
        || name == "ssl.key.pem"
        || name == "ssl_key"
}

/// `url` with the password of its user info replaced by [`REDACTED`]
/// (`redis://user:pw@host` → `redis://user:<redacted>@host`).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    let user_info = &rest[..at];
    let redacted = match user_info.find(':') {
        Some(colon) => format!("{}:{REDACTED}", &user_info[..colon]),
        None => REDACTED.to_string(),
    };
    format!("{}{redacted}{}", &url[..scheme_end], &rest[at..])
}

/// Replaces every `${file:...}` and `${env:...}` reference in `value`.
fn resolve(value: &str, key: &str, env: &BTreeMap<String, String>) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { key: key.to_string(), message };
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').ok_or_else(|| invalid("an unclosed `${` reference".into()))? + start;
        let reference = &rest[start + 2..end];
        let resolved = if let Some(path) = reference.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| invalid(format!("cannot read the secret file {path}: {e}")))?
        } else if let Some(name) = reference.strip_prefix("env:") {
            env.get(name).cloned().ok_or_else(|| invalid(format!("the environment variable {name} is not set")))?
        } else {
            return Err(invalid(format!("unknown reference `${{{reference}}}`; use ${{file:PATH}} or ${{env:NAME}}")));
        };
        out.push_str(&resolved);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Settings {
    /// Resolves secret references and maps environment-written property
    /// names (`sasl_password`) to librdkafka's (`sasl.password`).
    pub(super) fn resolve_secrets(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let properties = std::mem::take(&mut self.kafka.properties);
        for (name, value) in properties {
            let name = if name.contains('.') { name } else { name.replace('_', ".") };
            let value = resolve(&value, &format!("kafka.properties.{name}"), env)?;
            self.kafka.properties.insert(name, value);
        }
        for (i, node) in self.redis.nodes.iter_mut().enumerate() {
            *node = resolve(node, &format!("redis.nodes[{i}]"), env)?;
        }
        if let Some(password) = &mut self.redis.password {
            *password = Secret(resolve(password.expose(), "redis.password", env)?);
        }
        Ok(())
    }

    /// These settings as they may be shown: secrets replaced by
    /// [`REDACTED`].
    pub fn redacted(&self) -> Settings {
        let mut shown = self.clone();
        for (name, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(name) {
                *value = REDACTED.to_string();
            }
        }
        for node in shown.redis.nodes.iter_mut() {
            *node = redact_url(node);
        }
        if let Some(password) = &mut shown.redis.password {
            *password = Secret::new(REDACTED);
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "ssl.key.pem",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(name), "{name}");
        }
        for name in ["sasl.username", "security.protocol", "ssl.ca.location", "sasl.mechanism"] {
            assert!(!is_secret_property(name), "{name}");
        }
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(redact_url("redis://default:hunter2@10.0.0.1:6379"), "redis://default:<redacted>@10.0.0.1:6379");
        assert_eq!(redact_url("rediss://:hunter2@h:6379/0"), "rediss://:<redacted>@h:6379/0");
        assert_eq!(redact_url("redis://token@h:6379"), "redis://<redacted>@h:6379");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://u:p@ss@h:1"), "redis://u:<redacted>@h:1", "the last @ ends the user info");
    }

    #[test]
    fn references_resolve_from_files_and_the_environment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-a-file\n").expect("written");
        let env = BTreeMap::from([("PW".to_string(), "from-env".to_string())]);
        let value = format!("redis://app:${{file:{}}}@h:1/${{env:PW}}", path.display());
        assert_eq!(resolve(&value, "k", &env).expect("resolves"), "redis://app:from-a-file@h:1/from-env");
        let missing = resolve("${file:/nonexistent/pw}", "kafka.properties.sasl.password", &env).expect_err("missing");
        assert!(missing.to_string().contains("kafka.properties.sasl.password"), "{missing}");
        assert!(resolve("${env:NOPE}", "k", &env).expect_err("unset").to_string().contains("NOPE"));
        assert!(resolve("${vault:x}", "k", &env).expect_err("unknown").to_string().contains("${file:PATH}"));
    }
}
