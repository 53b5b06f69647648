//! Configuration errors that teach: the raw messages of serde and the
//! `config` crate, rewritten to list what would be valid, to say when a
//! value came from the environment, and warnings for environment variables
//! that look like overrides but are not.

use std::collections::BTreeMap;

use super::{ConfigError, ENV_PREFIX};

/// The valid values of every enum a configuration value can name, by the
/// type name the `config` crate reports.
const ENUMS: &[(&str, &str)] = &[
    ("AggregateFunction", "\"count\", \"sum\", \"min\", \"max\", \"avg\", \"distinct_count\", \"first\", \"last\""),
    ("LateAction", "\"drop\", \"dead_letter\", \"amend\""),
    ("TtlFrom", "\"write\", \"window_end\""),
    ("ChangeMode", "\"every\", \"final\""),
    ("Tolerance", "\"all\", \"none\""),
    ("Format", "\"json\""),
    ("TimeFormat", "\"epoch_millis\", \"epoch_seconds\", \"rfc3339\""),
];

const DURATIONS: &str = "write a duration as a number and a unit, e.g. \"500ms\", \"10s\", \"5m\", \"2h\", \"7days\"";

/// Environment variables of regionflow's own that are not overrides.
const NOT_OVERRIDES: &[&str] = &["REGIONFLOW_LOG_FORMAT"];

/// `error` with what would be valid, and where the value came from.
pub(super) fn explain(error: ConfigError, env: &BTreeMap<String, String>) -> ConfigError {
    let ConfigError::Invalid { key, message } = error else { return error };
    // The config crate repeats the key at the end of its messages.
    let message = message.strip_suffix(&format!(" for key `{key}`")).unwrap_or(&message).to_string();
    let mut message = if let Some((name, valid)) =
        ENUMS.iter().find(|(name, _)| message.contains(&format!("enum {name} does not have variant constructor")))
    {
        let given = message.rsplit("variant constructor ").next().unwrap_or_default();
        let _ = name;
        format!("unknown value \"{given}\"; valid values are {valid}")
    } else if message.contains("expected a duration") {
        format!("{message}; {DURATIONS}")
    } else {
        message
    };
    if let Some(variable) = override_of(&key, env) {
        message.push_str(&format!(" (the value comes from the environment variable {variable})"));
    }
    ConfigError::Invalid { key, message }
}

/// The environment variable that overrides `key` (or a key under it), if set.
fn override_of(key: &str, env: &BTreeMap<String, String>) -> Option<String> {
    let wanted = format!("{ENV_PREFIX}__{}", key.replace('.', "__")).to_ascii_uppercase();
    env.keys().find(|name| name.to_ascii_uppercase().starts_with(&wanted)).cloned()
}

/// Environment variables that start like an override but are not one
/// (`REGIONFLOW_KAFKA__BROKERS`: one underscore after the prefix), which
/// the loader ignores.
pub fn ignored_lookalikes(env: &BTreeMap<String, String>) -> Vec<String> {
    env.keys()
        .filter(|name| {
            let upper = name.to_ascii_uppercase();
            upper.starts_with(ENV_PREFIX)
                && !upper.starts_with(&format!("{ENV_PREFIX}__"))
                && upper.contains("__")
                && !NOT_OVERRIDES.contains(&upper.as_str())
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(key: &str, message: &str) -> ConfigError {
        ConfigError::Invalid { key: key.into(), message: message.into() }
    }

    #[test]
    fn enum_errors_list_the_valid_values() {
        let error = explain(
            invalid(
                "pipelines.p.aggregates.n.function",
                "enum AggregateFunction does not have variant constructor median for key `pipelines.p.aggregates.n.function`",
            ),
            &BTreeMap::new(),
        );
        let text = error.to_string();
        assert!(text.contains("unknown value \"median\""), "{text}");
        assert!(text.contains("\"distinct_count\""), "{text}");
        assert!(!text.contains("variant constructor"), "{text}");
    }

    #[test]
    fn durations_say_the_accepted_forms_and_the_environment_is_named() {
        let env = BTreeMap::from([("REGIONFLOW__CONNECTOR__FLUSH_INTERVAL".to_string(), "fast".to_string())]);
        let error =
            explain(invalid("connector.flush_interval", "invalid value: string \"fast\", expected a duration"), &env);
        let text = error.to_string();
        assert!(text.contains("\"500ms\""), "{text}");
        assert!(text.contains("environment variable REGIONFLOW__CONNECTOR__FLUSH_INTERVAL"), "{text}");
    }

    #[test]
    fn single_underscore_lookalikes_are_found() {
        let env: BTreeMap<String, String> = [
            ("REGIONFLOW_KAFKA__BROKERS", "x"),
            ("REGIONFLOW__KAFKA__BROKERS", "x"),
            ("REGIONFLOW_LOG_FORMAT", "json"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(ignored_lookalikes(&env), ["REGIONFLOW_KAFKA__BROKERS"]);
    }
}
