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

    /// The group key back from a rendered entry key (without the
    /// `<prefix>:<region>:` in front), given the window the entry holds;
    /// `None` when `rendered` is not this template's rendering for that
    /// window. Everything but the key is known (literals, window bounds),
    /// so the key is what remains: its length is the rest divided among
    /// the `{key}` placeholders, and where `{key}` appears twice both copies
    /// must agree.
    pub fn key_of(&self, rendered: &str, start: Millis, end: Millis) -> Option<String> {
        fn known<'s>(part: &'s Part, start: &'s str, end: &'s str) -> Option<&'s str> {
            match part {
                Part::Literal(s) => Some(s),
                Part::WindowStart => Some(start),
                Part::WindowEnd => Some(end),
                Part::Key => None,
            }
        }
        let (start, end) = (start.to_string(), end.to_string());
        let copies = self.parts.iter().filter(|p| **p == Part::Key).count();
        let known_len: usize = self.parts.iter().filter_map(|p| known(p, &start, &end)).map(str::len).sum();
        let key_len = rendered.len().checked_sub(known_len)?;
        if copies == 0 || key_len % copies != 0 {
            return None;
        }
        let key_len = key_len / copies;
        let (mut rest, mut key) = (rendered, None);
        for part in &self.parts {
            match known(part, &start, &end) {
                Some(text) => rest = rest.strip_prefix(text)?,
                None => {
                    let copy = rest.get(..key_len)?;
                    if key.is_some_and(|k| k != copy) {
                        return None;
                    }
                    key = Some(copy);
                    rest = &rest[key_len..];
                }
            }
        }
        key.filter(|_| rest.is_empty()).map(str::to_string)
    }

    /// The text every rendered entry key of a group key starting with
    /// `key_prefix` begins with: the template's leading literal, then
    /// `key_prefix` itself when the template's first placeholder is
    /// `{key}`. A scan can match on it; it does not decide membership
    /// (an entry of key `a:b` starts with the text for key `a:` too).
    pub fn rendered_prefix(&self, key_prefix: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Key => {
                    out.push_str(key_prefix);
                    break;
                }
                Part::WindowStart | Part::WindowEnd => break,
            }
        }
        out
    }

    /// Whether rendering needs the window's end (`{window_end}`), which
    /// for session windows only the entry itself knows.
    pub fn uses_window_end(&self) -> bool {
        self.parts.contains(&Part::WindowEnd)
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
    use proptest::prelude::*;

    use super::*;

    fn render(t: &KeyTemplate, key: &str, start: Millis, end: Millis) -> String {
        let mut out = String::new();
        t.render_into(&mut out, key, start, end);
        out
    }

    #[test]
    fn the_key_is_what_the_template_and_window_leave() {
        let t = KeyTemplate::parse("user:{key}:{window_start}-{window_end}").unwrap();
        assert_eq!(t.key_of("user:u1:10-20", 10, 20).as_deref(), Some("u1"));
        assert_eq!(t.key_of("user:a:b:10-20", 10, 20).as_deref(), Some("a:b"));
        assert_eq!(t.key_of("user::10-20", 10, 20).as_deref(), Some(""));
        assert_eq!(t.key_of("user:u1:10-20", 10, 30).as_deref(), None, "another window");
        assert_eq!(t.key_of("usr:u1:10-20", 10, 20).as_deref(), None, "another literal");
        assert_eq!(t.key_of("user:10-2", 10, 20).as_deref(), None, "too short");

        let twice = KeyTemplate::parse("{key}:{key}:{window_end}").unwrap();
        assert_eq!(twice.key_of("ab:ab:5", 0, 5).as_deref(), Some("ab"));
        assert_eq!(twice.key_of("ab:cd:5", 0, 5).as_deref(), None, "the copies differ");
        assert_eq!(twice.key_of("abc:ab:5", 0, 5).as_deref(), None, "no even split");

        let negative = KeyTemplate::parse("{window_start}/{key}").unwrap();
        assert_eq!(negative.key_of("-1000/k/1", -1000, 0).as_deref(), Some("k/1"));
        // A cut inside a multi-byte character is no key.
        let unicode = KeyTemplate::parse("{key}|{key}:{window_start}").unwrap();
        assert_eq!(unicode.key_of("é|é:1", 1, 2).as_deref(), Some("é"));
        assert_eq!(unicode.key_of("é|:1", 1, 2).as_deref(), None);
    }

    #[test]
    fn rendered_prefix_stops_at_the_first_window_placeholder() {
        let key_first = KeyTemplate::parse("{key}:{window_start}").unwrap();
        assert_eq!(key_first.rendered_prefix("u4"), "u4");
        let literal_first = KeyTemplate::parse("user:{key}:{window_start}").unwrap();
        assert_eq!(literal_first.rendered_prefix("u4"), "user:u4");
        let window_first = KeyTemplate::parse("w{window_start}/{key}").unwrap();
        assert_eq!(window_first.rendered_prefix("u4"), "w");
        assert!(!key_first.uses_window_end());
        assert!(KeyTemplate::parse("{key}:{window_end}").unwrap().uses_window_end());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Whatever the key (colons, digits, minus signs, unicode, empty)
        /// and window, rendering then reading back gives the key.
        #[test]
        fn key_of_inverts_render(
            key in prop_oneof![
                "[a-z0-9:{}_-]{0,12}",
                "\\PC{0,8}",
                Just(String::new()),
                "[0-9]{1,6}",
                ":[0-9]{1,3}:",
            ],
            start in any::<i32>().prop_map(i64::from),
            length in 1i64..10_000_000,
            template in prop::sample::select(vec![
                "{key}:{window_start}",
                "{key}:{window_start}:{window_end}",
                "u:{key}|{window_start}-{window_end}",
                "{window_start}/{key}",
                "{window_end}:{key}:{window_start}",
                "{key}:{key}:{window_end}",
                "x{key}y{window_start}z{key}",
            ]),
        ) {
            let t = KeyTemplate::parse(template).unwrap();
            let end = start + length;
            let rendered = render(&t, &key, start, end);
            prop_assert_eq!(t.key_of(&rendered, start, end), Some(key.clone()));
            prop_assert!(rendered.starts_with(&t.rendered_prefix(&key)));
        }
    }

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
