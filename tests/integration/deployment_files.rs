//! Static checks of the deployment and observability files, without Docker
//! or Kubernetes:
//!
//! - grafana/dashboards: valid JSON, unique panel ids, every panel and
//!   target on the `${datasource}` variable, the `pipeline` variable, no
//!   hard-coded instances, jobs or addresses, every pipeline/region-labelled
//!   metric filtered by its variable;
//! - every metric a dashboard or rule reads is defined in
//!   src/metrics/mod.rs and exposed by a running connector (the embedded
//!   quick-start), and every metric the connector exposes has a panel;
//! - prometheus/: `promtool check rules`, `promtool test rules`, `promtool
//!   check config`; alerts have severity, summary, description, runbook and
//!   the documented `<signal> <cmp> <number>` form;
//! - docker/compose.yml: parses, every file it mounts or builds exists, and
//!   addresses, ports, topics and paths agree with docker/regionflow.toml
//!   (checked with `regionflow validate` under the compose environment),
//!   prometheus/prometheus.yml and the Grafana provisioning;
//! - docker/Dockerfile: COPY sources exist and cover everything the build
//!   needs, non-root, health check and exposed port match the config;
//! - deploy/kubernetes: native sidecar, probes, ConfigMap TOML valid.
//!
//! YAML is read with `serde_norway` into `serde_json::Value` (see
//! `yaml_documents`). `docker compose config` runs too when a Docker CLI with
//! the compose plugin is installed, and is reported as skipped otherwise.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use common::prom_text::Exposition;
use common::prometheus::{
    alert_signals, all_panels, compares, dashboard_files, dashboard_queries, has_regex_matcher, load_dashboard,
    metric_names, parse_label_values, parse_promql, repo_root, selector_metric, selectors, substitute_variables,
    variable_queries, DashboardVariables,
};
use promql_parser::parser::Expr;

const DATASOURCE: &str = "${datasource}";
const DATASOURCE_UID: &str = "regionflow-prometheus";

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The documents of a YAML file, as JSON values. serde_norway is the
/// maintained fork of serde_yaml (deprecated and archived by its author):
/// libyaml's parser behind the same serde API, so YAML deserializes straight
/// into the `serde_json::Value` these checks index. serde_yml, the other
/// fork, is itself deprecated; saphyr and yaml-rust2 are pure-Rust parsers
/// with their own value type, which would need a conversion here.
fn yaml_documents(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .collect()
}

/// A one-document YAML file, as a JSON value.
fn yaml_file(relative: &str) -> Value {
    let mut documents = yaml_documents(relative);
    assert_eq!(documents.len(), 1, "{relative}: expected one YAML document");
    documents.remove(0)
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what}: expected a string, got {value}"))
}

/// A YAML list of strings (or one string, split on whitespace, as compose
/// accepts for `command`).
fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().map(|v| v.as_str().map(String::from).unwrap_or(v.to_string())).collect(),
        Value::String(s) => s.split_whitespace().map(String::from).collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a list of strings, got {other}"),
    }
}

/// The `--flag value` argument of a command line.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {address:?}"))
}

// ---------------------------------------------------------------- the connector's view

/// `regionflow validate --config <file>` with `env`: the resolved settings.
fn validate(config: &Path, env: &[(String, String)]) -> toml::Table {
    let mut command = Command::new(env!("CARGO_BIN_EXE_regionflow"));
    command.args(["validate", "--config"]).arg(config);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REGIONFLOW__")) {
        command.env_remove(key);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let out = command.output().expect("run regionflow validate");
    assert!(
        out.status.success(),
        "regionflow validate --config {} (env {env:?}) failed:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    text.parse::<toml::Table>().unwrap_or_else(|e| panic!("validate printed invalid TOML ({e}):\n{text}"))
}

struct Resolved {
    brokers: String,
    redis_nodes: Vec<String>,
    metrics_port: u16,
    topics: Vec<String>,
    dlq_topics: Vec<String>,
    shutdown_timeout: Duration,
}

fn resolved(settings: &toml::Table) -> Resolved {
    let pipelines = settings["pipelines"].as_table().expect("pipelines");
    Resolved {
        brokers: settings["kafka"]["brokers"].as_str().expect("kafka.brokers").to_string(),
        redis_nodes: settings["redis"]["nodes"]
            .as_array()
            .expect("redis.nodes")
            .iter()
            .map(|n| n.as_str().expect("node").to_string())
            .collect(),
        metrics_port: port_of(settings["metrics"]["listen"].as_str().expect("metrics.listen")),
        topics: pipelines
            .values()
            .flat_map(|p| p["topics"].as_array().expect("topics").iter().map(|t| t.as_str().expect("topic").into()))
            .collect(),
        dlq_topics: pipelines
            .values()
            .filter_map(|p| p.get("errors")?.get("deadletterqueue_topic_name")?.as_str().map(String::from))
            .collect(),
        shutdown_timeout: humantime::parse_duration(
            settings["connector"]["shutdown_timeout"].as_str().expect("connector.shutdown_timeout"),
        )
        .expect("a duration"),
    }
}

/// The `/metrics` text of a connector running the quick-start's pipeline
/// on a real Redis Cluster and a Kafka-protocol broker (so that the
/// `redis_*` series exist, which an in-memory region does not record), once
/// it shows every wanted series, or after 30 s of generated page views.
fn connector_metrics(wanted: &BTreeSet<String>) -> String {
    let cluster = common::redis_cluster::RedisCluster::start();
    let kafka = common::kafka::Kafka::start(&[("pageviews", 4), ("pageviews-dlq", 1), ("page-views-changes", 4)]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut settings =
            regionflow::config::Settings::from_toml_str(regionflow::quickstart::QUICKSTART_CONFIG).expect("valid");
        settings.kafka.brokers = kafka.brokers.clone();
        settings.redis.nodes = cluster.urls();
        let stop = tokio_util::sync::CancellationToken::new();
        let generator =
            tokio::spawn(regionflow::quickstart::produce(kafka.producer(), "pageviews".into(), 2000, stop.clone()));
        let connector = common::InProcess::start(settings).await;
        let started = Instant::now();
        let mut text = connector.metrics.render();
        while started.elapsed() < Duration::from_secs(30) {
            text = connector.metrics.render();
            let series = Exposition::parse(&text).series_names();
            if wanted.iter().all(|w| series.contains(w)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.cancel();
        let _ = generator.await;
        connector.stop().await.expect("clean shutdown");
        text
    })
}

// ---------------------------------------------------------------- expressions

/// A dashboard expression as PromQL: Grafana's intervals substituted and
/// dashboard variables as `.*` or kept as `$name` (see [`DashboardVariables`]).
fn dashboard_promql(expr: &str, variables: DashboardVariables) -> Result<Expr, String> {
    parse_promql(&substitute_variables(expr, "1m", variables))
}

/// Every PromQL expression of the dashboards (panels, and the selectors of
/// `label_values` variables) and of the rules, parsed: (where, expression).
fn all_expressions() -> Vec<(String, Result<Expr, String>)> {
    let mut out = Vec::new();
    for path in dashboard_files() {
        for q in dashboard_queries(&path) {
            let expr = dashboard_promql(&q.expr, DashboardVariables::MatchAll);
            out.push((q.to_string(), expr));
        }
        let dashboard = load_dashboard(&path);
        for (name, query) in variable_queries(&dashboard) {
            let selector = parse_label_values(&query).map(|(selector, _)| selector);
            let expr = selector
                .ok_or_else(|| format!("expected label_values(<selector>, <label>), got {query:?}"))
                .and_then(|selector| dashboard_promql(&selector, DashboardVariables::MatchAll));
            out.push((format!("{} variable {name}", path.display()), expr));
        }
    }
    for rule in rules() {
        let what = rule["record"].as_str().or(rule["alert"].as_str()).expect("record or alert").to_string();
        out.push((format!("rule {what}"), parse_promql(str_of(&rule["expr"], &what))));
    }
    out
}

/// Every rule of prometheus/rules/regionflow.yml.
fn rules() -> Vec<Value> {
    let file = yaml_file("prometheus/rules/regionflow.yml");
    let groups = file["groups"].as_array().expect("groups");
    groups.iter().flat_map(|g| g["rules"].as_array().expect("rules").clone()).collect()
}

fn recorded_names() -> BTreeSet<String> {
    rules().iter().filter_map(|r| r["record"].as_str().map(String::from)).collect()
}

// ---------------------------------------------------------------- dashboards

#[test]
fn dashboards_are_well_formed() {
    for path in dashboard_files() {
        let file = path.display().to_string();
        let dashboard = load_dashboard(&path);
        assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()), "{file}: needs a fixed uid");
        assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()), "{file}: needs a title");

        let mut ids = BTreeSet::new();
        for panel in all_panels(&dashboard) {
            let id = panel["id"].as_i64().unwrap_or_else(|| panic!("{file}: panel without an id: {}", panel["title"]));
            assert!(ids.insert(id), "{file}: panel id {id} is used twice");
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or_default();
            assert_eq!(panel["datasource"]["uid"], DATASOURCE, "{file} panel {id} {title:?}: datasource");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{file} panel {id}: no targets"));
            assert!(!targets.is_empty(), "{file} panel {id} {title:?}: no targets");
            for target in targets {
                assert_eq!(target["datasource"]["uid"], DATASOURCE, "{file} panel {id} {title:?}: target datasource");
                assert!(target["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{file} panel {id}: empty expr");
            }
        }

        let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
        let variable = |name: &str| {
            variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{file}: no `{name}` variable"))
        };
        let datasource = variable("datasource");
        assert_eq!(datasource["type"], "datasource", "{file}: `datasource` variable type");
        assert_eq!(datasource["query"], "prometheus", "{file}: `datasource` variable lists Prometheus datasources");
        if let Some(current) = datasource["current"]["value"].as_str() {
            assert_eq!(current, DATASOURCE_UID, "{file}: default datasource is the provisioned one");
        }
        let pipeline = variable("pipeline");
        assert_eq!(pipeline["type"], "query", "{file}: `pipeline` variable type");
        assert_eq!(pipeline["multi"], true, "{file}: `pipeline` is multi-value");
        assert_eq!(pipeline["includeAll"], true, "{file}: `pipeline` includes All");
        for v in variables.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"]["uid"], DATASOURCE, "{file}: variable {} datasource", v["name"]);
        }
        let queries = variable_queries(&dashboard);
        let pipeline_query = &queries.iter().find(|(n, _)| n == "pipeline").expect("pipeline query").1;
        assert_eq!(pipeline_query, "label_values(regionflow_records_in_total, pipeline)", "{file}: pipeline values");

        // No hard-coded instances, jobs or addresses anywhere in the dashboard.
        let text = fs::read_to_string(&path).expect("dashboard text");
        for forbidden in ["instance=", "instance!=", "job=", "job!=", "localhost", "127.0.0.1"] {
            let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(!compact.contains(forbidden), "{file}: hard-coded `{forbidden}`");
        }
        for q in dashboard_queries(&path) {
            let host_port = q.expr.split(|c: char| !(c.is_ascii_alphanumeric() || ".:-".contains(c))).find(|w| {
                w.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.len() >= 2 && p.parse::<u16>().is_ok())
            });
            assert!(host_port.is_none(), "{q}: hard-coded address {host_port:?} in {}", q.expr);
        }
    }
}

#[test]
fn dashboards_and_rules_use_metrics_the_connector_exposes() {
    let expressions = all_expressions();
    let recorded = recorded_names();
    let source = read("src/metrics/mod.rs");
    let mut referenced = BTreeSet::new();
    let mut problems = Vec::new();
    for (what, expr) in &expressions {
        let names = match expr.as_ref().map_err(String::clone).and_then(metric_names) {
            Ok(names) => names,
            Err(e) => {
                problems.push(format!("{what}: {e}"));
                continue;
            }
        };
        if names.is_empty() {
            problems.push(format!("{what}: reads no metric"));
        }
        for name in names {
            if name.contains(':') {
                if !recorded.contains(&name) {
                    problems.push(format!("{what}: `{name}` is not recorded by any rule"));
                }
            } else if name != "up" {
                referenced.insert(name);
            }
        }
    }
    // Defined in the one place metrics are defined (the standard process_*
    // series by the process collector it registers there).
    let process_collector = source.contains("ProcessCollector::for_self()");
    for name in &referenced {
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        if family.starts_with("process_") && process_collector {
            continue;
        }
        if !source.contains(&format!("\"{family}\"")) {
            problems.push(format!("`{name}` is not defined in src/metrics/mod.rs"));
        }
    }
    // Exposed by a running connector.
    let text = connector_metrics(&referenced);
    let exposition = Exposition::parse(&text);
    let series = exposition.series_names();
    let families = exposition.family_labels();
    for name in &referenced {
        if !series.contains(name) {
            problems.push(format!("`{name}` is not in a running connector's /metrics"));
        }
    }
    // Every exposed family has a place on a dashboard.
    let dashboard_text: String =
        dashboard_files().iter().map(|p| fs::read_to_string(p).expect("dashboard")).collect::<Vec<_>>().join("\n");
    for family in families.keys() {
        if !dashboard_text.contains(family.as_str()) {
            problems.push(format!("`{family}` is exposed but no dashboard panel shows it"));
        }
    }
    // Panels filter every pipeline- or region-labelled metric by its variable.
    for path in dashboard_files() {
        for q in dashboard_queries(&path) {
            let expr = match dashboard_promql(&q.expr, DashboardVariables::Named) {
                Ok(expr) => expr,
                Err(e) => {
                    problems.push(format!("{q}: {e}"));
                    continue;
                }
            };
            for selector in selectors(&expr) {
                let Some(name) = selector_metric(selector) else { continue };
                let Some(family) = exposition.family_of(name) else { continue };
                let labels = &families[family];
                if labels.contains("pipeline") && !has_regex_matcher(selector, "pipeline", "$pipeline") {
                    problems.push(format!("{q}: `{name}` is not filtered by pipeline=~\"$pipeline\""));
                } else if !labels.contains("pipeline")
                    && labels.contains("region")
                    && !has_regex_matcher(selector, "region", "$region")
                {
                    problems.push(format!("{q}: `{name}` is not filtered by region=~\"$region\""));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n  - {}", problems.len(), problems.join("\n  - "));
}

// ---------------------------------------------------------------- Prometheus

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (scripts/setup-test-deps.sh installs it): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

#[test]
fn prometheus_files_pass_promtool() {
    let root = repo_root();
    promtool(&["check", "rules", "prometheus/rules/regionflow.yml"], &root);
    promtool(&["test", "rules", "prometheus/tests/regionflow_test.yml"], &root);
    // Rule files are found relative to the config, as in the container.
    promtool(&["check", "config", "prometheus.yml"], &root.join("prometheus"));
}

#[test]
fn alerts_are_actionable_and_testable() {
    let rules = rules();
    let alerts: Vec<&Value> = rules.iter().filter(|r| r["alert"].is_string()).collect();
    assert!(!alerts.is_empty(), "no alerting rules");
    let names: BTreeSet<&str> = alerts.iter().map(|a| a["alert"].as_str().expect("name")).collect();
    for wanted in [
        "RegionflowCheckpointStalled",
        "RegionflowWatermarkLagGrowing",
        "RegionflowDeadLetterRateHigh",
        "RegionflowRepeatedPartitionTakeovers",
        "RegionflowRedisRepeatedFailovers",
        "RegionflowRedisWriteErrors",
        "RegionflowPipelineUnowned",
        "RegionflowTaskFailures",
        "RegionflowConnectorDown",
    ] {
        assert!(names.contains(wanted), "alert {wanted} is missing");
    }
    let unit_tests = read("prometheus/tests/regionflow_test.yml");
    for alert in &alerts {
        let name = alert["alert"].as_str().expect("name");
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity critical or warning, got {severity:?}");
        for key in ["summary", "description", "runbook"] {
            assert!(
                alert["annotations"][key].as_str().is_some_and(|s| !s.trim().is_empty()),
                "{name}: annotation `{key}` missing"
            );
        }
        let expr = str_of(&alert["expr"], name);
        for forbidden in ["instance=", "job="] {
            let compact: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(!compact.contains(forbidden), "{name}: hard-coded `{forbidden}` in {expr}");
        }
        // The documented form: each signal, without its threshold, must be a
        // plain expression tests/integration/observability.rs can evaluate.
        let parsed = parse_promql(expr).unwrap_or_else(|e| panic!("{name}: {e}"));
        for signal in alert_signals(&parsed) {
            let names = metric_names(&signal).unwrap_or_else(|e| panic!("{name}: signal `{signal}`: {e}"));
            assert!(!names.is_empty(), "{name}: signal `{signal}` reads no metric");
            assert!(!compares(&signal), "{name}: signal `{signal}` still compares; see the rules' header");
        }
        if severity == "critical" {
            assert!(unit_tests.contains(&format!("alertname: {name}")), "{name}: no unit test in regionflow_test.yml");
        }
    }
}

// ---------------------------------------------------------------- Grafana provisioning

#[test]
fn grafana_provisioning_matches_the_compose_stack() {
    let datasources = yaml_file("grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["uid"], DATASOURCE_UID);
    assert_eq!(datasource["type"], "prometheus");
    let url = str_of(&datasource["url"], "datasource url");
    let compose = yaml_file("docker/compose.yml");
    let services = compose["services"].as_object().expect("services");
    let host = url.trim_start_matches("http://").split(':').next().expect("host");
    assert!(services.contains_key(host), "datasource url {url}: no compose service `{host}`");
    assert_eq!(port_of(url.trim_end_matches('/')), 9090, "Prometheus listens on 9090");

    let providers = yaml_file("grafana/provisioning/dashboards/regionflow.yml");
    let provider = &providers["providers"][0];
    assert_eq!(provider["type"], "file");
    let dashboards_path = str_of(&provider["options"]["path"], "provider path");
    assert_eq!(dashboards_path, "/var/lib/grafana/dashboards");

    let mounts = volume_mounts(&services["grafana"]);
    assert_eq!(
        mounts.get("/var/lib/grafana/dashboards").map(String::as_str),
        Some("../grafana/dashboards"),
        "grafana mounts the dashboards where the provider looks"
    );
    assert_eq!(mounts.get("/etc/grafana/provisioning").map(String::as_str), Some("../grafana/provisioning"));
}

// ---------------------------------------------------------------- compose

/// Container path → host path of a service's bind mounts (relative to docker/).
fn volume_mounts(service: &Value) -> BTreeMap<String, String> {
    string_list(&service["volumes"])
        .iter()
        .filter_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            (source.starts_with('.') || source.starts_with('/')).then(|| (target.to_string(), source.to_string()))
        })
        .collect()
}

fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let (k, v) = i.as_str().expect("KEY=value").split_once('=').expect("KEY=value");
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn shell_text(service: &Value) -> String {
    format!("{} {}", string_list(&service["entrypoint"]).join(" "), string_list(&service["command"]).join(" "))
}

/// The words of a shell script (names, flags, host names; not punctuation).
fn shell_words(script: &str) -> BTreeSet<&str> {
    script.split(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c))).filter(|w| !w.is_empty()).collect()
}

#[test]
fn compose_stack_is_consistent_with_the_connector_config() {
    let docker = repo_root().join("docker");
    let compose = yaml_file("docker/compose.yml");
    let services = compose["services"].as_object().expect("services");

    // Every file the stack mounts or builds from exists.
    for (name, service) in services {
        for (target, source) in volume_mounts(service) {
            assert!(docker.join(&source).exists(), "service {name}: mounted {source} (→ {target}) does not exist");
        }
        if let Some(build) = service.get("build") {
            let context = docker.join(str_of(&build["context"], "build context"));
            assert!(context.join("Cargo.toml").exists(), "service {name}: build context is not the repository root");
            let dockerfile = context.join(str_of(&build["dockerfile"], "dockerfile"));
            assert!(dockerfile.exists(), "service {name}: {} does not exist", dockerfile.display());
        }
        let image = service["image"].as_str().unwrap_or_default();
        assert!(!image.is_empty(), "service {name}: no image");
        assert!(image.contains(':') && !image.ends_with(":latest"), "service {name}: pin the image tag ({image})");
    }

    // The connectors: `regionflow run`, two or more, one config file.
    let connectors: Vec<(&String, &Value)> =
        services.iter().filter(|(_, s)| string_list(&s["command"]).first().is_some_and(|c| c == "run")).collect();
    let replicas: i64 = connectors.iter().map(|(_, s)| s["deploy"]["replicas"].as_i64().unwrap_or(1)).sum();
    assert!(replicas >= 2, "the stack runs {replicas} connector(s); it should run two or more");
    let mut resolved_configs = Vec::new();
    for (name, service) in &connectors {
        let args = string_list(&service["command"]);
        let config_path = flag(&args, "--config").unwrap_or_else(|| panic!("{name}: run without --config"));
        let mounts = volume_mounts(service);
        let source =
            mounts.get(config_path).unwrap_or_else(|| panic!("{name}: --config {config_path} is not a mounted file"));
        assert_eq!(source, "./regionflow.toml", "{name}: mounts docker/regionflow.toml");
        // The connector's configuration as it will run: the file plus the
        // service's environment overrides.
        let settings = validate(&docker.join(source), &environment(service));
        resolved_configs.push(resolved(&settings));
        assert!(
            service["stop_grace_period"].as_str().is_some_and(|g| humantime::parse_duration(g).is_ok()),
            "{name}: set stop_grace_period above connector.shutdown_timeout"
        );
        let grace = humantime::parse_duration(service["stop_grace_period"].as_str().expect("grace")).expect("grace");
        assert!(grace > resolved_configs.last().expect("config").shutdown_timeout, "{name}: stop_grace_period");
    }
    let config = &resolved_configs[0];

    // Kafka: the brokers are the kafka service's advertised listener.
    for broker in config.brokers.split(',') {
        let (host, _) = broker.rsplit_once(':').expect("host:port");
        let kafka = services.get(host).unwrap_or_else(|| panic!("kafka.brokers {broker}: no service `{host}`"));
        let advertised = environment(kafka)
            .into_iter()
            .find(|(k, _)| k == "KAFKA_ADVERTISED_LISTENERS")
            .map(|(_, v)| v)
            .unwrap_or_default();
        assert!(
            advertised.contains(&format!("//{broker}")),
            "kafka advertises {advertised:?}, connectors use {broker}"
        );
    }
    // The topic creator creates every source and dead-letter topic.
    let init = shell_text(&services["kafka-init"]);
    for topic in config.topics.iter().chain(&config.dlq_topics) {
        assert!(shell_words(&init).contains(topic.as_str()), "kafka-init does not create topic {topic}");
    }
    // The load generator writes to the pipeline's topic on the same brokers.
    let generator: Vec<String> = string_list(&services["generator"]["command"]);
    assert_eq!(generator.first().map(String::as_str), Some("generate"));
    assert_eq!(flag(&generator, "--brokers"), Some(config.brokers.as_str()), "generator brokers");
    let topic = flag(&generator, "--topic").expect("generator --topic");
    assert!(config.topics.iter().any(|t| t == topic), "generator topic {topic} is no pipeline's source");
    assert_eq!(services["generator"]["healthcheck"]["disable"], true, "the generator serves no health endpoint");

    // Redis: six cluster nodes, all of them seeds, all joined by the init service.
    let redis_services: BTreeSet<String> = services
        .iter()
        .filter(|(_, s)| string_list(&s["command"]).windows(2).any(|w| w[0] == "--cluster-enabled" && w[1] == "yes"))
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(redis_services.len(), 6, "a six-node Redis Cluster: {redis_services:?}");
    let seeds: BTreeSet<String> = config
        .redis_nodes
        .iter()
        .map(|url| {
            let host_port = url.trim_start_matches("redis://");
            let (host, port) = host_port.rsplit_once(':').expect("host:port");
            let command = string_list(&services.get(host).unwrap_or_else(|| panic!("{url}: no service"))["command"]);
            assert_eq!(flag(&command, "--port").unwrap_or("6379"), port, "{url}: port of service {host}");
            host.to_string()
        })
        .collect();
    assert_eq!(seeds, redis_services, "redis.nodes lists every cluster node");
    let init = shell_text(&services["redis-cluster-init"]);
    assert!(init.contains("--cluster create") && init.contains("--cluster-replicas 1"), "redis-cluster-init");
    for node in &redis_services {
        assert!(shell_words(&init).contains(node.as_str()), "redis-cluster-init does not join {node}");
    }

    // Prometheus scrapes the connectors' service on metrics.listen's port,
    // with the rules mounted where its config expects them.
    let prometheus = &services["prometheus"];
    let mounts = volume_mounts(prometheus);
    assert_eq!(mounts.get("/etc/prometheus").map(String::as_str), Some("../prometheus"));
    let args = string_list(&prometheus["command"]);
    assert!(args.iter().any(|a| a == "--config.file=/etc/prometheus/prometheus.yml"), "prometheus --config.file");
    let scrape = yaml_file("prometheus/prometheus.yml");
    let job = scrape["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "regionflow")
        .expect("a regionflow scrape job");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["port"].as_u64(), Some(config.metrics_port as u64), "scrape port = metrics.listen port");
    let scraped: Vec<String> = string_list(&sd["names"]);
    for (name, _) in &connectors {
        assert!(scraped.contains(name), "Prometheus does not discover connector service {name}");
    }
    for c in &resolved_configs {
        assert_eq!(c.metrics_port, config.metrics_port, "all connectors serve metrics on one port");
    }
}

#[test]
fn docker_compose_accepts_the_file_when_available() {
    let available =
        Command::new("docker").args(["compose", "version"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !available {
        eprintln!("SKIPPED: `docker compose` is not installed; docker/compose.yml was checked by serde_norway only");
        return;
    }
    let out = Command::new("docker")
        .args(["compose", "-f", "docker/compose.yml", "config", "--quiet"])
        .current_dir(repo_root())
        .output()
        .expect("docker compose config");
    assert!(out.status.success(), "docker compose config:\n{}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------- Dockerfile

/// Instructions of a Dockerfile: (INSTRUCTION, arguments), continuation
/// lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((instruction.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_from_existing_files_and_matches_the_config() {
    let root = repo_root();
    let text = read("docker/Dockerfile");
    let instructions = dockerfile_instructions(&text);
    let config = resolved(&validate(&root.join("docker/regionflow.toml"), &[]));

    let args: BTreeMap<String, String> = instructions
        .iter()
        .filter(|(i, _)| i == "ARG")
        .filter_map(|(_, a)| a.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let expand = |s: &str| args.iter().fold(s.to_string(), |s, (k, v)| s.replace(&format!("${{{k}}}"), v));
    let stages: Vec<String> = instructions.iter().filter(|(i, _)| i == "FROM").map(|(_, a)| expand(a)).collect();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:?}");
    assert!(stages[0].starts_with("rust:") && stages[0].contains("bookworm"), "builder on Debian bookworm: {stages:?}");
    assert!(stages.last().expect("stage").starts_with("debian:bookworm-slim"), "runtime stage: {stages:?}");

    // COPY sources exist in the build context, and the context holds what
    // the build reads: include_str!/include_bytes! targets and any explicit
    // Cargo targets (a missing [[bench]] file fails `cargo build`).
    let mut copied = Vec::new();
    for (_, args) in instructions.iter().filter(|(i, _)| i == "COPY") {
        let words: Vec<&str> = args.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = words.iter().copied().filter(|w| !w.starts_with("--")).collect();
        for source in &paths[..paths.len() - 1] {
            assert!(root.join(source).exists(), "COPY source {source} does not exist in the build context");
            copied.push(root.join(source));
        }
    }
    let is_copied = |path: &Path| copied.iter().any(|c| path.starts_with(c));
    let mut needed = vec![root.join("Cargo.toml"), root.join("Cargo.lock"), root.join("src/main.rs")];
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    if let Some(build) = manifest["package"].get("build").and_then(|b| b.as_str()) {
        needed.push(root.join(build));
    } else if root.join("build.rs").exists() {
        needed.push(root.join("build.rs"));
    }
    for (section, dir) in [("bench", "benches"), ("test", "tests"), ("example", "examples"), ("bin", "src/bin")] {
        for target in manifest.get(section).and_then(|t| t.as_array()).into_iter().flatten() {
            let path = target.get("path").and_then(|p| p.as_str()).map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(format!("{dir}/{}.rs", target["name"].as_str().expect("target name")))
            });
            needed.push(root.join(path));
        }
    }
    let mut sources = vec![root.join("src")];
    while let Some(dir) = sources.pop() {
        for entry in fs::read_dir(&dir).expect("source dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let code = fs::read_to_string(&path).expect("source file");
                for macro_name in ["include_str!(\"", "include_bytes!(\""] {
                    for (at, _) in code.match_indices(macro_name) {
                        let rest = &code[at + macro_name.len()..];
                        let included = &rest[..rest.find('"').expect("closing quote")];
                        needed.push(path.parent().expect("dir").join(included));
                    }
                }
            }
        }
    }
    for path in needed {
        assert!(is_copied(&path), "the image build needs {} but docker/Dockerfile does not COPY it", path.display());
    }

    // Runtime: non-root, CA certificates and linked libraries only, health check and port = metrics.listen.
    let runtime_start = instructions.iter().rposition(|(i, _)| i == "FROM").expect("FROM");
    let runtime = &instructions[runtime_start..];
    let user = runtime.iter().rev().find(|(i, _)| i == "USER").map(|(_, a)| a.as_str()).expect("USER");
    assert!(!["root", "0", "0:0"].contains(&user), "the runtime runs as root");
    for (_, run) in runtime.iter().filter(|(i, _)| i == "RUN") {
        if let Some(install) = run.split("apt-get install").nth(1) {
            let packages: Vec<&str> = install
                .split("&&")
                .next()
                .expect("command")
                .split_whitespace()
                .filter(|w| !w.starts_with('-'))
                .collect();
            assert_eq!(
                packages,
                ["ca-certificates", "libssl3", "libsasl2-2", "libsasl2-modules-gssapi-mit", "libcurl4"],
                "the runtime installs CA certificates and the libraries librdkafka links (OpenSSL, Cyrus SASL, libcurl) only"
            );
        }
    }
    let expose = runtime.iter().find(|(i, _)| i == "EXPOSE").map(|(_, a)| a.clone()).expect("EXPOSE");
    assert_eq!(expose.trim(), config.metrics_port.to_string(), "EXPOSE = metrics.listen port");
    let health = runtime.iter().find(|(i, _)| i == "HEALTHCHECK").map(|(_, a)| a.clone()).expect("HEALTHCHECK");
    let exec: Vec<String> = serde_json::from_str(health.split("CMD").nth(1).expect("CMD").trim()).expect("exec form");
    assert_eq!(&exec[..2], ["regionflow", "probe"], "health check uses `regionflow probe`");
    let entrypoint = runtime.iter().find(|(i, _)| i == "ENTRYPOINT").map(|(_, a)| a.clone()).expect("ENTRYPOINT");
    assert_eq!(serde_json::from_str::<Vec<String>>(&entrypoint).expect("exec form"), ["regionflow"]);
    let cmd = runtime.iter().find(|(i, _)| i == "CMD").map(|(_, a)| a.clone()).expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(&cmd).expect("exec form");
    assert_eq!(
        flag(&exec, "--config"),
        flag(&cmd, "--config"),
        "the health check probes the port of the configuration the container runs"
    );
    // The image drops debug info from the binary it ships.
    let build = instructions.iter().find(|(i, a)| i == "RUN" && a.contains("cargo build")).expect("cargo build");
    assert!(build.1.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"), "a stripped binary: {}", build.1);

    if !root.join(".dockerignore").exists() {
        eprintln!("NOTE: no .dockerignore: `docker build .` sends target/ and .git/ to the daemon");
    }
}

// ---------------------------------------------------------------- Kubernetes

#[test]
fn kubernetes_sidecar_example_is_consistent() {
    let docs = yaml_documents("deploy/kubernetes/regionflow-sidecar.yaml");
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let config_map = find("ConfigMap");
    let deployment = find("Deployment");
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"],
        "the Deployment selects its pods"
    );
    let spec = &pod["spec"];
    let sidecar = spec["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .find(|c| c["name"] == "regionflow")
        .expect("a regionflow init container");
    assert_eq!(sidecar["restartPolicy"], "Always", "native sidecar: init container with restartPolicy Always");
    assert!(!spec["containers"].as_array().expect("containers").is_empty(), "the pod runs the application too");

    // The configuration: a ConfigMap file, valid with the container's env.
    let args = string_list(&sidecar["args"]);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let config_path = flag(&args, "--config").expect("--config");
    let mount = sidecar["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| config_path.starts_with(str_of(&m["mountPath"], "mountPath")))
        .expect("the config file is on a mounted volume");
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"], "mounted from the ConfigMap");
    let file_name = config_path.rsplit('/').next().expect("file name");
    let key = volume["configMap"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["path"] == file_name))
        .map(|i| str_of(&i["key"], "key").to_string())
        .unwrap_or_else(|| file_name.to_string());
    let toml_text = str_of(&config_map["data"][&key], "ConfigMap data");
    assert!(!toml_text.contains("password ="), "no password in the ConfigMap");
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect();
    for wanted in ["REGIONFLOW__KAFKA__BROKERS", "REGIONFLOW__REDIS__NODES"] {
        assert!(env.iter().any(|(k, _)| k == wanted), "sidecar env override {wanted}");
    }
    // Passwords come from the Secret, not from the ConfigMap or a plain value.
    let secret = find("Secret");
    for wanted in ["REGIONFLOW__KAFKA__PROPERTIES__SASL_PASSWORD", "REGIONFLOW__REDIS__PASSWORD"] {
        let entry = sidecar["env"].as_array().expect("env").iter().find(|e| e["name"] == wanted);
        let reference = &entry.unwrap_or_else(|| panic!("sidecar env {wanted}"))["valueFrom"]["secretKeyRef"];
        assert_eq!(reference["name"], secret["metadata"]["name"], "{wanted} comes from the Secret");
        let key = str_of(&reference["key"], "secretKeyRef.key");
        assert!(!secret["stringData"][key].is_null() || !secret["data"][key].is_null(), "the Secret has {key}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(file_name);
    fs::write(&file, toml_text).expect("write ConfigMap TOML");
    let settings = validate(&file, &env);
    let config = resolved(&settings);
    let env_value = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).expect("env");
    assert_eq!(config.brokers, env_value("REGIONFLOW__KAFKA__BROKERS"), "brokers come from the environment");
    assert_eq!(config.redis_nodes.join(","), env_value("REGIONFLOW__REDIS__NODES"), "nodes come from the environment");

    // Probes and ports agree with metrics.listen.
    let port_number = |port: &Value| -> u64 {
        match port {
            Value::Number(n) => n.as_u64().expect("port number"),
            Value::String(name) => sidecar["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {name}")),
            other => panic!("probe port {other}"),
        }
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        assert_eq!(port_number(&get["port"]), config.metrics_port as u64, "{probe} port");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], config.metrics_port.to_string(), "scrape annotation port");
    let grace = spec["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    let stopping = config.shutdown_timeout + regionflow::connector::LEAVE_GROUP_TIMEOUT;
    assert!(grace > stopping.as_secs(), "grace period covers connector.shutdown_timeout and leaving the group");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
}

// ---------------------------------------------------------------- the PromQL helpers

fn promql(expr: &str) -> Expr {
    parse_promql(expr).expect("valid PromQL")
}

#[test]
fn alert_signals_drop_comparisons_and_set_operators() {
    let signals = |expr: &str| alert_signals(&promql(expr));
    let parsed = |exprs: &[&str]| exprs.iter().map(|e| promql(e)).collect::<Vec<_>>();
    assert_eq!(signals("regionflow_checkpoint_age_seconds > 300"), parsed(&["regionflow_checkpoint_age_seconds"]));
    assert_eq!(
        signals("max by (job, pipeline) (a) > 120 and on (job, pipeline) max by (job, pipeline) (deriv(a[15m])) > 0"),
        parsed(&["max by (job, pipeline) (a)", "max by (job, pipeline) (deriv(a[15m]))"])
    );
    assert_eq!(
        signals("sum(rate(x{o=\"a>b\"}[5m])) / sum(y) > 0.01"),
        parsed(&["sum(rate(x{o=\"a>b\"}[5m])) / sum(y)"])
    );
    assert_eq!(signals("up == 0 unless on(instance) z >= bool 2"), parsed(&["up", "z"]));
    assert_eq!(signals("x"), parsed(&["x"]));
    assert_eq!(signals("sum by (orders) (x) > 1"), parsed(&["sum by (orders) (x)"]));
    assert!(compares(&promql("sum(x > 1)")) && !compares(&promql("sum(x) / 2")));
    // Signals render as PromQL that parses back to themselves (observability
    // sends them to Prometheus).
    for signal in signals("max by (job) (deriv(a{p=~\"x|y\"}[15m])) > 0 or on (job) b offset 5m == 0") {
        assert_eq!(promql(&signal.to_string()), signal);
    }
}

#[test]
fn substitutes_grafana_variables() {
    let expr = "rate(x{p=~\"$pipeline\", r=~\"${region:regex}\"}[$__rate_interval])";
    assert_eq!(substitute_variables(expr, "1m", DashboardVariables::MatchAll), "rate(x{p=~\".*\", r=~\".*\"}[1m])");
    assert_eq!(
        substitute_variables(expr, "1m", DashboardVariables::Named),
        "rate(x{p=~\"$pipeline\", r=~\"$region\"}[1m])"
    );
}

#[test]
fn finds_metric_names_and_selectors() {
    let expr = promql(
        "sum by (le) (rate(regionflow_a_bucket{p=~\"$pipeline\",q=\"regionflow_no\"}[1m])) / pipeline:regionflow_b:rate1m",
    );
    assert_eq!(
        metric_names(&expr),
        Ok(vec!["regionflow_a_bucket".to_string(), "pipeline:regionflow_b:rate1m".to_string()])
    );
    let found = selectors(&expr);
    assert_eq!(
        found.iter().map(|s| selector_metric(s)).collect::<Vec<_>>(),
        [Some("regionflow_a_bucket"), Some("pipeline:regionflow_b:rate1m")]
    );
    assert!(has_regex_matcher(found[0], "p", "$pipeline"));
    assert!(!has_regex_matcher(found[0], "q", "regionflow_no") && !has_regex_matcher(found[1], "p", "$pipeline"));
    assert!(metric_names(&promql("{__name__=~\"regionflow_.*\"}")).is_err(), "a selector without a metric name");
}
