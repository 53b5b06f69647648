//! Checkpoint state: what a task's window state costs to encode and decode
//! (`checkpoint::encode`, the snapshot included), how many bytes it takes
//! per open window-key in a checkpoint, and how many it holds on the heap.
//!
//! - `state_encoding/{encode,decode}/W1_{10k,100k}`: a W1 operator holding
//!   10k or 100k open window-keys (count + sum, keys `u<n>` as the standard
//!   stream has them), snapshotted and encoded as `PartitionTask` does at a
//!   checkpoint, and decoded and restored as it does on takeover. Throughput
//!   is in window-keys.
//! - Printed before the timings: encoded bytes per open window-key, and the
//!   live heap bytes per open window-key of the operator (a counting global
//!   allocator) on W1, W2 and W3 of the standard stream, at the point with
//!   the most open window-keys, as `benches/end_to_end.rs` measures it.
//!
//! `cargo bench --bench state_encoding`

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use regionflow::checkpoint::state::{decode, encode, TaskState};
use regionflow::window::WindowOperator;
use support::{Driver, Raw, Workload, BASE_TS};

struct CountingAlloc;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// A W1 driver holding `keys` open window-keys: one record per key, all in
/// one 10 s window.
fn w1_with_open_keys(keys: u32) -> Driver {
    let mut driver = Driver::new(&support::spec(Workload::W1), false);
    for user in 0..keys {
        let raw = Raw {
            user,
            ts: BASE_TS + 1_000 + (user as i64 * 8_000 / keys as i64),
            cents: 1 + (user * 7_919) % 99_999,
            page: 0,
            country: 0,
        };
        driver.feed(&raw.event(user as i64));
    }
    assert_eq!(driver.operator.open_windows(), keys as usize);
    driver
}

fn task_state(operator: &WindowOperator, max_seen: i64) -> TaskState {
    TaskState { fingerprint: operator.fingerprint(), max_seen: Some(max_seen), operator: operator.snapshot() }
}

/// Live heap bytes per open window-key of one operator per workload over
/// the standard stream (200k events, 100k keys), at the sample (every 1024
/// events) with the most open window-keys.
fn print_heap_state() {
    let raws = support::generate(200_000, 100_000, BASE_TS, 42);
    for workload in [Workload::W1, Workload::W2, Workload::W3] {
        let spec = support::spec(workload);
        COUNTING.store(true, Ordering::SeqCst);
        let baseline = LIVE_BYTES.load(Ordering::SeqCst);
        let mut driver = Driver::new(&spec, false);
        let (mut bytes, mut open) = (0isize, 0usize);
        for (i, raw) in raws.iter().enumerate() {
            driver.feed(&raw.event(i as i64));
            if i % 1024 == 1023 && driver.operator.open_windows() > open {
                open = driver.operator.open_windows();
                bytes = LIVE_BYTES.load(Ordering::SeqCst) - baseline;
            }
        }
        drop(driver);
        COUNTING.store(false, Ordering::SeqCst);
        println!(
            "state {} ({}): {:.0} heap bytes per open window-key at {} open window-keys",
            workload.name(),
            workload.describe(),
            bytes as f64 / open as f64,
            open
        );
    }
}

fn state_encoding(c: &mut Criterion) {
    print_heap_state();
    let mut group = c.benchmark_group("state_encoding");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (keys, label) in [(10_000u32, "10k"), (100_000, "100k")] {
        let driver = w1_with_open_keys(keys);
        let operator = &driver.operator;
        let bytes = encode(&task_state(operator, BASE_TS + 9_000));
        println!(
            "state_encoding W1 {label}: {} bytes for {keys} open window-keys, {:.1} bytes per window-key",
            bytes.len(),
            bytes.len() as f64 / keys as f64
        );
        group.throughput(Throughput::Elements(keys as u64));
        group.bench_function(format!("encode/W1_{label}"), |b| {
            b.iter(|| encode(&task_state(operator, BASE_TS + 9_000)).len())
        });
        group.bench_function(format!("decode/W1_{label}"), |b| {
            b.iter(|| {
                let state = decode(&bytes).expect("decodes");
                WindowOperator::restore(operator.spec().clone(), state.operator).expect("same kind").open_windows()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, state_encoding);
criterion_main!(benches);
