//! The partial: how one source partition's accumulators are stored in a
//! region entry's `_p:<topic>:<partition>` field, the format `merge.lua`
//! reads, merges and writes back.
//!
//! A partial is JSON, `{"a":[...],"e":<epoch>,"o":<offset>}`, with one
//! element per aggregate:
//!
//! | function | element |
//! | --- | --- |
//! | count | integer |
//! | sum | number |
//! | min, max | number or `null` |
//! | avg | `[sum, count]` |
//! | distinct_count | 1,024 HyperLogLog registers as 2,048 lower-case hex digits, `""` when empty |
//! | first, last | `[event_time_ms, "value"]` or `null` |
//!
//! JSON has no infinities: a number that overflowed is the string `"inf"`,
//! `"-inf"` or `"NaN"` wherever a number may stand.

use std::io::Write;

use serde_json::Value as Json;

use crate::time::Millis;
use crate::window::hll::{HyperLogLog, REGISTERS};
use crate::window::{Accumulator, AggregateFunction};

/// The whole partial, the bytes
/// `serde_json::json!({"e": epoch, "o": offset, "a": [...]})` writes (its
/// maps sort their keys), built straight into the string.
pub fn entry_partial(accumulators: &[Accumulator], epoch: u64, offset: i64) -> String {
    let mut out = Vec::with_capacity(48 + 24 * accumulators.len());
    out.extend_from_slice(b"{\"a\":[");
    for (i, accumulator) in accumulators.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(accumulator, &mut out);
    }
    write!(out, "],\"e\":{epoch},\"o\":{offset}}}").expect("writing into memory cannot fail");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// The aggregate spec `merge.lua` takes: `function:name,...` in the order
/// of the partial's elements.
pub fn aggregate_spec<'a>(aggregates: impl IntoIterator<Item = (AggregateFunction, &'a str)>) -> String {
    aggregates.into_iter().map(|(function, name)| format!("{}:{name}", function.name())).collect::<Vec<_>>().join(",")
}

/// One accumulator as a partial element.
pub fn to_json(accumulator: &Accumulator) -> Json {
    match accumulator {
        Accumulator::Count(n) => Json::from(*n),
        Accumulator::Sum(s) => number(*s),
        Accumulator::Min(m) | Accumulator::Max(m) => m.map_or(Json::Null, number),
        Accumulator::Avg { sum, count } => Json::Array(vec![number(*sum), Json::from(*count)]),
        Accumulator::DistinctCount(h) => Json::String(hll_hex(h)),
        Accumulator::First(v) | Accumulator::Last(v) => {
            v.as_ref().map_or(Json::Null, |(t, v)| Json::Array(vec![Json::from(*t), Json::from(&**v)]))
        }
    }
}

/// Appends [`to_json`]'s text to `out`, the bytes serde_json writes for it,
/// without building the value.
pub fn write(accumulator: &Accumulator, out: &mut Vec<u8>) {
    fn json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
        serde_json::to_writer(out, value).expect("JSON of numbers and strings into memory cannot fail");
    }
    fn float(out: &mut Vec<u8>, v: f64) {
        match non_finite_name(v) {
            Some(name) => json(out, name),
            None => json(out, &v),
        }
    }
    match accumulator {
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
        Accumulator::DistinctCount(h) => json(out, &hll_hex(h)),
        Accumulator::First(v) | Accumulator::Last(v) => json(out, v),
    }
}

/// Parses a partial element written by [`to_json`] or `merge.lua`.
pub fn parse(function: AggregateFunction, partial: &Json) -> Option<Accumulator> {
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
        AggregateFunction::DistinctCount => Accumulator::DistinctCount(hll_from_hex(partial.as_str()?)?),
        AggregateFunction::First => Accumulator::First(pair(partial)?),
        AggregateFunction::Last => Accumulator::Last(pair(partial)?),
    })
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

/// Lower-case hex of all registers; empty when nothing was inserted.
fn hll_hex(h: &HyperLogLog) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let Some(registers) = h.registers() else {
        return String::new();
    };
    let mut out = String::with_capacity(REGISTERS * 2);
    for &r in registers {
        out.push(DIGITS[(r >> 4) as usize] as char);
        out.push(DIGITS[(r & 15) as usize] as char);
    }
    out
}

fn hll_from_hex(hex: &str) -> Option<HyperLogLog> {
    if hex.is_empty() {
        return Some(HyperLogLog::default());
    }
    if hex.len() != REGISTERS * 2 || !hex.is_ascii() {
        return None;
    }
    let registers =
        (0..REGISTERS).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>()?;
    HyperLogLog::from_registers(registers)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::window::Input;

    fn text_input(s: &str) -> Input {
        Input::Text(s.into())
    }

    fn number(rng: &mut StdRng) -> f64 {
        match rng.random_range(0..10) {
            0 => [0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN_POSITIVE, 1e21, 1e-7]
                [rng.random_range(0..9)],
            1 => rng.random_range(-1e6..1e6_f64).round(),
            2 => f64::from_bits(rng.random()),
            _ => rng.random_range(-1e6..1e6_f64) / 100.0,
        }
    }

    fn text(rng: &mut StdRng) -> Box<str> {
        const PIECES: &[&str] = &["a", "/page/17", "\"", "\\", "\n", "\u{1}", "é", "😀", " ", "\u{7f}"];
        (0..rng.random_range(0..6)).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect::<String>().into()
    }

    fn accumulator(rng: &mut StdRng) -> Accumulator {
        let pair =
            |rng: &mut StdRng| rng.random_bool(0.8).then(|| (rng.random_range(-1i64 << 50..1i64 << 50), text(rng)));
        let optional = |rng: &mut StdRng| rng.random_bool(0.8).then(|| number(rng));
        match rng.random_range(0..8) {
            0 => Accumulator::Count(if rng.random_bool(0.1) { u64::MAX } else { rng.random_range(0..1_000_000) }),
            1 => Accumulator::Sum(number(rng)),
            2 => Accumulator::Min(optional(rng)),
            3 => Accumulator::Max(optional(rng)),
            4 => Accumulator::Avg { sum: number(rng), count: rng.random() },
            5 => {
                let mut h = HyperLogLog::default();
                for _ in 0..rng.random_range(0..20) {
                    h.insert_hash(rng.random());
                }
                Accumulator::DistinctCount(h)
            }
            6 => Accumulator::First(pair(rng)),
            _ => Accumulator::Last(pair(rng)),
        }
    }

    #[test]
    fn partial_json_is_byte_identical_to_serde_json() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let accumulators: Vec<Accumulator> = (0..rng.random_range(0..5)).map(|_| accumulator(&mut rng)).collect();
            let (epoch, offset) =
                (rng.random::<u64>() >> rng.random_range(0..64), rng.random::<i64>() >> rng.random_range(0..64));
            let partials: Vec<_> = accumulators.iter().map(to_json).collect();
            let expected = serde_json::json!({"e": epoch, "o": offset, "a": partials}).to_string();
            assert_eq!(entry_partial(&accumulators, epoch, offset), expected, "{accumulators:?}");
        }
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
            text_input("hello"),
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
            assert_eq!(parse(f, &to_json(acc)).as_ref(), Some(acc), "{f:?}");
        }
    }

    #[test]
    fn non_finite_numbers_are_named_strings() {
        for (acc, function, text) in [
            (Accumulator::Sum(f64::INFINITY), AggregateFunction::Sum, r#""inf""#),
            (Accumulator::Avg { sum: f64::NEG_INFINITY, count: 2 }, AggregateFunction::Avg, r#"["-inf",2]"#),
            (Accumulator::Sum(f64::NAN), AggregateFunction::Sum, r#""NaN""#),
            (Accumulator::Max(Some(f64::INFINITY)), AggregateFunction::Max, r#""inf""#),
            (Accumulator::Min(None), AggregateFunction::Min, "null"),
        ] {
            let mut written = Vec::new();
            write(&acc, &mut written);
            assert_eq!(std::str::from_utf8(&written).unwrap(), text, "{acc:?}");
            assert_eq!(serde_json::to_string(&to_json(&acc)).unwrap(), text, "{acc:?}");
            let back = parse(function, &serde_json::from_str(text).unwrap()).unwrap();
            // NaN != NaN: compare the rendering and the partial instead.
            assert_eq!(back.render(), acc.render(), "{acc:?}");
            assert_eq!(to_json(&back), to_json(&acc), "{acc:?}");
        }
        assert_eq!(parse(AggregateFunction::Sum, &Json::String("lots".into())), None);
    }

    #[test]
    fn hll_hex_round_trips() {
        let mut a = HyperLogLog::default();
        for i in 0..500u64 {
            a.insert_hash(crate::window::hll::stable_hash(&i.to_le_bytes()));
        }
        assert_eq!(hll_from_hex(&hll_hex(&a)), Some(a));
        assert_eq!(hll_from_hex(""), Some(HyperLogLog::default()));
        assert_eq!(hll_from_hex("zz"), None);
    }
}
