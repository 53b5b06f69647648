//! Integration-test harness: a real six-node Redis Cluster (three primaries,
//! one replica each) built from local `redis-server` processes.
//!
//! Why real processes instead of a mock: regionflow depends on cluster
//! behaviour that mocks get wrong — hash-slot routing, MOVED redirections and
//! replica promotion after a primary dies. Each [`RedisCluster`] is private to
//! the test that starts it (its own ports and temp dir), so tests can run in
//! parallel, within one test binary or across several.
//!
//! The API is plain synchronous std code so any test can use it. From a
//! `#[tokio::test]`, call the slow methods (`start`, `kill_primary_for_key`)
//! through `tokio::task::block_in_place` or `spawn_blocking`, so the runtime
//! keeps driving the clients under test meanwhile.
//!
//! [`RedisCluster::start_tls`] starts the same cluster TLS-only, with mutual
//! TLS and an ACL user instead of the `default` user (see
//! `secure/redis_tls.rs`); the harness then reaches its nodes the same way.
//!
//! Needs `redis-server` and `redis-cli` (Redis 7, built with TLS) on PATH; on
//! Debian run `scripts/setup-test-deps.sh`.

use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::TcpListener;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use super::secure::redis_tls::RedisTls;

const NODE_COUNT: usize = 6;
const PRIMARY_COUNT: usize = NODE_COUNT / 2;
const SLOT_COUNT: &str = "16384";
/// Redis Cluster always puts a node's bus port at its client port + 10000.
const BUS_PORT_OFFSET: u16 = 10000;
/// Client ports are drawn from here. Adding the bus offset keeps every bus
/// port below 32768, where Linux's default ephemeral range starts, so the
/// kernel never hands one of our ports to an outgoing connection.
const CLIENT_PORTS: Range<u16> = 10000..22768;

/// Generous because tests run in parallel on small (2-core) CI machines, but
/// bounded so a broken cluster fails the test instead of hanging it.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(60);
const CLUSTER_STABLE_TIMEOUT: Duration = Duration::from_secs(60);
const REPLICA_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A node failing to start is almost always a port another process grabbed
/// between our bind test and redis-server's own bind; retry on a new port.
const NODE_START_ATTEMPTS: usize = 20;
const LOG_TAIL_LINES: usize = 20;

/// Client port and inclusive slot ranges of each primary serving slots.
type SlotOwners = Vec<(u16, Vec<(i64, i64)>)>;

/// A running Redis Cluster; dropping it kills every node and deletes its files.
pub struct RedisCluster {
    nodes: Vec<Node>,
    server_bin: PathBuf,
    cli_bin: PathBuf,
    /// Set once a panic message has already carried the node logs, so that
    /// `Drop` does not print them a second time. Atomic only to keep the
    /// cluster `Sync`, so tests may share one through a static.
    logs_reported: AtomicBool,
    /// Set for a TLS-only cluster: how every connection must be made.
    tls: Option<RedisTls>,
    // Dropped after `nodes` (declaration order), i.e. once no process uses it.
    dir: TempDir,
}

impl RedisCluster {
    /// Six nodes: three primaries with one replica each, on free loopback
    /// ports, each in its own temp dir. Returns once every node reports a
    /// healthy cluster and every replica is in sync with its primary.
    ///
    /// Panics with a clear message if redis-server/redis-cli are missing, and
    /// with the tail of the node logs if the cluster does not come up in time.
    pub fn start() -> RedisCluster {
        Self::start_with(false)
    }

    /// As [`RedisCluster::start`], TLS-only: no plain-text port, TLS on the
    /// cluster bus and replication, client certificates required, and the
    /// ACL user of [`RedisCluster::tls`] instead of `default`.
    pub fn start_tls() -> RedisCluster {
        Self::start_with(true)
    }

    /// The certificates and user of a cluster from [`RedisCluster::start_tls`].
    pub fn tls(&self) -> &RedisTls {
        self.tls.as_ref().expect("a cluster started with RedisCluster::start_tls")
    }

    fn start_with(tls: bool) -> RedisCluster {
        let server_bin = find_on_path("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server not found on PATH: run scripts/setup-test-deps.sh \
                 (installs Debian's redis-server)"
            )
        });
        let cli_bin = find_on_path("redis-cli").unwrap_or_else(|| {
            panic!(
                "redis-cli not found on PATH: run scripts/setup-test-deps.sh \
                 (installs Debian's redis-tools)"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("regionflow-redis-cluster-")
            .tempdir()
            .expect("cannot create a temp dir for the Redis Cluster");
        let tls = tls.then(|| RedisTls::issue(dir.path()));

        // Built before anything is started so that a panic part-way through
        // still drops it and kills the nodes already running.
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(NODE_COUNT),
            server_bin,
            cli_bin,
            logs_reported: AtomicBool::new(false),
            tls,
            dir,
        };
        for _ in 0..NODE_COUNT {
            let node = cluster.start_node();
            cluster.nodes.push(node);
        }
        cluster.create_cluster();
        cluster.wait_until_stable("cluster creation");
        cluster
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` for a TLS cluster) for every
    /// node still running (killed nodes are left out so clients are not
    /// seeded with dead addresses).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        self.live_nodes().map(|node| format!("{scheme}://127.0.0.1:{}", node.port)).collect()
    }

    /// Ports of the current primaries (nodes serving slots), sorted.
    pub fn primary_ports(&self) -> Vec<u16> {
        let entries = self.cluster_nodes_from_any();
        let mut ports: Vec<u16> =
            entries.iter().filter(|e| e.is_serving_primary() && self.is_live(e.port)).map(|e| e.port).collect();
        ports.sort_unstable();
        ports
    }

    /// `CLIENT PAUSE <for> WRITE` on every primary: writes (scripts and
    /// functions included) wait in Redis until the pause ends; reads go on.
    pub fn pause_writes(&self, duration: Duration) {
        let millis = duration.as_millis().to_string();
        for port in self.primary_ports() {
            self.node_cmd(port, &["CLIENT", "PAUSE", &millis, "WRITE"]);
        }
    }

    /// SIGKILLs the primary owning `key`'s slot and waits until a replica has
    /// been promoted and every surviving node reports a healthy cluster.
    /// Returns the killed port.
    ///
    /// Before killing, waits until the primary's replicas have acknowledged
    /// everything written so far: replication is asynchronous, and tests want
    /// "the data survives a failover", not a race against replication lag.
    pub fn kill_primary_for_key(&mut self, key: &str) -> u16 {
        let entries = self.cluster_nodes_from_any();
        let owner = self.owner_of(&entries, key);
        let has_live_replica = entries
            .iter()
            .any(|e| e.master_id.as_deref() == Some(owner.id.as_str()) && !e.is_failed() && self.is_live(e.port));
        if !has_live_replica {
            panic!(
                "primary {} (key {key:?}) has no live replica to fail over to; \
                 a cluster from RedisCluster::start survives one kill per shard",
                owner.port
            );
        }
        let port = owner.port;

        self.wait_for_replicas_to_catch_up(port);
        self.nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("primary reported by the cluster is not one of our nodes")
            .kill();
        self.wait_until_stable(&format!("killing primary {port}"));
        port
    }

    /// The port of the primary owning `key`'s slot.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        self.owner_of(&self.cluster_nodes_from_any(), key).port
    }

    fn owner_of<'e>(&self, entries: &'e [NodeEntry], key: &str) -> &'e NodeEntry {
        let slot = match self.cmd_on_any(&["CLUSTER", "KEYSLOT", key]) {
            redis::Value::Int(slot) => slot,
            other => panic!("CLUSTER KEYSLOT {key:?} returned {other:?}"),
        };
        entries
            .iter()
            .find(|e| e.is_serving_primary() && e.owns_slot(slot))
            .unwrap_or_else(|| panic!("no live primary owns slot {slot} (key {key:?})"))
    }

    /// SIGSTOPs the replica of the primary owning `key`'s slot: the primary
    /// goes on acknowledging writes that no replica holds. Returns the
    /// primary's port and a guard that continues the replica when dropped
    /// (or at [`StoppedReplica::resume`]).
    pub fn stop_replica_for_key(&self, key: &str) -> (u16, StoppedReplica) {
        let entries = self.cluster_nodes_from_any();
        let owner = self.owner_of(&entries, key);
        let replica = entries
            .iter()
            .find(|e| e.master_id.as_deref() == Some(owner.id.as_str()) && !e.is_failed() && self.is_live(e.port))
            .unwrap_or_else(|| panic!("primary {} (key {key:?}) has no live replica", owner.port));
        let pid = self
            .live_nodes()
            .find(|node| node.port == replica.port)
            .and_then(|node| node.child.as_ref())
            .expect("the replica is one of our nodes")
            .id();
        let stopped = StoppedReplica { pid: Some(pid) };
        stopped.signal("-STOP");
        (owner.port, stopped)
    }

    /// Runs one command on one node (a new connection each time) and returns
    /// the raw reply, e.g. `node_cmd(port, &["DBSIZE"])`. Panics on a
    /// connection error or an error reply.
    pub fn node_cmd(&self, port: u16, args: &[&str]) -> redis::Value {
        try_cmd(self.tls.as_ref(), port, args)
            .unwrap_or_else(|e| panic!("`{}` on Redis node {port} failed: {e}", args.join(" ")))
    }

    /// All keys matching `pattern` across all primaries (SCAN on each),
    /// deduplicated and sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = BTreeSet::new();
        for port in self.primary_ports() {
            let mut con =
                connect(self.tls.as_ref(), port).unwrap_or_else(|e| panic!("cannot connect to Redis node {port}: {e}"));
            scan_into(&mut con, pattern, &mut keys).unwrap_or_else(|e| panic!("SCAN on Redis node {port} failed: {e}"));
        }
        keys.into_iter().collect()
    }

    fn live_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.child.is_some())
    }

    fn is_live(&self, port: u16) -> bool {
        self.live_nodes().any(|node| node.port == port)
    }

    /// Starts one redis-server and waits until it answers, moving to another
    /// port when the process dies at start-up (port taken meanwhile).
    fn start_node(&self) -> Node {
        let mut failures = Vec::new();
        for _ in 0..NODE_START_ATTEMPTS {
            let port = reserve_port_pair();
            let mut node = self.spawn_node(port);
            match node.wait_until_ready(self.tls.as_ref()) {
                Ok(()) => return node,
                Err(StartError::Exited(status)) => {
                    failures.push(format!(
                        "port {port}: redis-server exited with {status}; log tail:\n{}",
                        tail(&node.log_path(), LOG_TAIL_LINES)
                    ));
                }
                Err(StartError::TimedOut(last_error)) => {
                    let log = tail(&node.log_path(), LOG_TAIL_LINES);
                    self.logs_reported.store(true, Ordering::Relaxed);
                    panic!(
                        "redis-server on port {port} did not answer within \
                         {NODE_START_TIMEOUT:?} (last error: {last_error}); log tail:\n{log}"
                    );
                }
            }
        }
        self.logs_reported.store(true, Ordering::Relaxed);
        panic!("could not start a redis-server after {NODE_START_ATTEMPTS} attempts:\n{}", failures.join("\n"));
    }

    fn spawn_node(&self, port: u16) -> Node {
        let dir = self.dir.path().join(format!("node-{port}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut node = Node { port, dir, child: None };
        let log = File::create(node.log_path())
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", node.log_path().display()));
        let log_err = log.try_clone().expect("cannot duplicate log file handle");

        let mut cmd = Command::new(&self.server_bin);
        match &self.tls {
            Some(tls) => cmd.args(tls.server_args(port)),
            None => cmd.args(["--port", &port.to_string()]),
        };
        cmd.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            // Replicas may always take over however long they were cut off:
            // tests kill primaries on purpose and want a prompt failover.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-allow-reads-when-down", "no"])
            .args(["--appendonly", "no"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&node.dir)
            .args(["--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            // In the foreground so that we own the process and can kill it.
            .args(["--daemonize", "no"])
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        node.child = Some(
            spawn_tied_to_test_process(cmd).unwrap_or_else(|e| panic!("cannot run {}: {e}", self.server_bin.display())),
        );
        node
    }

    fn create_cluster(&self) {
        let log_path = self.dir.path().join("cluster-create.log");
        let log = File::create(&log_path).unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("cannot duplicate log file handle");

        let mut cmd = Command::new(&self.cli_bin);
        if let Some(tls) = &self.tls {
            let (name, value) = tls.cli_env();
            cmd.args(tls.cli_args()).env(name, value);
        }
        cmd.args(["--cluster", "create"])
            .args(self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child =
            spawn_tied_to_test_process(cmd).unwrap_or_else(|e| panic!("cannot run {}: {e}", self.cli_bin.display()));

        // redis-cli waits for the nodes to agree without a time limit of its own.
        let deadline = Instant::now() + CLUSTER_CREATE_TIMEOUT;
        let failure = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return,
                Ok(Some(status)) => break format!("exited with {status}"),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break format!("did not finish within {CLUSTER_CREATE_TIMEOUT:?}");
                }
                Ok(None) => thread::sleep(POLL_INTERVAL),
                Err(e) => break format!("could not be waited for: {e}"),
            }
        };
        let output = fs::read_to_string(&log_path).unwrap_or_default();
        let logs = self.log_tails();
        self.logs_reported.store(true, Ordering::Relaxed);
        panic!("`redis-cli --cluster create` {failure}; its output:\n{output}\n{logs}");
    }

    /// Polls until every live node agrees the cluster is healthy (see
    /// `check_stable`); panics with the node logs on timeout.
    fn wait_until_stable(&self, after: &str) {
        let deadline = Instant::now() + CLUSTER_STABLE_TIMEOUT;
        loop {
            let problem = match self.check_stable() {
                Ok(()) => return,
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                let logs = self.log_tails();
                self.logs_reported.store(true, Ordering::Relaxed);
                panic!(
                    "Redis Cluster not healthy {CLUSTER_STABLE_TIMEOUT:?} after {after}: \
                     {problem}\n{logs}"
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Healthy means what a client needs to get consistent answers: on every
    /// live node the cluster is ok with all slots served, all nodes know each
    /// other, they all agree which live primaries own which slots, and every
    /// replica's link to its primary is up.
    fn check_stable(&self) -> Result<(), String> {
        // The first node's view, which every other node must match.
        let mut agreed: Option<(u16, SlotOwners)> = None;
        let known_nodes = self.nodes.len().to_string();
        for node in self.live_nodes() {
            let port = node.port;
            let info = try_string(self.tls.as_ref(), port, &["CLUSTER", "INFO"])
                .map_err(|e| format!("CLUSTER INFO on {port} failed: {e}"))?;
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", SLOT_COUNT),
                ("cluster_slots_ok", SLOT_COUNT),
                ("cluster_known_nodes", known_nodes.as_str()),
            ] {
                let got = info_field(&info, field);
                if got != Some(want) {
                    return Err(format!("node {port}: {field} is {got:?}, want {want:?}"));
                }
            }

            let mut owners: SlotOwners = cluster_nodes(self.tls.as_ref(), port)?
                .into_iter()
                .filter(|e| e.is_serving_primary())
                .map(|e| (e.port, e.slots))
                .collect();
            owners.sort();
            if let Some(dead) = owners.iter().find(|(p, _)| !self.is_live(*p)) {
                return Err(format!("node {port} still routes slots to dead node {}", dead.0));
            }
            if owners.len() != PRIMARY_COUNT {
                return Err(format!("node {port} sees {} primaries serving slots, want {PRIMARY_COUNT}", owners.len()));
            }
            match &agreed {
                None => agreed = Some((port, owners)),
                Some((first, first_owners)) if *first_owners != owners => {
                    return Err(format!(
                        "nodes {first} and {port} disagree on slot owners: \
                         {first_owners:?} vs {owners:?}"
                    ));
                }
                Some(_) => {}
            }

            let replication = try_string(self.tls.as_ref(), port, &["INFO", "replication"])
                .map_err(|e| format!("INFO replication on {port} failed: {e}"))?;
            if info_field(&replication, "role") == Some("slave") {
                let link = info_field(&replication, "master_link_status");
                if link != Some("up") {
                    return Err(format!("replica {port}: master_link_status is {link:?}"));
                }
            }
        }
        Ok(())
    }

    /// Waits until every replica of the primary on `port` has acknowledged the
    /// primary's current replication offset.
    fn wait_for_replicas_to_catch_up(&self, port: u16) {
        let info = self.replication_info(port);
        let target: i64 = info_field(&info, "master_repl_offset")
            .and_then(|offset| offset.parse().ok())
            .unwrap_or_else(|| panic!("node {port}: no usable master_repl_offset in:\n{info}"));
        let deadline = Instant::now() + REPLICA_CATCH_UP_TIMEOUT;
        loop {
            let info = self.replication_info(port);
            // Replicas appear as `slaveN:ip=...,port=...,state=online,offset=N,lag=0`.
            let replicas: Vec<&str> =
                info.lines().filter(|line| line.starts_with("slave") && line.contains("offset=")).collect();
            let caught_up = !replicas.is_empty()
                && replicas.iter().all(|line| {
                    let field = |name: &str| {
                        line.split_once(':')
                            .map_or("", |(_, rest)| rest)
                            .split(',')
                            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    };
                    field("state") == Some("online")
                        && field("offset").and_then(|o| o.parse::<i64>().ok()).is_some_and(|o| o >= target)
                });
            if caught_up {
                return;
            }
            if Instant::now() >= deadline {
                let logs = self.log_tails();
                self.logs_reported.store(true, Ordering::Relaxed);
                panic!(
                    "replicas of primary {port} did not reach offset {target} within \
                     {REPLICA_CATCH_UP_TIMEOUT:?}:\n{info}\n{logs}"
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn replication_info(&self, port: u16) -> String {
        try_string(self.tls.as_ref(), port, &["INFO", "replication"])
            .unwrap_or_else(|e| panic!("INFO replication on Redis node {port} failed: {e}"))
    }

    /// Runs a command on the first live node that answers.
    fn cmd_on_any(&self, args: &[&str]) -> redis::Value {
        let mut errors = Vec::new();
        for node in self.live_nodes() {
            match try_cmd(self.tls.as_ref(), node.port, args) {
                Ok(value) => return value,
                Err(e) => errors.push(format!("{}: {e}", node.port)),
            }
        }
        panic!("`{}` failed on every live node: {errors:?}", args.join(" "));
    }

    fn cluster_nodes_from_any(&self) -> Vec<NodeEntry> {
        let mut errors = Vec::new();
        for node in self.live_nodes() {
            match cluster_nodes(self.tls.as_ref(), node.port) {
                Ok(entries) => return entries,
                Err(e) => errors.push(e),
            }
        }
        let logs = self.log_tails();
        self.logs_reported.store(true, Ordering::Relaxed);
        panic!("CLUSTER NODES failed on every live node: {errors:?}\n{logs}");
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let state = if node.child.is_some() { "running" } else { "killed" };
            out.push_str(&format!(
                "--- redis node {} ({state}), last {LOG_TAIL_LINES} lines of {} ---\n{}\n",
                node.port,
                node.log_path().display(),
                tail(&node.log_path(), LOG_TAIL_LINES)
            ));
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // A failing test usually fails because of the cluster; its logs are
        // about to be deleted with the temp dir, so show them now.
        if thread::panicking() && !self.logs_reported.load(Ordering::Relaxed) {
            eprintln!("Redis Cluster logs (test panicked):\n{}", self.log_tails());
        }
        for node in &mut self.nodes {
            node.kill();
        }
        // `dir` (the TempDir) is removed when the fields drop, after this.
    }
}

struct Node {
    port: u16,
    dir: PathBuf,
    /// `None` once the node has been killed.
    child: Option<Child>,
}

enum StartError {
    Exited(ExitStatus),
    TimedOut(String),
}

impl Node {
    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Waits until our own redis-server answers on the port. Checking the
    /// process id matters: if our server lost the port to another test's
    /// server, that one would answer PING just as well.
    fn wait_until_ready(&mut self, tls: Option<&RedisTls>) -> Result<(), StartError> {
        let pid = self.child.as_ref().expect("node not started").id().to_string();
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("node not started");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(StartError::Exited(status));
            }
            let last_error = match try_string(tls, self.port, &["INFO", "server"]) {
                Ok(info) if info_field(&info, "process_id") == Some(pid.as_str()) => {
                    return Ok(());
                }
                Ok(_) => "the port is answered by another process".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(StartError::TimedOut(last_error));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILL (no clean shutdown: tests want crash behaviour, and it is fast).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A replica stopped by [`RedisCluster::stop_replica_for_key`].
pub struct StoppedReplica {
    pid: Option<u32>,
}

impl StoppedReplica {
    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid {
            let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill runs");
            assert!(status.success(), "kill {signal} {pid} failed");
        }
    }

    /// Lets the replica catch up.
    pub fn resume(mut self) {
        self.signal("-CONT");
        self.pid = None;
    }
}

impl Drop for StoppedReplica {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
    }
}

/// One line of CLUSTER NODES:
/// `<id> <ip:port@cport[,hostname]> <flags> <master-id|-> <ping> <pong> <epoch> <link> <slot>...`
#[derive(Debug)]
struct NodeEntry {
    id: String,
    port: u16,
    flags: Vec<String>,
    master_id: Option<String>,
    /// Inclusive slot ranges.
    slots: Vec<(i64, i64)>,
}

impl NodeEntry {
    fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| matches!(f.as_str(), "fail" | "fail?" | "noaddr" | "handshake"))
    }

    /// A demoted or dead primary keeps the `master` flag but loses its slots.
    fn is_serving_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master") && !self.is_failed() && !self.slots.is_empty()
    }

    fn owns_slot(&self, slot: i64) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

fn cluster_nodes(tls: Option<&RedisTls>, port: u16) -> Result<Vec<NodeEntry>, String> {
    let text =
        try_string(tls, port, &["CLUSTER", "NODES"]).map_err(|e| format!("CLUSTER NODES on {port} failed: {e}"))?;
    Ok(parse_cluster_nodes(&text))
}

fn parse_cluster_nodes(text: &str) -> Vec<NodeEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            // Nodes still in handshake have no usable address; skip them.
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let slots = fields[8..]
                .iter()
                // `[slot->-id]` / `[slot-<-id]` mark migrations, not ownership.
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            Some(NodeEntry {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}

fn connect(tls: Option<&RedisTls>, port: u16) -> redis::RedisResult<redis::Connection> {
    let client = match tls {
        Some(tls) => tls.node_client(port)?,
        None => redis::Client::open(format!("redis://127.0.0.1:{port}"))?,
    };
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    // A wedged node must fail the poll, not hang the test.
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

fn try_cmd(tls: Option<&RedisTls>, port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let (name, rest) = args.split_first().expect("a Redis command needs at least a name");
    let mut con = connect(tls, port)?;
    redis::cmd(name).arg(rest).query(&mut con)
}

fn try_string(tls: Option<&RedisTls>, port: u16, args: &[&str]) -> redis::RedisResult<String> {
    let value = try_cmd(tls, port, args)?;
    Ok(redis::from_redis_value(value)?)
}

/// The value of `field` in an INFO-style `field:value` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|line| line.trim_end().split_once(':'))
        .find_map(|(key, value)| (key == field).then_some(value))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read log: {e})"),
    }
}

/// Picks a client port such that it and its bus port are free now, and that
/// no other cluster of any test process has picked either: each pick is
/// also an exclusive lock on a file named after the port, held until the
/// process exits. A port that is free only because a fault killed its node
/// (which a chaos test restarts on the same port moments later) is so never
/// handed to another process's cluster, whose nodes would then gossip with
/// this one's (seen when two chaos searches ran side by side).
fn reserve_port_pair() -> u16 {
    // Never released: a process starts few clusters, and never reusing a port
    // rules out talking to a lingering node of an earlier cluster.
    static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    static LOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
    let lock_dir = std::env::temp_dir().join("regionflow-test-ports");
    fs::create_dir_all(&lock_dir).expect("port lock directory");
    let span = CLIENT_PORTS.len() as u64;
    for _ in 0..10_000 {
        let port = CLIENT_PORTS.start + (random_u64() % span) as u16;
        let bus = port + BUS_PORT_OFFSET;
        if reserved.contains(&port) || reserved.contains(&bus) {
            continue;
        }
        let lock = File::create(lock_dir.join(port.to_string())).expect("port lock file");
        if lock.try_lock().is_err() {
            continue; // another process's cluster holds it
        }
        if is_port_free(port) && is_port_free(bus) {
            reserved.insert(port);
            reserved.insert(bus);
            LOCKS.lock().unwrap_or_else(PoisonError::into_inner).push(lock);
            return port;
        }
    }
    panic!("no free loopback port pair (port, port+{BUS_PORT_OFFSET}) in {CLIENT_PORTS:?}");
}

fn is_port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Random enough to spread parallel test processes over the port range,
/// without pulling in a crate: std's hasher keys are randomly seeded.
fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    hasher.finish()
}

/// Spawns `cmd` so that, on Linux, the kernel SIGKILLs it if the test process
/// dies without unwinding (SIGKILL, abort, a CI timeout) and `Drop` never
/// runs; otherwise redis-server processes would outlive the test run.
///
/// The kernel's "parent" for `PR_SET_PDEATHSIG` is the *thread* that forked,
/// so all forks go through one thread that lives as long as the process.
/// Forking from the calling thread would kill the nodes when that thread ends
/// — e.g. a retiring `spawn_blocking` worker, or a cluster shared by tests.
#[cfg(target_os = "linux")]
fn spawn_tied_to_test_process(mut cmd: Command) -> io::Result<Child> {
    use std::os::raw::{c_int, c_ulong};
    use std::os::unix::process::CommandExt;
    use std::sync::{mpsc, OnceLock};

    // Declared by hand: std links libc anyway, and the tests have no libc crate.
    extern "C" {
        fn prctl(option: c_int, ...) -> c_int;
        fn getppid() -> c_int;
    }
    const PR_SET_PDEATHSIG: c_int = 1;
    const SIGKILL: c_ulong = 9;

    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec and only makes two
    // async-signal-safe system calls; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect; then no
            // signal would ever come.
            if getppid() as u32 != parent {
                return Err(io::Error::other("test process exited"));
            }
            Ok(())
        });
    }

    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("redis-node-spawner".to_string())
            .spawn(move || {
                for (mut cmd, reply) in incoming {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the redis-node-spawner thread");
        requests
    });
    let gone = || io::Error::other("the redis-node-spawner thread is gone");
    let (reply, response) = mpsc::channel();
    spawner.send((cmd, reply)).map_err(|_| gone())?;
    response.recv().map_err(|_| gone())?
}

#[cfg(not(target_os = "linux"))]
fn spawn_tied_to_test_process(mut cmd: Command) -> io::Result<Child> {
    cmd.spawn()
}

/// Adds every key of one node matching `pattern` to `keys` (a full SCAN).
pub fn scan_into(con: &mut redis::Connection, pattern: &str, keys: &mut BTreeSet<String>) -> redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(con)?;
        keys.extend(batch);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
