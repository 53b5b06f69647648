//! The sink ceiling: the entries the pipeline writes (built from the
//! compute run's results with the connector's own `RegionLayout`), written
//! with raw pipelines per primary: the same `FCALL` of the merge function,
//! and plain `HSET` of the public fields. Also the Redis counters
//! (commandstats) the connector run reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use regionflow::pipeline::compile;
use regionflow::redis::function::MERGE_FUNCTION;
use regionflow::redis::key_slot;
use regionflow::redis::{merge_call, partial};
use regionflow::region::{Capture, EntryWrite};
use regionflow::window::WindowResult;

use crate::options::Options;
use crate::process::{clock_ticks, cpu_seconds};
use crate::redis_cluster::RedisCluster;
use crate::support::{self, Workload};

// Redis: raw pipelines per primary, counters.

pub struct Redis {
    /// Primary port of each slot.
    slot_owner: Vec<u16>,
    primaries: Vec<u16>,
    connections: HashMap<u16, redis::aio::MultiplexedConnection>,
}

impl Redis {
    pub async fn connect(cluster: &RedisCluster) -> Redis {
        let primaries = cluster.primary_ports();
        let mut connections = HashMap::new();
        for &port in &primaries {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("client");
            // No response timeout: a deep pipeline of scripts can take longer
            // than redis-rs' default 500 ms on a loaded machine.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let con = client.get_multiplexed_async_connection_with_config(&config).await.expect("connection");
            connections.insert(port, con);
        }
        let mut any = connections.values().next().expect("a primary").clone();
        let slots: redis::Value =
            redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut any).await.expect("CLUSTER SLOTS");
        let mut slot_owner = vec![0u16; 16384];
        if let redis::Value::Array(ranges) = slots {
            for range in ranges {
                let redis::Value::Array(parts) = range else { continue };
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(i) => *i,
                    _ => panic!("CLUSTER SLOTS: unexpected {v:?}"),
                };
                let (start, end) = (int(&parts[0]), int(&parts[1]));
                let redis::Value::Array(node) = &parts[2] else { panic!("CLUSTER SLOTS node") };
                let port = int(&node[1]) as u16;
                for s in start..=end {
                    slot_owner[s as usize] = port;
                }
            }
        }
        for con in connections.values_mut() {
            MERGE_FUNCTION.load().query_async::<redis::Value>(con).await.expect("FUNCTION LOAD");
        }
        Redis { slot_owner, primaries, connections }
    }

    async fn each_primary(&self, cmd: &redis::Cmd) -> Vec<String> {
        let mut out = Vec::new();
        for port in &self.primaries {
            let mut con = self.connections[port].clone();
            let v: redis::Value = cmd.query_async(&mut con).await.expect("command on a primary");
            out.push(match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                redis::Value::VerbatimString { text, .. } => text,
                redis::Value::SimpleString(s) => s,
                redis::Value::Okay => "OK".into(),
                other => format!("{other:?}"),
            });
        }
        out
    }

    pub async fn flush_all(&self) {
        self.each_primary(&redis::cmd("FLUSHALL")).await;
    }

    pub async fn reset_stats(&self) {
        self.each_primary(redis::cmd("CONFIG").arg("RESETSTAT")).await;
    }

    /// Sum over primaries of `INFO` fields and `cmdstat_*` calls.
    pub async fn counters(&self) -> HashMap<String, u64> {
        let mut out: HashMap<String, u64> = HashMap::new();
        for info in self.each_primary(redis::cmd("INFO").arg("stats").arg("commandstats")).await {
            for line in info.lines() {
                let Some((name, value)) = line.trim().split_once(':') else { continue };
                if let Some(cmd) = name.strip_prefix("cmdstat_") {
                    let field =
                        |f: &str| value.split(',').find_map(|kv| kv.strip_prefix(f)).and_then(|v| v.parse().ok());
                    *out.entry(format!("calls_{cmd}")).or_default() += field("calls=").unwrap_or(0);
                    *out.entry(format!("usec_{cmd}")).or_default() += field("usec=").unwrap_or(0);
                } else if let Ok(v) = value.parse::<u64>() {
                    *out.entry(name.to_string()).or_default() += v;
                }
            }
        }
        out
    }

    /// Sends `commands` (key, packed command) to the primaries owning their
    /// keys as raw pipelines, `chunk` commands each, `inflight` pipelines
    /// per primary at once; returns entries/s.
    async fn pipelined(&self, commands: Vec<(String, redis::Cmd)>, chunk: usize, inflight: usize) -> f64 {
        let n = commands.len();
        let mut by_node: HashMap<u16, Vec<redis::Cmd>> = HashMap::new();
        for (key, cmd) in commands {
            by_node.entry(self.slot_owner[key_slot(key.as_bytes()) as usize]).or_default().push(cmd);
        }
        let errors = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let nodes = by_node.into_iter().map(|(port, cmds)| {
            let con = self.connections[&port].clone();
            let errors = errors.clone();
            async move {
                let pipes: Vec<redis::Pipeline> = cmds
                    .chunks(chunk)
                    .map(|c| {
                        let mut pipe = redis::pipe();
                        for cmd in c {
                            pipe.add_command(cmd.clone());
                        }
                        pipe
                    })
                    .collect();
                futures::stream::iter(pipes)
                    .map(|pipe| {
                        let mut con = con.clone();
                        let errors = errors.clone();
                        async move {
                            match pipe.query_async::<Vec<redis::Value>>(&mut con).await {
                                Ok(replies) => {
                                    let bad =
                                        replies.iter().filter(|v| matches!(v, redis::Value::ServerError(_))).count();
                                    errors.fetch_add(bad as u64, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    eprintln!("  sink pipeline: {e}");
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    })
                    .buffer_unordered(inflight)
                    .collect::<Vec<()>>()
                    .await;
            }
        });
        futures::future::join_all(nodes).await;
        let elapsed = started.elapsed().as_secs_f64();
        let errors = errors.load(Ordering::Relaxed);
        assert_eq!(errors, 0, "sink ceiling: {errors} commands failed");
        n as f64 / elapsed
    }
}

pub struct Sink {
    pub merge_per_s: f64,
    pub hset_per_s: f64,
    /// Commands one `merge.lua` run issues (counted by Redis as calls too).
    pub inner_per_script: f64,
    /// Redis's own time per `merge.lua` run (commandstats usec/calls).
    pub script_us: f64,
    /// This harness's CPU per entry while pipelining the scripts (the
    /// client-side cost of a write done with raw per-node pipelines).
    pub client_us: f64,
    /// The same writes with the change captured (`ARGV[11] = c`, what a
    /// region with a change feed sends), when asked for.
    pub with_changes: Option<MergePass>,
}

/// One pass of the merge function over the entries.
pub struct MergePass {
    pub per_s: f64,
    /// Redis's own time per run (commandstats usec/calls).
    pub script_us: f64,
    pub inner_per_script: f64,
    pub client_us: f64,
}

/// Calls of every command but this harness's own INFO and CONFIG.
pub fn all_calls(counters: &HashMap<String, u64>) -> f64 {
    counters
        .iter()
        .filter(|(k, _)| k.starts_with("calls_") && !k.starts_with("calls_info") && !k.starts_with("calls_config"))
        .map(|(_, v)| *v as f64)
        .sum()
}

/// `changes`: also a pass that captures each entry's change.
pub async fn sink_ceiling(
    redis: &Redis,
    workload: Workload,
    topic: &str,
    results: &[(i32, WindowResult)],
    opts: &Options,
    changes: bool,
) -> Sink {
    let config = support::pipeline_config(workload);
    let layout = compile::region_layout("rf", &config);
    let aggregates = compile::aggregates(&config);
    let spec = partial::aggregate_spec(aggregates.iter().map(|(f, n)| (*f, n.as_str())));
    let partitions = results.iter().map(|(p, _)| *p + 1).max().unwrap_or(1);
    let fields: Vec<Arc<str>> = (0..partitions).map(|p| regionflow::region::partial_field(topic, p).into()).collect();
    let writes: Vec<EntryWrite> =
        results.iter().map(|(p, r)| layout.write(r, &fields[*p as usize], 1, 1_000_000_000)).collect();
    // The calls the connector's region sends (`merge_call`).
    let merges = |capture: Capture| -> Vec<(String, redis::Cmd)> {
        writes
            .iter()
            .map(|w| {
                let partial = partial::entry_partial(&w.accumulators, w.epoch, w.offset);
                (w.key.clone(), merge_call(&EntryWrite { capture, ..w.clone() }, &partial, &spec))
            })
            .collect()
    };
    let plain = merge_pass(redis, merges(Capture::None), opts).await;
    let with_changes = if changes { Some(merge_pass(redis, merges(Capture::Publish), opts).await) } else { None };
    let hset: Vec<(String, redis::Cmd)> = writes
        .iter()
        .zip(results)
        .map(|(w, (_, r))| {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&w.key).arg("window_start").arg(w.window.start).arg("window_end").arg(w.window.end);
            for (name, acc) in ["count", "sum"].iter().zip(&r.accumulators) {
                cmd.arg(*name).arg(acc.render().unwrap_or_default());
            }
            (w.key.clone(), cmd)
        })
        .collect();
    drop(writes);
    redis.flush_all().await;
    let hset_per_s = redis.pipelined(hset, opts.sink_chunk, opts.sink_inflight).await;
    redis.flush_all().await;
    Sink {
        merge_per_s: plain.per_s,
        hset_per_s,
        inner_per_script: plain.inner_per_script,
        script_us: plain.script_us,
        client_us: plain.client_us,
        with_changes,
    }
}

/// `merges` into an empty cluster, with Redis's counters of that pass.
async fn merge_pass(redis: &Redis, merges: Vec<(String, redis::Cmd)>, opts: &Options) -> MergePass {
    let n = merges.len().max(1) as f64;
    redis.flush_all().await;
    redis.reset_stats().await;
    let cpu = cpu_seconds(std::process::id(), clock_ticks());
    let per_s = redis.pipelined(merges, opts.sink_chunk, opts.sink_inflight).await;
    let client_us = (cpu_seconds(std::process::id(), clock_ticks()) - cpu) * 1e6 / n;
    let counters = redis.counters().await;
    let scripts = (counters.get("calls_fcall").copied().unwrap_or(0) as f64).max(1.0);
    let inner_per_script = (all_calls(&counters) - scripts) / scripts;
    let script_us = counters.get("usec_fcall").copied().unwrap_or(0) as f64 / scripts;
    MergePass { per_s, script_us, inner_per_script, client_us }
}
