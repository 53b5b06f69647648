//! The real `regionflow` binary as a child process, for tests that crash,
//! stop, pause and restart connectors. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::free_port;
use super::prom_text::Exposition;

pub struct Connector {
    pub name: String,
    child: Option<Child>,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Connector {
    /// Starts `regionflow run --config <config>` with JSON logs in `dir`.
    pub fn start(name: &str, config: &Path, dir: &Path) -> Connector {
        let metrics_port = free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_regionflow"))
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("REGIONFLOW__METRICS__LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env(
                "RUST_LOG",
                std::env::var("REGIONFLOW_CHILD_LOG").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("regionflow binary starts");
        let connector = Connector { name: name.to_string(), child: Some(child), metrics_port, log };
        let started = Instant::now();
        while connector.scrape().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{name} serves /metrics within 30s:\n{}",
                connector.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        connector
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a graceful exit; returns whether it exited 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        self.signal("-TERM");
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.success();
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The `/metrics` text, or `None` when it does not answer.
    pub fn scrape(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
    }

    /// Sum of the samples of metric `name` that carry every one of `labels`
    /// (0 when `/metrics` does not answer).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        Exposition::parse(&self.scrape().unwrap_or_default()).sum(name, labels)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines whose message is `message`.
    pub fn log_events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Only a process not reaped yet: a reaped one's id may already
            // belong to another test's process.
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            if let Ok(dir) = std::env::var("REGIONFLOW_KEEP_LOGS") {
                // One test binary runs many tests: name the copy after the test.
                let test = std::thread::current().name().unwrap_or("test").replace("::", "-");
                let copy = std::path::Path::new(&dir).join(format!("{test}-{}.log", self.name));
                let _ = std::fs::copy(&self.log, copy);
            }
            let logs = self.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            eprintln!("--- last log lines of connector {} ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
