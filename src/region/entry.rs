//! Entry layout: where a window result lives and what the hash holds.
//!
//! An entry is the Redis hash at `<prefix>:<region>:<entry key>`, the entry
//! key rendered from the region's template. Its public fields are
//! `window_start`, `window_end` (epoch millis) and one field per aggregate,
//! readable with a plain `HGETALL`. Underneath, each source partition that
//! contributed keeps its own *partial* in the field `_p:<topic>:<partition>`
//! as JSON `{"e": epoch, "o": offset, "a": [partial per aggregate]}`; the
//! public fields are the merge of all partials, recomputed atomically by
//! `merge.lua` on every write. Rewriting a partial is idempotent, so replay
//! after a failure overwrites instead of adding.

use std::fmt::Write;

use crate::time::Millis;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    WindowStart,
    WindowEnd,
}

/// A parsed entry-key template over `{key}`, `{window_start}`, `{window_end}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

impl KeyTemplate {
    pub fn parse(template: &str) -> Result<KeyTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("unclosed '{{' in \"{template}\""))?;
            parts.push(match &rest[open + 1..open + close] {
                "key" => Part::Key,
                "window_start" => Part::WindowStart,
                "window_end" => Part::WindowEnd,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}}; use {{key}}, {{window_start}} and {{window_end}}"
                    ))
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let has = |p: &Part| parts.contains(p);
        if !has(&Part::Key) || !(has(&Part::WindowStart) || has(&Part::WindowEnd)) {
            return Err(format!(
                "\"{template}\" must contain {{key}} and {{window_start}} or {{window_end}}, so each window of each key has its own entry"
            ));
        }
        check_separated(template, &parts)?;
        Ok(KeyTemplate { parts })
    }

    /// Appends the entry key for one key and window to `out`.
    pub fn render_into(&self, out: &mut String, key: &str, start: Millis, end: Millis) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Key => out.push_str(key),
                Part::WindowStart => {
                    let _ = write!(out, "{start}");
                }
                Part::WindowEnd => {
                    let _ = write!(out, "{end}");
                }
            }
        }
    }
}

/// Refuses templates under which two different (key, window) pairs render
/// the same entry key: `{key}{window_start}` renders key `a1` at 1000 and
/// key `a` at 11000 alike. A `{key}` next to a window placeholder must be
/// separated from it by a literal holding a character no number has (not a
/// digit or `-`); two window placeholders by a literal holding a non-digit.
fn check_separated(template: &str, parts: &[Part]) -> Result<(), String> {
    let placeholders: Vec<(usize, &Part)> =
        parts.iter().enumerate().filter(|(_, p)| !matches!(p, Part::Literal(_))).collect();
    for pair in placeholders.windows(2) {
        let ((i, a), (j, b)) = (pair[0], pair[1]);
        let between: String = parts[i + 1..j]
            .iter()
            .map(|p| match p {
                Part::Literal(s) => s.as_str(),
                _ => "",
            })
            .collect();
        let separated = match (a, b) {
            (Part::Key, Part::Key) => true,
            (Part::Key, _) | (_, Part::Key) => between.chars().any(|c| !c.is_ascii_digit() && c != '-'),
            _ => between.chars().any(|c| !c.is_ascii_digit()),
        };
        if !separated {
            return Err(format!(
                "in \"{template}\", separate adjacent placeholders with a character such as ':' \
                 (e.g. \"{{key}}:{{window_start}}\"), or different keys and windows share one entry"
            ));
        }
    }
    Ok(())
}

/// The hash field holding one source partition's partial.
pub fn partial_field(topic: &str, partition: i32) -> String {
    format!("_p:{topic}:{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_placeholders() {
        let t = KeyTemplate::parse("user:{key}:{window_start}-{window_end}").unwrap();
        let mut out = String::from("rf:views:");
        t.render_into(&mut out, "u1", 10, 20);
        assert_eq!(out, "rf:views:user:u1:10-20");
    }

    #[test]
    fn refuses_unknown_or_ambiguous_templates() {
        assert!(KeyTemplate::parse("{key}:{start}").unwrap_err().contains("unknown placeholder {start}"));
        assert!(KeyTemplate::parse("{key}").unwrap_err().contains("must contain"));
        assert!(KeyTemplate::parse("{key:{window_end}").is_err());
    }

    #[test]
    fn refuses_templates_whose_entries_collide() {
        // The collision the check prevents: "a1" at 1000 and "a" at 11000.
        let render = |t: &KeyTemplate, key: &str, start: Millis| {
            let mut out = String::new();
            t.render_into(&mut out, key, start, start + 10);
            out
        };
        let glued = KeyTemplate { parts: vec![Part::Key, Part::WindowStart] };
        assert_eq!(render(&glued, "a1", 1000), render(&glued, "a", 11000));

        for template in [
            "{key}{window_start}",
            "{window_end}{key}",
            "{key}-{window_start}",
            "{key}12{window_start}",
            "{window_start}{window_end}:{key}",
            "{key}:{window_start}7{window_end}",
        ] {
            let error = KeyTemplate::parse(template).expect_err(template);
            assert!(error.contains("separate adjacent placeholders"), "{template}: {error}");
        }
        for template in [
            "{key}:{window_start}",
            "{window_start}/{key}",
            "u:{key}|{window_start}-{window_end}",
            "{key}:{key}:{window_end}",
        ] {
            assert!(KeyTemplate::parse(template).is_ok(), "{template}");
        }
    }
}
