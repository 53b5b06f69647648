//! `regionflow region get | scan | export`: reading a region back.
//!
//! Each command finds the region among the configured pipelines (by
//! `region.name`; its key template, window kind and aggregates come from
//! that pipeline), connects as `run` does (TLS, ACL user) but gives up
//! within seconds when the cluster is not there, and reads through
//! `redis::read::RegionReader`. Entries become `region::read::StoredEntry`s,
//! i.e. the `Change` the change feed carries, so `export` writes exactly
//! the feed's format (`JsonChanges`) and `get`/`scan --output json` the
//! same objects plus readable times.

mod export;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use regionflow::config::{PipelineConfig, Settings};
use regionflow::pipeline::compile;
use regionflow::redis::read::RegionReader;
use regionflow::redis::ClusterHandle;
use regionflow::region::read::{KeyFilter, RegionKeys, Selection, StoredEntry};
use regionflow::region::{JsonChanges, KeyTemplate};
use regionflow::time::Millis;
use regionflow::window::WindowKind;

/// Entries fetched (`HGETALL`) per round.
const CHUNK: usize = 256;
/// How long one read retries transient failures.
const READ_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum RegionAction {
    /// One entry by key and window start, or the entries of a key whose
    /// window contains a time (tumbling: one; sliding: several; session:
    /// the key's sessions around it).
    #[command(group(ArgGroup::new("window").required(true).args(["window_start", "at"])))]
    Get {
        #[command(flatten)]
        region: RegionArgs,
        /// The group key.
        #[arg(long)]
        key: String,
        /// The window's start, epoch milliseconds.
        #[arg(long, value_name = "MS", allow_hyphen_values = true)]
        window_start: Option<Millis>,
        /// A time (RFC 3339) the windows must contain.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        at: Option<Millis>,
        #[command(flatten)]
        show: ShowArgs,
    },
    /// Entries in key order, optionally only some keys and window starts.
    Scan {
        #[command(flatten)]
        region: RegionArgs,
        /// Only group keys starting with this.
        #[arg(long, value_name = "KEYPREFIX")]
        prefix: Option<String>,
        /// Only windows starting at or after this time (RFC 3339).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        from: Option<Millis>,
        /// Only windows starting before this time (RFC 3339).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        to: Option<Millis>,
        /// Show at most this many entries (0: all).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        show: ShowArgs,
    },
    /// Every entry as a change (op "upsert", at its version), in the change
    /// feed's format: to a Kafka topic, or as JSON lines on standard output.
    Export {
        #[command(flatten)]
        region: RegionArgs,
        /// Produce to this topic (with `kafka.*` settings) instead of
        /// printing.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Args)]
pub struct RegionArgs {
    /// The configuration file the region's connectors run with.
    #[arg(long, short)]
    config: PathBuf,
    /// The region's name (`region.name` of one of the pipelines).
    #[arg(long)]
    region: String,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Also show each source partition's partial (`_p:<topic>:<partition>`).
    #[arg(long)]
    partials: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns, times in RFC 3339.
    Table,
    /// JSON lines: one change object per entry, plus its times in RFC 3339.
    Json,
}

fn parse_time(text: &str) -> Result<Millis, String> {
    regionflow::time::parse_rfc3339(text)
        .ok_or_else(|| "not an RFC 3339 time; write e.g. 2024-05-01T12:00:00Z or 2024-05-01T14:00:00.250+02:00".into())
}

/// A configured region, connected.
struct Region {
    name: String,
    keys: RegionKeys,
    window: WindowKind,
    /// The pipeline's aggregate names: the table's columns.
    aggregates: Vec<String>,
    reader: RegionReader,
    settings: Settings,
}

impl Region {
    async fn open(args: &RegionArgs) -> anyhow::Result<Region> {
        let path = &args.config;
        let mut settings = Settings::load(path).with_context(|| format!("invalid configuration {}", path.display()))?;
        let pipeline = find(&settings, &args.region, path)?.clone();
        // Interactive, as `checkpoints`: a person waits, so a cluster that
        // is not there now is an answer. Once connected, a read rides
        // through slot moves and short failovers (redis-rs follows each
        // MOVED, and a slot moving back and forth can take it a while).
        settings.redis.startup_timeout = settings.redis.startup_timeout.min(crate::INTERACTIVE_TIMEOUT);
        let deadline = settings.redis.write_deadline.min(READ_DEADLINE);
        let handle = ClusterHandle::connect(&settings.redis).await?;
        let template = KeyTemplate::parse(&pipeline.region.key).expect("validated at configuration load");
        Ok(Region {
            name: args.region.clone(),
            keys: RegionKeys::new(&settings.redis.key_prefix, &args.region, template),
            window: compile::window_spec(&pipeline).kind,
            aggregates: pipeline.aggregates.keys().cloned().collect(),
            reader: RegionReader::new(Arc::new(handle), deadline),
            settings,
        })
    }

    /// The stored entries at `names` (in order) that `selection` takes.
    async fn read(&self, names: &[String], selection: &Selection) -> anyhow::Result<Vec<StoredEntry>> {
        let fields = self.reader.fields_of(names).await?;
        Ok(names
            .iter()
            .zip(fields)
            .filter_map(|(name, fields)| self.keys.entry(name.clone(), fields))
            .filter(|entry| selection.matches(entry))
            .collect())
    }

    /// Up to `limit` (0: all) entries `selection` takes, in key order; and
    /// whether the limit stopped the scan before every key was read.
    async fn scan(&self, selection: &Selection, limit: usize) -> anyhow::Result<(Vec<StoredEntry>, bool)> {
        let names = self.reader.keys(&selection.scan_prefix(&self.keys)).await?;
        let mut entries = Vec::new();
        for (i, chunk) in names.chunks(CHUNK).enumerate() {
            entries.extend(self.read(chunk, selection).await?);
            if limit > 0 && entries.len() >= limit {
                let more = entries.len() > limit || (i + 1) * CHUNK < names.len();
                entries.truncate(limit);
                return Ok((entries, more));
            }
        }
        Ok((entries, false))
    }
}

/// The pipeline writing `region`, or an error naming the regions there are.
fn find<'a>(settings: &'a Settings, region: &str, path: &std::path::Path) -> anyhow::Result<&'a PipelineConfig> {
    settings.pipelines.values().find(|p| p.region.name == region).ok_or_else(|| {
        let known: Vec<String> = settings.pipelines.values().map(|p| format!("`{}`", p.region.name)).collect();
        anyhow::anyhow!(
            "no pipeline in {} writes region `{region}`; the configured regions are {}",
            path.display(),
            known.join(", ")
        )
    })
}

pub async fn run(action: RegionAction) -> anyhow::Result<()> {
    match action {
        RegionAction::Get { region, key, window_start, at, show } => {
            let region = Region::open(&region).await?;
            let entries = get(&region, &key, window_start, at).await?;
            if entries.is_empty() {
                let when = match (window_start, at) {
                    (Some(start), _) => format!("starting at {start} ({})", rfc3339(start)),
                    (None, Some(at)) => format!("containing {}", rfc3339(at)),
                    (None, None) => unreachable!("clap requires --window-start or --at"),
                };
                anyhow::bail!("region `{}` has no entry of key `{key}` with a window {when}", region.name);
            }
            print(&region, &entries, &show);
            Ok(())
        }
        RegionAction::Scan { region, prefix, from, to, limit, show } => {
            let region = Region::open(&region).await?;
            let selection =
                Selection { key: KeyFilter::StartingWith(prefix.unwrap_or_default()), from, to, containing: None };
            let (entries, more) = region.scan(&selection, limit).await?;
            print(&region, &entries, &show);
            let more = if more { format!(" (stopped at --limit {limit}; more may match)") } else { String::new() };
            eprintln!("{} entries of region `{}`{more}", entries.len(), region.name);
            Ok(())
        }
        RegionAction::Export { region, topic } => {
            let region = Region::open(&region).await?;
            export::export(&region, topic.as_deref()).await
        }
    }
}

/// The entries of `key` for `--window-start` or `--at`. Fixed windows are
/// computed and read directly; a session's bounds are only in its entries,
/// so sessions (with an end in the key, or for `--at`) scan the key's.
async fn get(
    region: &Region,
    key: &str,
    start: Option<Millis>,
    at: Option<Millis>,
) -> anyhow::Result<Vec<StoredEntry>> {
    let exactly = || Selection { key: KeyFilter::Exactly(key.to_string()), from: None, to: None, containing: None };
    let (windows, selection) = match (start, at) {
        (Some(start), _) => {
            let selection = Selection { from: Some(start), to: Some(start.saturating_add(1)), ..exactly() };
            match region.window.end_of(start) {
                Some(end) => (Some(vec![(start, end)]), selection),
                // The end is not part of the key: any value renders it.
                None if !region.keys.template().uses_window_end() => (Some(vec![(start, start)]), selection),
                None => (None, selection),
            }
        }
        (None, Some(at)) => {
            let windows = region.window.windows_containing(at).map(|ws| ws.iter().map(|w| (w.start, w.end)).collect());
            (windows, Selection { containing: Some(at), ..exactly() })
        }
        (None, None) => unreachable!("clap requires --window-start or --at"),
    };
    match windows {
        Some(windows) => {
            let names: Vec<String> = windows.iter().map(|(s, e)| region.keys.entry_key(key, *s, *e)).collect();
            region.read(&names, &selection).await
        }
        None => Ok(region.scan(&selection, 0).await?.0),
    }
}

fn print(region: &Region, entries: &[StoredEntry], show: &ShowArgs) {
    match show.output {
        Output::Json => {
            for entry in entries {
                println!("{}", json_line(&region.name, entry, show.partials));
            }
        }
        Output::Table => print!("{}", table(&region.aggregates, entries, show.partials)),
    }
}

/// Epoch milliseconds as RFC 3339 in UTC, to the millisecond.
fn rfc3339(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map_or_else(|| millis.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// The change-feed object of an entry (`JsonChanges::to_json`) with
/// `window_start_rfc3339`, `window_end_rfc3339` and, if asked for,
/// `partials` (field → its JSON) added.
fn json_line(region: &str, entry: &StoredEntry, partials: bool) -> String {
    let change = &entry.change;
    let mut line = JsonChanges.to_json(region, change);
    let closing = line.pop();
    debug_assert_eq!(closing, Some('}'), "to_json writes one object");
    let text = |s: &str| serde_json::Value::String(s.to_string());
    line.push_str(&format!(
        ",\"window_start_rfc3339\":{},\"window_end_rfc3339\":{}",
        text(&rfc3339(change.window_start)),
        text(&rfc3339(change.window_end))
    ));
    if partials {
        let map: serde_json::Map<String, serde_json::Value> = entry
            .partials
            .iter()
            .map(|(field, value)| (field.clone(), serde_json::from_str(value).unwrap_or_else(|_| text(value))))
            .collect();
        line.push_str(&format!(",\"partials\":{}", serde_json::Value::Object(map)));
    }
    line.push('}');
    line
}

/// Aligned columns: key, window bounds, version, then the pipeline's
/// aggregates and any other public field an entry has; absent values are
/// `-`. Partials follow their entry, indented.
fn table(aggregates: &[String], entries: &[StoredEntry], partials: bool) -> String {
    let mut columns: Vec<String> =
        ["key", "window_start", "window_end", "version"].iter().map(|s| s.to_string()).collect();
    columns.extend(aggregates.iter().cloned());
    for entry in entries {
        for (field, _) in &entry.change.fields {
            if field != "window_start" && field != "window_end" && !columns.contains(field) {
                columns.push(field.clone());
            }
        }
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            let c = &entry.change;
            let fields: BTreeMap<&str, &str> = c.fields.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
            let mut row =
                vec![c.key.to_string(), rfc3339(c.window_start), rfc3339(c.window_end), c.version.to_string()];
            row.extend(columns[4..].iter().map(|name| fields.get(name.as_str()).unwrap_or(&"-").to_string()));
            row
        })
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([columns[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&columns);
    for (entry, row) in entries.iter().zip(&rows) {
        out.push_str(&line(row));
        if partials {
            for (field, value) in &entry.partials {
                out.push_str(&format!("    {field}  {value}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use regionflow::region::{Change, ChangeOp};

    fn entry(key: &str, fields: &[(&str, &str)], partials: &[(&str, &str)]) -> StoredEntry {
        let pairs = |list: &[(&str, &str)]| list.iter().map(|(f, v)| (f.to_string(), v.to_string())).collect();
        StoredEntry {
            change: Change {
                entry: format!("rf:views:{key}:1700000000000"),
                key: key.into(),
                window_start: 1_700_000_000_000,
                window_end: 1_700_000_060_000,
                version: 3,
                op: ChangeOp::Upsert,
                fields: pairs(fields),
            },
            partials: pairs(partials),
        }
    }

    #[test]
    fn json_lines_are_changes_with_readable_times() {
        let e =
            entry("u\"1", &[("window_start", "1700000000000"), ("n", "2")], &[("_p:t:0", r#"{"e":1,"o":2,"a":[2]}"#)]);
        let value: serde_json::Value = serde_json::from_str(&json_line("views", &e, true)).expect("JSON");
        assert_eq!(value["key"], "u\"1");
        assert_eq!(value["version"], 3);
        assert_eq!(value["fields"]["n"], "2");
        assert_eq!(value["window_start_rfc3339"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["window_end_rfc3339"], "2023-11-14T22:14:20.000Z");
        assert_eq!(value["partials"]["_p:t:0"]["a"][0], 2);
        let plain: serde_json::Value = serde_json::from_str(&json_line("views", &e, false)).expect("JSON");
        assert!(plain.get("partials").is_none());
    }

    #[test]
    fn tables_align_columns_and_mark_absent_values() {
        let entries = [
            entry("a", &[("n", "2"), ("smallest", "1.5")], &[("_p:t:0", "{}")]),
            entry("longer-key", &[("n", "10"), ("extra", "x")], &[]),
        ];
        let out = table(&["n".into(), "smallest".into()], &entries, true);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "key         window_start              window_end                version  n   smallest  extra"
        );
        assert_eq!(
            lines[1],
            "a           2023-11-14T22:13:20.000Z  2023-11-14T22:14:20.000Z  3        2   1.5       -"
        );
        assert_eq!(lines[2], "    _p:t:0  {}");
        assert_eq!(
            lines[3],
            "longer-key  2023-11-14T22:13:20.000Z  2023-11-14T22:14:20.000Z  3        10  -         x"
        );
    }

    #[test]
    fn times_must_be_rfc3339() {
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("2023-11-14T23:13:20.5+01:00"), Ok(1_700_000_000_500));
        assert!(parse_time("1700000000000").unwrap_err().contains("e.g. 2024-05-01T12:00:00Z"));
    }
}
