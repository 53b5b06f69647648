//! Entries read back: a hash as `HGETALL` returns it, turned into the
//! [`Change`] the change feed would carry for it, and the selections the
//! `region get` and `region scan` commands make.
//!
//! Only hashes holding `window_start` and `window_end` whose key is the
//! region template's rendering for that window are entries. Anything else
//! under the region's prefix is skipped: the tombstone a deleted entry
//! leaves behind (a hash holding only its version and fences), or keys
//! regionflow did not write. The group key is read back from the entry key
//! with [`KeyTemplate::key_of`]. Public fields are those not starting with
//! `_`; the hidden ones are the partials (`_p:<topic>:<partition>`), the
//! fences retractions leave (`_f:<topic>:<partition>`) and the version
//! (`_v`, [`VERSION_FIELD`]; 0 when the region has no change feed).

use std::sync::Arc;

use super::change::{Change, ChangeOp, VERSION_FIELD};
use super::KeyTemplate;
use crate::time::Millis;

/// Where a region's entries live and how their keys are made.
#[derive(Debug, Clone)]
pub struct RegionKeys {
    /// `<key_prefix>:<region>:`
    prefix: String,
    template: KeyTemplate,
}

/// An entry as stored: the change that states it, and its partials.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    /// An upsert at the entry's version, with its public fields.
    pub change: Change,
    /// `_p:<topic>:<partition>` fields and their JSON, in `HGETALL` order.
    pub partials: Vec<(String, String)>,
}

impl RegionKeys {
    pub fn new(key_prefix: &str, region: &str, template: KeyTemplate) -> RegionKeys {
        RegionKeys { prefix: format!("{key_prefix}:{region}:"), template }
    }

    /// `<key_prefix>:<region>:`, the start of every entry key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn template(&self) -> &KeyTemplate {
        &self.template
    }

    /// The full Redis key of one entry.
    pub fn entry_key(&self, key: &str, start: Millis, end: Millis) -> String {
        let mut out = self.prefix.clone();
        self.template.render_into(&mut out, key, start, end);
        out
    }

    /// The text every entry key of a group key starting with `key_prefix`
    /// starts with (what to scan for; entries still go through
    /// [`Selection::matches`]).
    pub fn scan_prefix(&self, key_prefix: &str) -> String {
        format!("{}{}", self.prefix, self.template.rendered_prefix(key_prefix))
    }

    /// The entry stored at `entry` with these fields; `None` when it is
    /// not one of this region's entries (gone, or not an entry at all).
    pub fn entry(&self, entry: String, fields: Vec<(String, String)>) -> Option<StoredEntry> {
        let number = |name: &str| fields.iter().find(|(f, _)| f == name).and_then(|(_, v)| v.parse::<Millis>().ok());
        let (window_start, window_end) = (number("window_start")?, number("window_end")?);
        let key = self.template.key_of(entry.strip_prefix(&self.prefix)?, window_start, window_end)?;
        let version = fields.iter().find(|(f, _)| f == VERSION_FIELD).and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let (hidden, public): (Vec<_>, Vec<_>) = fields.into_iter().partition(|(f, _)| f.starts_with('_'));
        let partials = hidden.into_iter().filter(|(f, _)| f.starts_with("_p:")).collect();
        let change = Change {
            entry,
            key: Arc::from(key),
            window_start,
            window_end,
            version,
            op: ChangeOp::Upsert,
            fields: public,
        };
        Some(StoredEntry { change, partials })
    }
}

/// Which group keys a selection takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFilter {
    Exactly(String),
    StartingWith(String),
}

/// Which entries a command shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub key: KeyFilter,
    /// Only windows starting at or after this.
    pub from: Option<Millis>,
    /// Only windows starting before this.
    pub to: Option<Millis>,
    /// Only windows containing this instant (`start <= at < end`).
    pub containing: Option<Millis>,
}

impl Selection {
    /// Every entry.
    pub fn all() -> Selection {
        Selection { key: KeyFilter::StartingWith(String::new()), from: None, to: None, containing: None }
    }

    /// The text the keys of the selected entries start with.
    pub fn scan_prefix(&self, keys: &RegionKeys) -> String {
        match &self.key {
            KeyFilter::Exactly(key) | KeyFilter::StartingWith(key) => keys.scan_prefix(key),
        }
    }

    pub fn matches(&self, entry: &StoredEntry) -> bool {
        let c = &entry.change;
        let key = match &self.key {
            KeyFilter::Exactly(key) => *c.key == **key,
            KeyFilter::StartingWith(prefix) => c.key.starts_with(prefix.as_str()),
        };
        key && self.from.is_none_or(|from| c.window_start >= from)
            && self.to.is_none_or(|to| c.window_start < to)
            && self.containing.is_none_or(|at| c.window_start <= at && at < c.window_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect()
    }

    fn keys() -> RegionKeys {
        RegionKeys::new("rf", "views", KeyTemplate::parse("{key}:{window_start}").unwrap())
    }

    #[test]
    fn a_hash_becomes_the_change_that_states_it() {
        let stored = fields(&[
            ("window_start", "1000"),
            ("_p:clicks:0", r#"{"e":1,"o":5,"a":[2]}"#),
            ("window_end", "2000"),
            ("n", "2"),
            ("_v", "7"),
        ]);
        let entry = keys().entry("rf:views:u:1:1000".into(), stored).expect("an entry");
        assert_eq!(
            entry.change,
            Change {
                entry: "rf:views:u:1:1000".into(),
                key: "u:1".into(),
                window_start: 1000,
                window_end: 2000,
                version: 7,
                op: ChangeOp::Upsert,
                fields: fields(&[("window_start", "1000"), ("window_end", "2000"), ("n", "2")]),
            }
        );
        assert_eq!(entry.partials, fields(&[("_p:clicks:0", r#"{"e":1,"o":5,"a":[2]}"#)]));
    }

    #[test]
    fn other_hashes_are_no_entries() {
        let window = [("window_start", "1000"), ("window_end", "2000")];
        assert!(keys().entry("rf:views:u:1000".into(), fields(&window)).is_some_and(|e| e.change.version == 0));
        assert!(keys().entry("rf:views:u:1000".into(), Vec::new()).is_none(), "gone");
        assert!(keys().entry("rf:views:u:1000".into(), fields(&[("_v", "3")])).is_none(), "a deletion's version");
        assert!(keys().entry("rf:views:u:1000".into(), fields(&window[..1])).is_none(), "no end");
        assert!(keys().entry("rf:views:u:999".into(), fields(&window)).is_none(), "another window's key");
        assert!(keys().entry("rf:other:u:1000".into(), fields(&window)).is_none(), "another region");
    }

    #[test]
    fn selections_filter_by_key_and_window() {
        let entry = |key: &str, start: Millis| {
            let (s, e) = (start.to_string(), (start + 10).to_string());
            keys()
                .entry(format!("rf:views:{key}:{start}"), fields(&[("window_start", &s), ("window_end", &e)]))
                .unwrap()
        };
        let exactly = Selection { key: KeyFilter::Exactly("a".into()), ..Selection::all() };
        assert!(exactly.matches(&entry("a", 0)) && !exactly.matches(&entry("ab", 0)));
        assert_eq!(exactly.scan_prefix(&keys()), "rf:views:a");
        let prefix =
            Selection { key: KeyFilter::StartingWith("a".into()), from: Some(10), to: Some(30), containing: None };
        assert!(prefix.matches(&entry("ab", 10)) && prefix.matches(&entry("a", 20)));
        assert!(
            !prefix.matches(&entry("b", 10)) && !prefix.matches(&entry("a", 0)) && !prefix.matches(&entry("a", 30))
        );
        let at = Selection { containing: Some(15), ..Selection::all() };
        assert!(at.matches(&entry("a", 10)) && at.matches(&entry("a", 6)));
        assert!(!at.matches(&entry("a", 5)) && !at.matches(&entry("a", 16)));
    }
}
