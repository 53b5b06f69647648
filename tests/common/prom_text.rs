//! The Prometheus text exposition format, parsed: what the tests read from
//! a connector's `/metrics` and the end-to-end bench from its connector
//! child's. Shared by path with `benches/end_to_end.rs`, so it depends on
//! nothing but `std`.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: its samples and the families its `# TYPE` lines declare.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses `text`, panicking on a line that is not the text format: the
    /// text comes from our own exporter, so a bad line is a bug to see.
    pub fn parse(text: &str) -> Exposition {
        let mut exposition = Exposition::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix('#') {
                let mut words = rest.split_whitespace();
                if let (Some("TYPE"), Some(name), Some(kind)) = (words.next(), words.next(), words.next()) {
                    exposition.types.insert(name.to_string(), kind.to_string());
                }
                continue;
            }
            let sample = parse_sample(line).unwrap_or_else(|e| panic!("not a Prometheus sample line ({e}): {line:?}"));
            exposition.samples.push(sample);
        }
        exposition
    }

    /// The samples named `name` that carry every (label, value) of `labels`.
    pub fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// Sum of the samples named `name` that carry every one of `labels`
    /// (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Every sample name (`x`, `x_bucket`, `x_sum`, ...).
    pub fn series_names(&self) -> BTreeSet<String> {
        self.samples.iter().map(|s| s.name.clone()).collect()
    }

    /// The declared family a sample name belongs to: the longest family
    /// that is the name itself or the name less a `_suffix`.
    pub fn family_of(&self, name: &str) -> Option<&str> {
        self.types
            .keys()
            .filter(|f| name == f.as_str() || name.strip_prefix(f.as_str()).is_some_and(|s| s.starts_with('_')))
            .max_by_key(|f| f.len())
            .map(String::as_str)
    }

    /// Each declared family's label names over all its samples (without a
    /// histogram's `le`).
    pub fn family_labels(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> =
            self.types.keys().map(|f| (f.clone(), BTreeSet::new())).collect();
        for sample in &self.samples {
            if let Some(family) = self.family_of(&sample.name) {
                let labels = out.get_mut(family).expect("every declared family has an entry");
                labels.extend(sample.labels.keys().filter(|k| *k != "le").cloned());
            }
        }
        out
    }

    /// The `q`-quantile of histogram `name` over all its series (their
    /// buckets summed by `le`), interpolated within the bucket like
    /// PromQL's `histogram_quantile`. `None` when nothing was observed.
    pub fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for sample in self.matching(&bucket, &[]) {
            let le = parse_value(sample.labels.get("le")?).ok()?;
            match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, count)) => *count += sample.value,
                None => buckets.push((le, sample.value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total == 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                return Some(prev.0 + (le - prev.0) * (rank - prev.1) / (count - prev.1).max(1e-9));
            }
            prev = (le, count);
        }
        None
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = rest.split_once('=').ok_or("label without `=`")?;
            let (value, after_value) = label_value(after_key.trim_start())?;
            labels.insert(key.trim().to_string(), value);
            rest = after_value;
        }
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    Ok(Sample { name, labels, value: parse_value(value)? })
}

/// A quoted label value with its escapes undone, and the text after it.
fn label_value(text: &str) -> Result<(String, &str), String> {
    let body = text.strip_prefix('"').ok_or("label value not quoted")?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &body[i + 1..])),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => value.push('\n'),
                Some(escaped) => value.push(escaped),
                None => break,
            },
            _ => value.push(c),
        }
    }
    Err("unterminated label value".into())
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        other => other.parse().map_err(|e| format!("value {other:?}: {e}")),
    }
}
