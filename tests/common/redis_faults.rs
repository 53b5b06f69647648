//! Redis faults beyond [`RedisCluster`]'s polite ones, for the chaos search:
//! a primary SIGKILLed *without* waiting for its replica (then restarted,
//! rejoining as the new primary's replica), `CLUSTER FAILOVER FORCE`, and
//! `CLIENT KILL`. Nodes are addressed by port; the harness keeps owning the
//! processes it started (a node killed here is reaped by its `Drop`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_cluster::RedisCluster;

const HEAL_TIMEOUT: Duration = Duration::from_secs(90);

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct NodeLine {
    id: String,
    port: u16,
    primary: bool,
    failed: bool,
    primary_id: Option<String>,
    serves_slots: bool,
}

fn query(port: u16, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (name, rest) = args.split_first().expect("a command");
    redis::cmd(name).arg(rest).query(&mut con)
}

fn query_string(port: u16, args: &[&str]) -> redis::RedisResult<String> {
    Ok(redis::from_redis_value(query(port, args)?)?)
}

fn cluster_nodes(port: u16) -> Option<Vec<NodeLine>> {
    let text = query_string(port, &["CLUSTER", "NODES"]).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ',']).next()?.rsplit_once(':')?.1.parse().ok()?;
                let flags: Vec<&str> = f.get(2)?.split(',').collect();
                Some(NodeLine {
                    id: f[0].to_string(),
                    port,
                    primary: flags.contains(&"master"),
                    failed: flags.iter().any(|x| matches!(*x, "fail" | "fail?" | "noaddr" | "handshake")),
                    primary_id: f.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
                    serves_slots: f.len() > 8,
                })
            })
            .collect(),
    )
}

/// Every node port the cluster started with (killed ones included).
pub fn ports(cluster: &RedisCluster) -> Vec<u16> {
    cluster.urls().iter().filter_map(|u| u.rsplit_once(':')?.1.parse().ok()).collect()
}

/// The view of the first node that answers.
fn view(ports: &[u16]) -> Vec<NodeLine> {
    ports.iter().find_map(|p| cluster_nodes(*p)).expect("some Redis node answers CLUSTER NODES")
}

/// Whether every answering node sees three serving primaries, each with a
/// replica whose link is up, and `cluster_state:ok`.
fn healthy(ports: &[u16]) -> Result<(), String> {
    let mut answering = 0;
    for &port in ports {
        let Some(nodes) = cluster_nodes(port) else { continue };
        answering += 1;
        let info = query_string(port, &["CLUSTER", "INFO"]).map_err(|e| format!("{port}: {e}"))?;
        if !info.contains("cluster_state:ok") {
            return Err(format!("{port}: cluster_state not ok"));
        }
        let primaries: Vec<&NodeLine> = nodes.iter().filter(|n| n.primary && n.serves_slots && !n.failed).collect();
        if primaries.len() != 3 {
            return Err(format!("{port} sees {} serving primaries", primaries.len()));
        }
        for p in primaries {
            if !nodes.iter().any(|n| n.primary_id.as_deref() == Some(&p.id) && !n.failed) {
                return Err(format!("{port}: primary {} has no live replica", p.port));
            }
        }
        let replication = query_string(port, &["INFO", "replication"]).map_err(|e| format!("{port}: {e}"))?;
        if replication.contains("role:slave") && !replication.contains("master_link_status:up") {
            return Err(format!("replica {port}: link to its primary is down"));
        }
    }
    if answering < 6 {
        return Err(format!("only {answering} of 6 nodes answer"));
    }
    Ok(())
}

/// Waits until the cluster is whole again: six nodes, three primaries each
/// with a replica in sync.
pub fn wait_healthy(ports: &[u16], after: &str) {
    let started = Instant::now();
    loop {
        match healthy(ports) {
            Ok(()) => return,
            Err(problem) if started.elapsed() > HEAL_TIMEOUT => {
                panic!("Redis Cluster not whole {HEAL_TIMEOUT:?} after {after}: {problem}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A Redis node restarted by this module; killed when dropped.
pub struct RestartedNode(Child);

impl Drop for RestartedNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILLs a serving primary (the `pick`-th, modulo three) at once, with
/// whatever it has not replicated yet, waits until its replica took over,
/// restarts it in its own directory (it rejoins as a replica) and waits
/// until the cluster is whole. Returns the port and the restarted process.
pub fn kill_primary_unreplicated(ports: &[u16], pick: usize) -> (u16, RestartedNode) {
    let mut primaries: Vec<NodeLine> =
        view(ports).into_iter().filter(|n| n.primary && n.serves_slots && !n.failed).collect();
    primaries.sort_by_key(|n| n.port);
    let victim = primaries[pick % primaries.len()].clone();
    let dir = match query(victim.port, &["CONFIG", "GET", "dir"]).expect("CONFIG GET dir") {
        redis::Value::Array(v) if v.len() == 2 => {
            PathBuf::from(redis::from_redis_value::<String>(v[1].clone()).expect("dir is text"))
        }
        other => panic!("CONFIG GET dir returned {other:?}"),
    };
    let info = query_string(victim.port, &["INFO", "server"]).expect("INFO server");
    let pid = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .expect("INFO server names the process id")
        .to_string();
    let status = Command::new("kill").args(["-KILL", &pid]).status().expect("kill runs");
    assert!(status.success(), "kill -KILL {pid} (Redis primary {})", victim.port);
    let others: Vec<u16> = ports.iter().copied().filter(|p| *p != victim.port).collect();
    let started = Instant::now();
    // Until a replica serves the victim's slots, no checkpoint or write to
    // them can succeed; the restart must wait for it, or the old primary
    // could come back as the primary it was, with nothing lost.
    loop {
        let promoted = others.iter().find_map(|p| cluster_nodes(*p)).is_some_and(|nodes| {
            nodes.iter().filter(|n| n.primary && n.serves_slots && !n.failed && n.id != victim.id).count() == 3
                && nodes.iter().any(|n| n.id == victim.id && n.failed)
        });
        if promoted {
            break;
        }
        assert!(started.elapsed() < HEAL_TIMEOUT, "no replica took over from killed primary {}", victim.port);
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("redis.log")).expect("node log");
    let child = Command::new("redis-server")
        .args(["--port", &victim.port.to_string()])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"])
        .args(["--cluster-replica-validity-factor", "0", "--cluster-allow-reads-when-down", "no"])
        .args(["--appendonly", "no", "--save", "", "--bind", "127.0.0.1", "--protected-mode", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("redis-server restarts");
    let restarted = RestartedNode(child);
    wait_healthy(ports, &format!("killing primary {}", victim.port));
    (victim.port, restarted)
}

/// `CLUSTER FAILOVER FORCE` on the `pick`-th replica (modulo three): it
/// takes over without its primary's agreement, so writes the primary had
/// not replicated are lost when it becomes the replica. Waits until the
/// cluster is whole. Returns the promoted port.
pub fn force_failover(ports: &[u16], pick: usize) -> u16 {
    let mut replicas: Vec<NodeLine> = view(ports).into_iter().filter(|n| n.primary_id.is_some() && !n.failed).collect();
    replicas.sort_by_key(|n| n.port);
    let replica = replicas[pick % replicas.len()].clone();
    query(replica.port, &["CLUSTER", "FAILOVER", "FORCE"]).expect("CLUSTER FAILOVER FORCE");
    let started = Instant::now();
    while !cluster_nodes(replica.port)
        .is_some_and(|nodes| nodes.iter().any(|n| n.id == replica.id && n.primary && n.serves_slots))
    {
        assert!(started.elapsed() < HEAL_TIMEOUT, "replica {} did not take over", replica.port);
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_healthy(ports, &format!("CLUSTER FAILOVER FORCE on {}", replica.port));
    replica.port
}

/// `CLIENT KILL TYPE normal` on every serving primary: every client
/// connection (the connectors' and the test's own) is closed. Returns how
/// many connections were killed, per port.
pub fn kill_clients(ports: &[u16]) -> BTreeMap<u16, i64> {
    let primaries: Vec<u16> =
        view(ports).into_iter().filter(|n| n.primary && n.serves_slots && !n.failed).map(|n| n.port).collect();
    primaries
        .into_iter()
        .map(|port| {
            let killed = match query(port, &["CLIENT", "KILL", "TYPE", "normal"]) {
                Ok(redis::Value::Int(n)) => n,
                _ => -1,
            };
            (port, killed)
        })
        .collect()
}

/// The serving primaries' ports, for readers that scan every shard.
pub fn primary_ports(ports: &[u16]) -> Vec<u16> {
    view(ports).into_iter().filter(|n| n.primary && n.serves_slots && !n.failed).map(|n| n.port).collect()
}
