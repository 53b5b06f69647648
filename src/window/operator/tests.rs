//! The operator against naive reference computations over random
//! out-of-order streams.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::window::{Accumulator, Input, ResultKind, Window, WindowKind};

const FUNCTIONS: [AggregateFunction; 3] = [AggregateFunction::Count, AggregateFunction::Sum, AggregateFunction::Max];

#[derive(Debug, Clone)]
struct Rec {
    key: u8,
    time: Millis,
    value: i64,
}

type Table = BTreeMap<(String, Window), (u64, i64, i64)>;

/// Runs the operator with a per-record bounded-out-of-orderness watermark,
/// then a final watermark that closes everything; returns the last value
/// written per (key, window), with retracted entries removed.
impl Rec {
    /// The operator's input for this record, at source position `offset`.
    fn event(&self, offset: usize) -> Event<'static> {
        Event {
            key: format!("k{}", self.key).into(),
            time: self.time,
            inputs: smallvec::smallvec![
                Input::Unit,
                Input::Number(self.value as f64),
                Input::Number(self.value as f64)
            ],
            offset: offset as i64,
        }
    }
}

fn run(kind: WindowKind, lateness: Millis, disorder: Millis, records: &[Rec], updates: bool) -> Table {
    run_restoring(kind, lateness, disorder, records, updates, None)
}

/// As [`run`]; with `restore_at`, the operator is snapshotted before that
/// record, encoded and decoded as a checkpoint, and replaced by the restored one.
fn run_restoring(
    kind: WindowKind,
    lateness: Millis,
    disorder: Millis,
    records: &[Rec],
    updates: bool,
    restore_at: Option<usize>,
) -> Table {
    let spec = WindowSpec { kind, allowed_lateness: lateness, functions: FUNCTIONS.to_vec(), fire_unchanged: false };
    let mut op = WindowOperator::new(spec.clone());
    let mut watermark = Millis::MIN;
    let mut region = Table::new();
    let apply = |results: Vec<crate::window::WindowResult>, region: &mut Table| {
        for r in results {
            let entry = (r.key.to_string(), r.window);
            match r.kind {
                ResultKind::Retract => {
                    region.remove(&entry);
                }
                _ => {
                    region.insert(entry, values(&r));
                }
            }
        }
    };
    for (offset, rec) in records.iter().enumerate() {
        if restore_at == Some(offset) {
            use crate::checkpoint::state::{decode, encode, TaskState};
            let state = TaskState { fingerprint: op.fingerprint(), max_seen: None, operator: op.snapshot() };
            let restored = decode(&encode(&state)).expect("decodes");
            op = WindowOperator::restore(spec.clone(), restored.operator).expect("same window kind");
        }
        let event = rec.event(offset);
        op.process(&event, watermark);
        watermark = watermark.max(rec.time - disorder);
        op.advance(watermark);
        if updates && offset % 7 == 0 {
            op.emit_updates();
        }
        apply(op.take_results(), &mut region);
    }
    op.advance(Millis::MAX);
    apply(op.take_results(), &mut region);
    assert_eq!(op.open_windows(), 0, "everything purged after the final watermark");
    region
}

fn values(r: &crate::window::WindowResult) -> (u64, i64, i64) {
    match (&r.accumulators[0], &r.accumulators[1], &r.accumulators[2]) {
        (Accumulator::Count(c), Accumulator::Sum(s), Accumulator::Max(Some(m))) => (*c, *s as i64, *m as i64),
        other => panic!("unexpected accumulators {other:?}"),
    }
}

fn add(table: &mut Table, key: u8, window: Window, value: i64) {
    let e = table.entry((format!("k{key}"), window)).or_insert((0, 0, i64::MIN));
    e.0 += 1;
    e.1 += value;
    e.2 = e.2.max(value);
}

/// Fixed windows, naively: a record counts in each window containing it
/// whose end plus the lateness is still ahead of the watermark at arrival.
fn reference_fixed(size: Millis, slide: Millis, lateness: Millis, disorder: Millis, records: &[Rec]) -> Table {
    let mut table = Table::new();
    let mut watermark = Millis::MIN;
    for rec in records {
        let mut start = (rec.time - size).div_euclid(slide) * slide;
        while start <= rec.time {
            let window = Window { start, end: start + size };
            if start <= rec.time && rec.time < window.end && window.end + lateness > watermark {
                add(&mut table, rec.key, window, rec.value);
            }
            start += slide;
        }
        watermark = watermark.max(rec.time - disorder);
    }
    table
}

/// Fixed windows, result by result: every result carries the value of the
/// records accepted into its (key, window) so far; finals are of complete
/// windows, updates of open ones; right after `emit_updates`, every open
/// window's latest emitted value is its current one.
fn check_fixed_results_as_emitted(
    size: Millis,
    slide: Millis,
    lateness: Millis,
    disorder: Millis,
    records: &[Rec],
) -> Result<(), TestCaseError> {
    let kind = if size == slide { WindowKind::Tumbling { size } } else { WindowKind::Sliding { size, slide } };
    let mut op = WindowOperator::new(WindowSpec {
        kind,
        allowed_lateness: lateness,
        functions: FUNCTIONS.to_vec(),
        fire_unchanged: false,
    });
    let (mut so_far, mut emitted) = (Table::new(), Table::new());
    let mut watermark = Millis::MIN;
    for (offset, rec) in records.iter().enumerate() {
        let mut start = (rec.time - size).div_euclid(slide) * slide;
        while start <= rec.time {
            let window = Window { start, end: start + size };
            if rec.time < window.end && window.end + lateness > watermark {
                add(&mut so_far, rec.key, window, rec.value);
            }
            start += slide;
        }
        let event = rec.event(offset);
        op.process(&event, watermark);
        watermark = watermark.max(rec.time - disorder);
        op.advance(watermark);
        let updated = offset % 3 == 0;
        if updated {
            op.emit_updates();
        }
        for r in op.take_results() {
            let entry = (r.key.to_string(), r.window);
            prop_assert_eq!(Some(&values(&r)), so_far.get(&entry), "{:?} at watermark {}", r, watermark);
            match r.kind {
                ResultKind::Final => prop_assert!(r.window.end <= watermark, "final of an open window: {:?}", r),
                ResultKind::Update => prop_assert!(r.window.end > watermark, "update of a complete window: {:?}", r),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            emitted.insert(entry, values(&r));
        }
        if updated {
            for (entry, value) in so_far.iter().filter(|((_, w), _)| w.end > watermark) {
                prop_assert_eq!(emitted.get(entry), Some(value), "no update for {:?}", entry);
            }
        }
    }
    Ok(())
}

/// Sessions, naively, for streams without late records: sort each key's
/// times and split where the distance exceeds the gap.
fn reference_sessions(gap: Millis, records: &[Rec]) -> Table {
    let mut by_key: BTreeMap<u8, Vec<&Rec>> = BTreeMap::new();
    for rec in records {
        by_key.entry(rec.key).or_default().push(rec);
    }
    let mut table = Table::new();
    for (key, mut recs) in by_key {
        recs.sort_by_key(|r| r.time);
        let mut group: Vec<&Rec> = Vec::new();
        let flush = |group: &mut Vec<&Rec>, table: &mut Table| {
            if let (Some(first), Some(last)) = (group.first(), group.last()) {
                let window = Window { start: first.time, end: last.time + gap };
                for r in group.iter() {
                    add(table, key, window, r.value);
                }
            }
            group.clear();
        };
        for rec in recs {
            if group.last().is_some_and(|l| rec.time - l.time > gap) {
                flush(&mut group, &mut table);
            }
            group.push(rec);
        }
        flush(&mut group, &mut table);
    }
    table
}

/// A stream whose event time advances ~`step` per record, each record up to
/// `disorder` behind, plus (optionally) some records behind the watermark:
/// by up to 3 s (into windows already fired, some sharing a pane with
/// windows still open) and far behind.
fn stream(disorder: Millis, with_late: bool) -> impl Strategy<Value = Vec<Rec>> {
    prop::collection::vec((0u8..5, 0..=disorder, -50i64..50, 0u8..20, 0..40i64, 0..3_000i64), 1..300).prop_map(
        move |raw| {
            let mut clock = 1_000_000;
            raw.into_iter()
                .map(|(key, behind, value, late_roll, step, late_by)| {
                    clock += step;
                    let time = match late_roll {
                        0 if with_late => clock - 5 * disorder - 2_000,
                        1 if with_late => clock - disorder - late_by,
                        _ => clock - behind,
                    };
                    Rec { key, time, value }
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn tumbling_matches_reference(records in stream(300, true), size in 1..2_000i64, lateness in prop::sample::select(vec![0i64, 500, 5_000]), updates: bool) {
        let got = run(WindowKind::Tumbling { size }, lateness, 300, &records, updates);
        prop_assert_eq!(got, reference_fixed(size, size, lateness, 300, &records));
    }

    #[test]
    fn sliding_matches_reference(records in stream(300, true), slide in 1..500i64, n in 1..6i64, lateness in prop::sample::select(vec![0i64, 700, 3_000]), updates: bool) {
        let size = slide * n;
        let got = run(WindowKind::Sliding { size, slide }, lateness, 300, &records, updates);
        prop_assert_eq!(got, reference_fixed(size, slide, lateness, 300, &records));
    }

    #[test]
    fn fixed_results_carry_running_values(records in stream(300, true), slide in 1..500i64, n in 1..6i64, lateness in prop::sample::select(vec![0i64, 700, 3_000])) {
        check_fixed_results_as_emitted(slide * n, slide, lateness, 300, &records)?;
    }

    #[test]
    fn sessions_match_reference(records in stream(300, false), gap in 1..1_500i64, updates: bool) {
        let got = run(WindowKind::Session { gap }, 0, 300, &records, updates);
        prop_assert_eq!(got, reference_sessions(gap, &records));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// A checkpoint restored anywhere in the stream changes no result.
    #[test]
    fn restoring_a_checkpoint_mid_stream_changes_nothing(
        records in stream(300, true),
        at in 0usize..300,
        kind in prop::sample::select(vec![
            WindowKind::Tumbling { size: 700 },
            WindowKind::Sliding { size: 900, slide: 300 },
            WindowKind::Session { gap: 400 },
        ]),
        updates: bool,
    ) {
        let at = at % records.len();
        let straight = run(kind, 500, 300, &records, updates);
        prop_assert_eq!(run_restoring(kind, 500, 300, &records, updates, Some(at)), straight);
    }
}

#[test]
fn late_record_within_lateness_refires_and_beyond_is_refused() {
    let mut op = WindowOperator::new(WindowSpec {
        kind: WindowKind::Tumbling { size: 10 },
        allowed_lateness: 20,
        functions: vec![AggregateFunction::Count],
        fire_unchanged: false,
    });
    let event = |time, offset| Event { key: "a".into(), time, inputs: smallvec::smallvec![Input::Unit], offset };
    assert_eq!(op.process(&event(5, 0), Millis::MIN), Accepted::Yes);
    op.advance(15);
    let fired = op.take_results();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].accumulators, vec![Accumulator::Count(1)]);
    assert_eq!(op.process(&event(6, 1), 15), Accepted::Yes);
    let refired = op.take_results();
    assert_eq!(refired[0].accumulators, vec![Accumulator::Count(2)]);
    assert_eq!(refired[0].kind, ResultKind::Final);
    op.advance(30);
    assert_eq!(op.open_windows(), 0, "purged at end + lateness");
    assert_eq!(op.process(&event(7, 2), 30), Accepted::Late);
    assert!(op.take_results().is_empty());
}

#[test]
fn late_merge_of_fired_sessions_retracts_the_old_entries() {
    let mut op = WindowOperator::new(WindowSpec {
        kind: WindowKind::Session { gap: 10 },
        allowed_lateness: 100,
        functions: vec![AggregateFunction::Count],
        fire_unchanged: false,
    });
    let event = |time| Event { key: "a".into(), time, inputs: smallvec::smallvec![Input::Unit], offset: time };
    op.process(&event(0), Millis::MIN);
    op.process(&event(18), Millis::MIN);
    op.advance(50);
    assert_eq!(op.take_results().len(), 2, "two sessions fired");
    op.process(&event(9), 50);
    let results = op.take_results();
    let kinds: Vec<_> = results.iter().map(|r| (r.kind, r.window.start, r.window.end)).collect();
    assert!(kinds.contains(&(ResultKind::Retract, 0, 10)), "{kinds:?}");
    assert!(kinds.contains(&(ResultKind::Retract, 18, 28)), "{kinds:?}");
    assert!(kinds.contains(&(ResultKind::Final, 0, 28)), "{kinds:?}");
    assert_eq!(results.last().map(|r| r.accumulators.clone()), Some(vec![Accumulator::Count(3)]));
}

/// Under emit mode `updates`, a window whose last update holds its final
/// value fires no final result, unless `fire_unchanged` (a change feed in
/// `final` mode) asks for one; the same for every window kind.
#[test]
fn fire_unchanged_fires_finals_that_updates_already_wrote() {
    let kinds = [
        WindowKind::Tumbling { size: 10 },
        WindowKind::Sliding { size: 10, slide: 5 },
        WindowKind::Session { gap: 10 },
    ];
    for kind in kinds {
        let finals = |fire_unchanged: bool| {
            let spec =
                WindowSpec { kind, allowed_lateness: 0, functions: vec![AggregateFunction::Count], fire_unchanged };
            let mut op = WindowOperator::new(spec);
            op.process(
                &Event { key: "a".into(), time: 2, inputs: smallvec::smallvec![Input::Unit], offset: 0 },
                Millis::MIN,
            );
            op.emit_updates();
            assert!(op.take_results().iter().all(|r| r.kind == ResultKind::Update), "{kind:?}");
            op.advance(100);
            op.take_results().into_iter().filter(|r| r.kind == ResultKind::Final).count()
        };
        assert_eq!(finals(false), 0, "{kind:?}: the last update holds the final value");
        let windows = if matches!(kind, WindowKind::Sliding { .. }) { 2 } else { 1 };
        assert_eq!(finals(true), windows, "{kind:?}: every window fires its final");
    }
}
