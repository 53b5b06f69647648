//! Test harness for regionflow's observability files: a real Prometheus
//! server (Debian's `prometheus` package), a minimal HTTP client, and the
//! PromQL helpers the dashboard and rule tests share.
//!
//! - [`Prometheus::start`] runs `prometheus` on a free loopback port with its
//!   own temp storage, scraping the given targets every second and
//!   evaluating the given rule files every second; dropping it kills it.
//! - [`http_get`] is a small HTTP/1.0 GET over `std::net::TcpStream` (the
//!   tests have no HTTP client dependency).
//! - [`dashboard_queries`], [`variable_queries`] and [`substitute_variables`]
//!   extract the expressions of Grafana dashboards and make them PromQL;
//! - [`parse_promql`] (the `promql-parser` crate) parses them, and
//!   [`metric_names`], [`selectors`], [`alert_signals`] and [`compares`]
//!   read the syntax tree.
//!
//! Needs `prometheus` and `promtool` on PATH: `scripts/setup-test-deps.sh`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};
use serde_json::Value;
use tempfile::TempDir;

use super::net::free_port;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `GET path` on `address` (host:port) with HTTP/1.0; returns the status
/// code and the body.
pub fn http_get(address: &str, path: &str) -> io::Result<(u16, String)> {
    let addr = address
        .parse()
        .or_else(|_| std::net::ToSocketAddrs::to_socket_addrs(address).map(|mut a| a.next().expect("an address")))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{address}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: */*\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "HTTP response without a header end"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
}

/// One element of an instant query's result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A rule as Prometheus loaded it (`/api/v1/rules`).
#[derive(Debug, Clone)]
pub struct LoadedRule {
    pub group: String,
    pub name: String,
    /// "recording" or "alerting".
    pub kind: String,
    /// The expression, as Prometheus formats it.
    pub query: String,
    pub health: String,
    pub last_error: Option<String>,
}

/// A running Prometheus server; dropping it kills the process and removes
/// its storage.
pub struct Prometheus {
    child: Child,
    pub address: String,
    log: PathBuf,
    targets: Mutex<Vec<String>>,
    targets_file: PathBuf,
    // Dropped after the process is killed (see Drop).
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port, job "regionflow";
    /// more can be added with [`Prometheus::add_target`]) every second and
    /// evaluating `rule_files` every second. Returns once it reports ready.
    /// Panics with its log when it does not start.
    pub fn start(targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let binary = find_on_path("prometheus")
            .unwrap_or_else(|| panic!("prometheus not found on PATH: run scripts/setup-test-deps.sh"));
        let dir = tempfile::Builder::new().prefix("regionflow-prometheus-").tempdir().expect("temp dir");
        let targets_file = dir.path().join("targets.json");
        write_targets(&targets_file, targets);
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}", serde_json::to_string(&p.display().to_string()).expect("path as JSON")))
            .collect();
        // File-based discovery: Prometheus watches the file, so targets added
        // while it runs are scraped within a second.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\n\
             scrape_configs:\n  - job_name: regionflow\n    file_sd_configs:\n      - refresh_interval: 1s\n        files:\n          - {}\n",
            rules.join("\n"),
            serde_json::to_string(&targets_file.display().to_string()).expect("path as JSON"),
        );
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config).expect("write prometheus.yml");

        // A port free when picked may be taken by the time Prometheus binds
        // it: then it exits at once, and we try another.
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            let address = format!("127.0.0.1:{}", free_port());
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let log_file = fs::File::create(&log).expect("create prometheus log");
            let mut child = Command::new(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join(format!("data-{attempt}")).display()))
                .arg(format!("--web.listen-address={address}"))
                .arg("--storage.tsdb.retention.time=1h")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log handle"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
            let started = Instant::now();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    failures.push(format!("{address}: exited with {status}:\n{}", tail(&log, 20)));
                    break;
                }
                if let Ok((200, _)) = http_get(&address, "/-/ready") {
                    return Prometheus {
                        child,
                        address,
                        log,
                        targets: Mutex::new(targets.to_vec()),
                        targets_file,
                        dir,
                    };
                }
                if started.elapsed() > START_TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("Prometheus not ready within {START_TIMEOUT:?}; log:\n{}", tail(&log, 40));
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("Prometheus did not start in {START_ATTEMPTS} attempts:\n{}", failures.join("\n---\n"));
    }

    /// Scrapes `target` (host:port) too, from the next discovery on.
    pub fn add_target(&self, target: &str) {
        let mut targets = self.targets.lock().expect("targets lock");
        targets.push(target.to_string());
        write_targets(&self.targets_file, &targets);
    }

    /// The tail of Prometheus' own log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// `GET /api/v1/<path>`; returns `data` or the API's error.
    pub fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = http_get(&self.address, &format!("/api/v1/{path_and_query}"))
            .map_err(|e| format!("cannot reach Prometheus: {e}"))?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body:.300}"))?;
        if json["status"] != "success" {
            return Err(format!("{}: {}", json["errorType"].as_str().unwrap_or("error"), json["error"]));
        }
        Ok(json["data"].clone())
    }

    /// Evaluates `expr` now (an instant query).
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("query?query={}", url_encode(expr)))?;
        let value = |v: &Value| -> Result<f64, String> {
            let text = v[1].as_str().ok_or_else(|| format!("no sample value in {v}"))?;
            text.parse::<f64>().or_else(|_| match text {
                "NaN" => Ok(f64::NAN),
                "+Inf" => Ok(f64::INFINITY),
                "-Inf" => Ok(f64::NEG_INFINITY),
                other => Err(format!("sample value {other:?}")),
            })
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .expect("vector result is an array")
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                        .unwrap_or_default();
                    Ok(Sample { labels, value: value(&s["value"])? })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample { labels: BTreeMap::new(), value: value(&data["result"])? }]),
            other => Err(format!("expected an instant vector or scalar, got {other:?}")),
        }
    }

    /// Every rule Prometheus loaded, with its health after the last evaluation.
    pub fn rules(&self) -> Result<Vec<LoadedRule>, String> {
        let data = self.api("rules")?;
        let mut rules = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                rules.push(LoadedRule {
                    group: group["name"].as_str().unwrap_or_default().to_string(),
                    name: rule["name"].as_str().unwrap_or_default().to_string(),
                    kind: rule["type"].as_str().unwrap_or_default().to_string(),
                    query: rule["query"].as_str().unwrap_or_default().to_string(),
                    health: rule["health"].as_str().unwrap_or_default().to_string(),
                    last_error: rule["lastError"].as_str().filter(|e| !e.is_empty()).map(String::from),
                });
            }
        }
        Ok(rules)
    }

    /// Scrape targets with their health ("up"/"down"/"unknown") and last error.
    pub fn targets(&self) -> Result<Vec<(String, String, String)>, String> {
        let data = self.api("targets")?;
        Ok(data["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or_default().to_string(),
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }
}

/// Writes a file_sd target list atomically (Prometheus may read it any time).
fn write_targets(path: &Path, targets: &[String]) {
    let json = serde_json::json!([{ "targets": targets, "labels": {} }]);
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json.to_string()).expect("write file_sd targets");
    fs::rename(&tmp, path).expect("replace file_sd targets");
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- dashboards

/// One query of one dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub dashboard: String,
    pub panel_id: i64,
    pub panel_title: String,
    pub ref_id: String,
    pub expr: String,
}

impl std::fmt::Display for PanelQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} panel {} {:?} query {}", self.dashboard, self.panel_id, self.panel_title, self.ref_id)
    }
}

/// Every `grafana/dashboards/*.json`, sorted.
pub fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo_root().join("grafana/dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
}

pub fn load_dashboard(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every panel, including those nested in (collapsed) rows.
pub fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The PromQL expression of every target of every panel of a dashboard.
pub fn dashboard_queries(path: &Path) -> Vec<PanelQuery> {
    let dashboard = load_dashboard(path);
    let name = path.file_name().expect("file name").to_string_lossy().to_string();
    let mut out = Vec::new();
    for panel in all_panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            out.push(PanelQuery {
                dashboard: name.clone(),
                panel_id: panel["id"].as_i64().unwrap_or(-1),
                panel_title: panel["title"].as_str().unwrap_or_default().to_string(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_string(),
                expr: expr.to_string(),
            });
        }
    }
    out
}

/// (name, query) of every `query` template variable of a dashboard.
pub fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = v["query"]["query"].as_str().or_else(|| v["query"].as_str()).unwrap_or_default();
            (v["name"].as_str().unwrap_or_default().to_string(), query.to_string())
        })
        .collect()
}

/// `label_values(<selector>, <label>)` → (selector, label).
pub fn parse_label_values(query: &str) -> Option<(String, String)> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_string(), label.trim().to_string()))
}

/// What [`substitute_variables`] makes of a dashboard variable (`$pipeline`,
/// `${region:regex}`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashboardVariables {
    /// The regex `.*`, as with "All" selected: the expression can run.
    MatchAll,
    /// `$name`: the expression parses, and shows where it uses the variable.
    Named,
}

/// Replaces Grafana variables so an expression is PromQL:
/// `$__rate_interval`/`$__interval` (and `${...}` forms) become `interval`,
/// `$__range` becomes `5m`, and dashboard variables become what `variables`
/// says. Panics on an unknown Grafana built-in, so new ones are handled on
/// purpose.
pub fn substitute_variables(expr: &str, interval: &str, variables: DashboardVariables) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let (name, next) = if chars.get(i + 1) == Some(&'{') {
            let end = chars[i..].iter().position(|&c| c == '}').map(|p| i + p).unwrap_or_else(|| {
                panic!("unterminated ${{...}} in {expr:?}");
            });
            let inner: String = chars[i + 2..end].iter().collect();
            (inner.split(':').next().unwrap_or_default().to_string(), end + 1)
        } else {
            let end = chars[i + 1..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                .map(|p| i + 1 + p)
                .unwrap_or(chars.len());
            (chars[i + 1..end].iter().collect(), end)
        };
        match name.as_str() {
            "__rate_interval" | "__interval" => out.push_str(interval),
            "__range" => out.push_str("5m"),
            builtin if builtin.starts_with("__") => panic!("unhandled Grafana variable ${builtin} in {expr:?}"),
            "" => panic!("lone `$` in {expr:?}"),
            variable => match variables {
                DashboardVariables::MatchAll => out.push_str(".*"),
                DashboardVariables::Named => out.push_str(&format!("${variable}")),
            },
        }
        i = next;
    }
    out
}

// ---------------------------------------------------------------- PromQL

/// Parses a PromQL expression (Grafana variables already substituted).
pub fn parse_promql(expr: &str) -> Result<Expr, String> {
    promql_parser::parser::parse(expr).map_err(|e| format!("not valid PromQL ({e}): {expr}"))
}

/// `expr` and every expression inside it, in source order (a parent
/// before its children).
pub fn subexpressions(expr: &Expr) -> Vec<&Expr> {
    fn collect<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
        out.push(expr);
        let children: Vec<&Expr> = match expr {
            Expr::Aggregate(a) => a.param.iter().map(|p| &**p).chain([&*a.expr]).collect(),
            Expr::Unary(u) => vec![&u.expr],
            Expr::Binary(b) => vec![&b.lhs, &b.rhs],
            Expr::Paren(p) => vec![&p.expr],
            Expr::Subquery(s) => vec![&s.expr],
            Expr::Call(c) => c.args.args.iter().map(|a| &**a).collect(),
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => Vec::new(),
        };
        for child in children {
            collect(child, out);
        }
    }
    let mut out = Vec::new();
    collect(expr, &mut out);
    out
}

/// Every series selector an expression reads, those of range vectors too.
pub fn selectors(expr: &Expr) -> Vec<&VectorSelector> {
    subexpressions(expr)
        .into_iter()
        .filter_map(|e| match e {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        })
        .collect()
}

/// The metric a selector reads: its name, or its `__name__="..."` matcher.
pub fn selector_metric(selector: &VectorSelector) -> Option<&str> {
    selector.name.as_deref().or_else(|| {
        selector.matchers.matchers.iter().find(|m| m.name == "__name__" && m.op == MatchOp::Equal).map(|m| &*m.value)
    })
}

/// Whether `selector` has the matcher `label=~"value"`.
pub fn has_regex_matcher(selector: &VectorSelector, label: &str, value: &str) -> bool {
    selector.matchers.matchers.iter().any(|m| m.name == label && matches!(m.op, MatchOp::Re(_)) && m.value == value)
}

/// Names of the metrics an expression reads, each once, in order (names
/// with a `:` are recording rules' outputs). A selector that names no
/// metric (only `__name__=~...`) is an error: nothing could check it.
pub fn metric_names(expr: &Expr) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for selector in selectors(expr) {
        let name = selector_metric(selector).ok_or_else(|| format!("selector {selector} names no metric"))?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// The "signals" an alert compares: its expression split at the set
/// operators (`and`, `or`, `unless`, with their `on(...)`/`ignoring(...)`),
/// each operand less its comparison against a number (`> 300`, `== 0`,
/// `> bool 1`). See the header of prometheus/rules/regionflow.yml.
pub fn alert_signals(expr: &Expr) -> Vec<Expr> {
    match expr {
        Expr::Binary(b) if b.op.is_set_operator() => {
            let mut signals = alert_signals(&b.lhs);
            signals.extend(alert_signals(&b.rhs));
            signals
        }
        Expr::Binary(b) if b.op.is_comparison_operator() && matches!(*b.rhs, Expr::NumberLiteral(_)) => {
            vec![(*b.lhs).clone()]
        }
        other => vec![other.clone()],
    }
}

/// Whether an expression compares anywhere inside it (`>`, `==`, ...).
pub fn compares(expr: &Expr) -> bool {
    subexpressions(expr).iter().any(|e| matches!(e, Expr::Binary(b) if b.op.is_comparison_operator()))
}
