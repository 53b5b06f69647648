//! Figures of a process (CPU time, memory) and of the machine, from /proc.

use std::process::Command;

// Process figures.

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"), ticks)
}

/// User + system CPU seconds of a process's Kafka client threads:
/// librdkafka's own (`rdk:main`, `rdk:broker…`) and rust-rdkafka's producer
/// polling thread, which runs the delivery callbacks.
pub fn kafka_threads_cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    tasks
        .filter_map(|task| task.ok())
        .filter(|task| {
            // The kernel keeps 15 bytes of a thread's name.
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            comm.starts_with("rdk:") || comm.starts_with("producer pollin")
        })
        .map(|task| stat_cpu_seconds(&task.path().join("stat").to_string_lossy(), ticks))
        .sum()
}

fn stat_cpu_seconds(path: &str, ticks: f64) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / ticks
}

/// A `/proc/<pid>/status` field in kB, as bytes.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    let mem = status_line("/proc/meminfo", "MemTotal:");
    format!("{} cores ({cpu}), {mem} RAM", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0))
}

fn status_line(path: &str, field: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| {
            let kb: f64 = l.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            format!("{:.1} GiB", kb / 1048576.0)
        })
        .unwrap_or_default()
}
