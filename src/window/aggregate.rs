//! Mergeable aggregates.
//!
//! Every aggregate keeps a small accumulator that can be (1) updated with
//! one input, (2) merged with another accumulator of the same kind, and
//! (3) encoded as a JSON *partial* that the region merges across source
//! partitions (see `region/merge.lua`, which implements the same merge and
//! rendering rules in Redis). Average is kept as sum and count, distinct
//! count as a HyperLogLog, first/last as (event time, value) pairs with a
//! value tie-break so that merging is order-independent.
//!
//! Numbers are IEEE doubles with IEEE overflow: a sum beyond `f64::MAX`
//! becomes infinity (rendered `inf`/`-inf`), and infinities of both signs
//! make `NaN`. JSON cannot hold these, so a partial writes a non-finite
//! number as the string `"inf"`, `"-inf"` or `"NaN"`; `merge.lua` reads and
//! writes the same strings. An overflowing aggregate therefore stays
//! visible in the region and never stops a pipeline.

use serde_json::Value as Json;

use crate::config::AggregateFunction;
use crate::time::Millis;

use super::hll::HyperLogLog;

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

    /// The partial as stored in the region entry (see `region/merge.lua`).
    pub fn to_partial(&self) -> Json {
        match self {
            Accumulator::Count(n) => Json::from(*n),
            Accumulator::Sum(s) => number(*s),
            Accumulator::Min(m) | Accumulator::Max(m) => m.map_or(Json::Null, number),
            Accumulator::Avg { sum, count } => Json::Array(vec![number(*sum), Json::from(*count)]),
            Accumulator::DistinctCount(h) => Json::String(h.to_hex()),
            Accumulator::First(v) | Accumulator::Last(v) => {
                v.as_ref().map_or(Json::Null, |(t, v)| Json::Array(vec![Json::from(*t), Json::from(&**v)]))
            }
        }
    }

    /// Appends [`Accumulator::to_partial`]'s JSON text to `out`, the bytes
    /// serde_json writes for it, without building the value.
    pub fn write_partial(&self, out: &mut Vec<u8>) {
        fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
            serde_json::to_writer(out, value).expect("JSON of numbers and strings into memory cannot fail");
        }
        fn float(out: &mut Vec<u8>, v: f64) {
            match non_finite_name(v) {
                Some(name) => json(out, name),
                None => json(out, &v),
            }
        }
        match self {
            Accumulator::Count(n) => json(out, n),
            Accumulator::Sum(s) => float(out, *s),
            Accumulator::Min(None) | Accumulator::Max(None) => out.extend_from_slice(b"null"),
            Accumulator::Min(Some(m)) | Accumulator::Max(Some(m)) => float(out, *m),
            Accumulator::Avg { sum, count } => {
                out.push(b'[');
                float(out, *sum);
                out.push(b',');
                json(out, count);
                out.push(b']');
            }
            Accumulator::DistinctCount(h) => json(out, &h.to_hex()),
            Accumulator::First(v) | Accumulator::Last(v) => json(out, v),
        }
    }

    /// Parses a partial written by [`Accumulator::to_partial`].
    pub fn from_partial(function: AggregateFunction, partial: &Json) -> Option<Accumulator> {
        let pair = |p: &Json| -> Option<Option<(Millis, Box<str>)>> {
            if p.is_null() {
                return Some(None);
            }
            let a = p.as_array()?;
            Some(Some((a.first()?.as_i64()?, a.get(1)?.as_str()?.into())))
        };
        let optional = |p: &Json| -> Option<Option<f64>> {
            if p.is_null() {
                Some(None)
            } else {
                partial_number(p).map(Some)
            }
        };
        Some(match function {
            AggregateFunction::Count => Accumulator::Count(partial.as_u64()?),
            AggregateFunction::Sum => Accumulator::Sum(partial_number(partial)?),
            AggregateFunction::Min => Accumulator::Min(optional(partial)?),
            AggregateFunction::Max => Accumulator::Max(optional(partial)?),
            AggregateFunction::Avg => {
                let a = partial.as_array()?;
                Accumulator::Avg { sum: partial_number(a.first()?)?, count: a.get(1)?.as_u64()? }
            }
            AggregateFunction::DistinctCount => Accumulator::DistinctCount(HyperLogLog::from_hex(partial.as_str()?)?),
            AggregateFunction::First => Accumulator::First(pair(partial)?),
            AggregateFunction::Last => Accumulator::Last(pair(partial)?),
        })
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

fn number(v: f64) -> Json {
    match non_finite_name(v) {
        Some(name) => Json::String(name.into()),
        None => Json::Number(serde_json::Number::from_f64(v).expect("finite")),
    }
}

/// How a partial writes a non-finite number (JSON has no such numbers).
fn non_finite_name(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v == f64::INFINITY {
        Some("inf")
    } else if v == f64::NEG_INFINITY {
        Some("-inf")
    } else {
        None
    }
}

/// A number element of a partial: a JSON number, or a non-finite name.
fn partial_number(p: &Json) -> Option<f64> {
    match p {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
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
    fn partials_round_trip() {
        let mut accs = [
            Accumulator::new(AggregateFunction::Count),
            Accumulator::new(AggregateFunction::Sum),
            Accumulator::new(AggregateFunction::Min),
            Accumulator::new(AggregateFunction::Avg),
            Accumulator::new(AggregateFunction::DistinctCount),
            Accumulator::new(AggregateFunction::Last),
        ];
        let inputs = [
            Input::Unit,
            Input::Number(2.5),
            Input::Number(-3.0),
            Input::Number(4.0),
            Input::Hash(0xdead_beef_1234),
            text("hello"),
        ];
        for (acc, input) in accs.iter_mut().zip(&inputs) {
            acc.add(input, 42);
        }
        let functions = [
            AggregateFunction::Count,
            AggregateFunction::Sum,
            AggregateFunction::Min,
            AggregateFunction::Avg,
            AggregateFunction::DistinctCount,
            AggregateFunction::Last,
        ];
        for (acc, f) in accs.iter().zip(functions) {
            assert_eq!(Accumulator::from_partial(f, &acc.to_partial()).as_ref(), Some(acc), "{f:?}");
        }
    }

    #[test]
    fn overflowing_numbers_become_infinities_that_partials_carry() {
        let mut sum = Accumulator::new(AggregateFunction::Sum);
        sum.add(&Input::Number(1e308), 1);
        sum.add(&Input::Number(1e308), 2);
        assert_eq!(sum, Accumulator::Sum(f64::INFINITY));
        assert_eq!(sum.render().as_deref(), Some("inf"));
        let mut negative = Accumulator::new(AggregateFunction::Avg);
        negative.add(&Input::Number(-1e308), 1);
        negative.add(&Input::Number(-1e308), 2);
        assert_eq!(negative.render().as_deref(), Some("-inf"));
        let mut both = sum.clone();
        both.merge(&Accumulator::Sum(f64::NEG_INFINITY));
        assert_eq!(both.render().as_deref(), Some("NaN"));

        for (acc, function, text) in [
            (sum, AggregateFunction::Sum, r#""inf""#),
            (negative, AggregateFunction::Avg, r#"["-inf",2]"#),
            (both, AggregateFunction::Sum, r#""NaN""#),
            (Accumulator::Max(Some(f64::INFINITY)), AggregateFunction::Max, r#""inf""#),
            (Accumulator::Min(None), AggregateFunction::Min, "null"),
        ] {
            let mut written = Vec::new();
            acc.write_partial(&mut written);
            assert_eq!(std::str::from_utf8(&written).unwrap(), text, "{acc:?}");
            assert_eq!(serde_json::to_string(&acc.to_partial()).unwrap(), text, "{acc:?}");
            let back = Accumulator::from_partial(function, &serde_json::from_str(text).unwrap()).unwrap();
            // NaN != NaN: compare the rendering and the partial instead.
            assert_eq!(back.render(), acc.render(), "{acc:?}");
            assert_eq!(back.to_partial(), acc.to_partial(), "{acc:?}");
        }
        assert_eq!(Accumulator::from_partial(AggregateFunction::Sum, &Json::String("lots".into())), None);
    }

    #[test]
    fn renders_integers_without_fraction() {
        assert_eq!(render_number(12.0), "12");
        assert_eq!(render_number(-0.5), "-0.5");
        assert_eq!(render_number(0.1 + 0.2), "0.30000000000000004");
    }
}
