//! State bytes per open window-key: operator-only runs under a counting
//! global allocator (live heap bytes / open (key, window) pairs).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::compute_ceiling::drivers;
use crate::data::DataSet;
use crate::support::{self, Driver, Raw, Workload, BASE_TS};

// Live heap bytes, for state size, over mimalloc: the connector child runs
// on the allocator `regionflow run` uses (`src/main.rs`).

struct CountingAlloc;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() && COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

pub struct StateSize {
    pub bytes_per_window_key: f64,
    pub open_window_keys: usize,
}

/// Live heap bytes held by the operators over their open window-keys
/// (`WindowOperator::open_windows`: (key, window) pairs; for fixed windows
/// (key, pane) rows, one per (key, window) when tumbling), at the sample
/// with the most. Keys are allocated per event, as
/// the decoder does, so the state pays for the key copy it keeps.
pub fn state_size(workload: Workload, data: &DataSet, partitions: i32) -> StateSize {
    COUNTING.store(true, Ordering::SeqCst);
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    let mut ds = drivers(workload, partitions, false);
    let mut best = StateSize { bytes_per_window_key: 0.0, open_window_keys: 0 };
    for (i, r) in data.raws.iter().enumerate() {
        let event = r.event(data.offset[i]);
        ds[data.partition[i] as usize].feed(&event);
        drop(event);
        if i % 1024 == 1023 {
            let open: usize = ds.iter().map(|d| d.operator.open_windows()).sum();
            if open > best.open_window_keys {
                let live = LIVE_BYTES.load(Ordering::SeqCst) - baseline;
                best = StateSize { bytes_per_window_key: live as f64 / open as f64, open_window_keys: open };
            }
        }
    }
    drop(ds);
    COUNTING.store(false, Ordering::SeqCst);
    best
}

/// W1 with many open window-keys at once: `keys` distinct keys in one
/// 10 s window (event time compressed), the state at that size.
pub fn state_stress(keys: usize) -> (f64, f64, usize) {
    let spec = support::spec(Workload::W1);
    COUNTING.store(true, Ordering::SeqCst);
    let baseline = LIVE_BYTES.load(Ordering::SeqCst);
    let mut d = Driver::new(&spec, false);
    let mut rng = StdRng::seed_from_u64(9);
    let started = Instant::now();
    for i in 0..keys {
        let raw = Raw {
            user: i as u32,
            ts: BASE_TS + 1_000 + (i as i64 * 8_000 / keys as i64),
            cents: rng.random_range(1..100_000),
            page: 0,
            country: 0,
        };
        d.feed(&raw.event(i as i64));
    }
    let rate = keys as f64 / started.elapsed().as_secs_f64();
    let open = d.operator.open_windows();
    let live = LIVE_BYTES.load(Ordering::SeqCst) - baseline;
    drop(d);
    COUNTING.store(false, Ordering::SeqCst);
    (rate, live as f64 / open as f64, open)
}
