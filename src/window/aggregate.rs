//! Mergeable aggregates.
//!
//! Every aggregate keeps a small accumulator that can be (1) updated with
//! one input, (2) merged with another accumulator of the same kind, and
//! (3) rendered as the public value of a region entry. A region merges the
//! accumulators of several source partitions (`redis/partial.rs` encodes
//! them for `redis/merge.lua`, which implements the same merge and
//! rendering rules in Redis). Average is kept as sum and count, distinct
//! count as a HyperLogLog, first/last as (event time, value) pairs with a
//! value tie-break so that merging is order-independent.
//!
//! Numbers are IEEE doubles with IEEE overflow: a sum beyond `f64::MAX`
//! becomes infinity (rendered `inf`/`-inf`), and infinities of both signs
//! make `NaN`. An overflowing aggregate therefore stays visible in the
//! region and never stops a pipeline.

use crate::time::Millis;

use super::hll::HyperLogLog;

/// An aggregate function, as named in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    DistinctCount,
    First,
    Last,
}

impl AggregateFunction {
    pub const ALL: [AggregateFunction; 8] = [
        AggregateFunction::Count,
        AggregateFunction::Sum,
        AggregateFunction::Min,
        AggregateFunction::Max,
        AggregateFunction::Avg,
        AggregateFunction::DistinctCount,
        AggregateFunction::First,
        AggregateFunction::Last,
    ];

    /// The name configuration and `merge.lua` use.
    pub fn name(self) -> &'static str {
        match self {
            AggregateFunction::Count => "count",
            AggregateFunction::Sum => "sum",
            AggregateFunction::Min => "min",
            AggregateFunction::Max => "max",
            AggregateFunction::Avg => "avg",
            AggregateFunction::DistinctCount => "distinct_count",
            AggregateFunction::First => "first",
            AggregateFunction::Last => "last",
        }
    }
}

/// One record's input to one aggregate, extracted by the decoder.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `count` needs no value (or its field is present).
    Unit,
    /// The optional field of a `count` is missing or null: not counted.
    Absent,
    Number(f64),
    /// Stable 64-bit hash of the value, for distinct counts.
    Hash(u64),
    /// The value rendered as text (strings raw, other JSON as JSON), for first/last.
    Text(Box<str>),
}

/// An event's inputs, one per aggregate: a pipeline has a handful, kept
/// inline rather than allocated per record.
pub type Inputs = smallvec::SmallVec<[Input; 4]>;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Accumulator {
    Count(u64),
    Sum(f64),
    Min(Option<f64>),
    Max(Option<f64>),
    Avg { sum: f64, count: u64 },
    DistinctCount(HyperLogLog),
    First(Option<(Millis, Box<str>)>),
    Last(Option<(Millis, Box<str>)>),
}

impl Accumulator {
    pub fn new(function: AggregateFunction) -> Self {
        match function {
            AggregateFunction::Count => Accumulator::Count(0),
            AggregateFunction::Sum => Accumulator::Sum(0.0),
            AggregateFunction::Min => Accumulator::Min(None),
            AggregateFunction::Max => Accumulator::Max(None),
            AggregateFunction::Avg => Accumulator::Avg { sum: 0.0, count: 0 },
            AggregateFunction::DistinctCount => Accumulator::DistinctCount(HyperLogLog::default()),
            AggregateFunction::First => Accumulator::First(None),
            AggregateFunction::Last => Accumulator::Last(None),
        }
    }

    /// Adds one record's input. The decoder guarantees the input's kind
    /// matches the aggregate; a mismatch is ignored rather than panicking.
    pub fn add(&mut self, input: &Input, event_time: Millis) {
        match (self, input) {
            (Accumulator::Count(n), Input::Unit) => *n += 1,
            (Accumulator::Sum(s), Input::Number(v)) => *s += v,
            (Accumulator::Min(m), Input::Number(v)) => *m = Some(m.map_or(*v, |m| m.min(*v))),
            (Accumulator::Max(m), Input::Number(v)) => *m = Some(m.map_or(*v, |m| m.max(*v))),
            (Accumulator::Avg { sum, count }, Input::Number(v)) => {
                *sum += v;
                *count += 1;
            }
            (Accumulator::DistinctCount(h), Input::Hash(hash)) => h.insert_hash(*hash),
            (Accumulator::First(f), Input::Text(v)) => keep_first(f, event_time, v),
            (Accumulator::Last(l), Input::Text(v)) => keep_last(l, event_time, v),
            _ => {}
        }
    }

    /// Merges another accumulator of the same kind into this one.
    pub fn merge(&mut self, other: &Accumulator) {
        match (self, other) {
            (Accumulator::Count(a), Accumulator::Count(b)) => *a += b,
            (Accumulator::Sum(a), Accumulator::Sum(b)) => *a += b,
            (Accumulator::Min(a), Accumulator::Min(Some(b))) => *a = Some(a.map_or(*b, |a| a.min(*b))),
            (Accumulator::Max(a), Accumulator::Max(Some(b))) => *a = Some(a.map_or(*b, |a| a.max(*b))),
            (Accumulator::Avg { sum, count }, Accumulator::Avg { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (Accumulator::DistinctCount(a), Accumulator::DistinctCount(b)) => a.merge(b),
            (Accumulator::First(a), Accumulator::First(Some((t, v)))) => keep_first(a, *t, v),
            (Accumulator::Last(a), Accumulator::Last(Some((t, v)))) => keep_last(a, *t, v),
            _ => {}
        }
    }

    /// The public value written into the entry's field; `None` leaves the
    /// field out (e.g. min of nothing).
    pub fn render(&self) -> Option<String> {
        match self {
            Accumulator::Count(n) => Some(n.to_string()),
            Accumulator::Sum(s) => Some(render_number(*s)),
            Accumulator::Min(m) | Accumulator::Max(m) => m.map(render_number),
            Accumulator::Avg { sum, count } => (*count > 0).then(|| render_number(sum / *count as f64)),
            Accumulator::DistinctCount(h) => Some(h.estimate().to_string()),
            Accumulator::First(v) | Accumulator::Last(v) => v.as_ref().map(|(_, v)| v.to_string()),
        }
    }
}

/// Earliest event time wins; equal times keep the smaller value, so the
/// result does not depend on arrival order or on how partials are merged.
fn keep_first(slot: &mut Option<(Millis, Box<str>)>, t: Millis, v: &str) {
    if slot.as_ref().is_none_or(|(st, sv)| (t, v) < (*st, &**sv)) {
        *slot = Some((t, v.into()));
    }
}

/// Latest event time wins; equal times keep the larger value.
fn keep_last(slot: &mut Option<(Millis, Box<str>)>, t: Millis, v: &str) {
    if slot.as_ref().is_none_or(|(st, sv)| (t, v) > (*st, &**sv)) {
        *slot = Some((t, v.into()));
    }
}

/// Integers print without a fraction; other numbers in their shortest
/// round-trip form.
pub fn render_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Input {
        Input::Text(s.into())
    }

    #[test]
    fn merge_equals_adding_everything_to_one_accumulator() {
        let inputs = [(3.0, 10), (-1.5, 5), (7.25, 20), (0.0, 5)];
        for f in [
            AggregateFunction::Count,
            AggregateFunction::Sum,
            AggregateFunction::Min,
            AggregateFunction::Max,
            AggregateFunction::Avg,
        ] {
            let mut all = Accumulator::new(f);
            let mut left = Accumulator::new(f);
            let mut right = Accumulator::new(f);
            for (i, (v, t)) in inputs.iter().enumerate() {
                all.add(&Input::Number(*v), *t);
                if i % 2 == 0 { &mut left } else { &mut right }.add(&Input::Number(*v), *t);
            }
            left.merge(&right);
            assert_eq!(left, all, "{f:?}");
        }
    }

    #[test]
    fn first_and_last_break_time_ties_by_value_in_any_order() {
        let mut a = Accumulator::new(AggregateFunction::First);
        a.add(&text("b"), 5);
        a.add(&text("a"), 5);
        a.add(&text("z"), 9);
        assert_eq!(a.render().as_deref(), Some("a"));
        let mut l = Accumulator::new(AggregateFunction::Last);
        l.add(&text("a"), 9);
        l.add(&text("b"), 9);
        l.add(&text("z"), 1);
        assert_eq!(l.render().as_deref(), Some("b"));
    }

    #[test]
    fn overflowing_numbers_become_infinities() {
        let mut sum = Accumulator::new(AggregateFunction::Sum);
        sum.add(&Input::Number(1e308), 1);
        sum.add(&Input::Number(1e308), 2);
        assert_eq!(sum, Accumulator::Sum(f64::INFINITY));
        assert_eq!(sum.render().as_deref(), Some("inf"));
        let mut negative = Accumulator::new(AggregateFunction::Avg);
        negative.add(&Input::Number(-1e308), 1);
        negative.add(&Input::Number(-1e308), 2);
        assert_eq!(negative.render().as_deref(), Some("-inf"));
        sum.merge(&Accumulator::Sum(f64::NEG_INFINITY));
        assert_eq!(sum.render().as_deref(), Some("NaN"));
    }

    #[test]
    fn renders_integers_without_fraction() {
        assert_eq!(render_number(12.0), "12");
        assert_eq!(render_number(-0.5), "-0.5");
        assert_eq!(render_number(0.1 + 0.2), "0.30000000000000004");
    }
}
