//! The fast path of the top-level reader: one hand-written pass over a
//! flat JSON object whose wanted fields are plain strings, numbers,
//! booleans or nulls, which is what records on the hot path look like.
//!
//! It only ever answers for input it has fully checked: a value it read
//! is exactly what `serde_json` reads there, and it accepts nothing
//! `serde_json` refuses. Anything else (an escape in a key or in a
//! string, a wanted object or array, a control character, nesting deeper
//! than [`MAX_DEPTH`], any syntax error) makes it give up with `None`,
//! and the caller reads the payload again with `serde_json`, which
//! decides, and words any error, as before. Skipped values are checked
//! without being built.

use std::borrow::Cow;
use std::str::FromStr;

use serde_json::{Number, Value as Json};

use super::fields::{Field, Values};

/// Deeper skipped values go to `serde_json`'s reader.
const MAX_DEPTH: usize = 64;

/// The bytes a plain string's scan stops at: its closing quote, or what
/// makes it not plain (an escape, a control character).
static STOPS_A_STRING: [bool; 256] = {
    let mut stops = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        stops[byte] = true;
        byte += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// The wanted fields (by slot in `names`) of `text`, a JSON object; `None`
/// when the caller must decide with `serde_json` instead.
pub(super) fn read<'a>(names: &[String], text: &'a str) -> Option<Values<'a>> {
    let mut scan = Scan { bytes: text.as_bytes(), text, at: 0 };
    let mut values: Values<'a> = Values::new();
    values.resize_with(names.len(), || None);
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    if scan.peek()? == b'}' {
        scan.at += 1;
    } else {
        loop {
            scan.expect(b'"')?;
            let name = scan.plain_string()?;
            scan.whitespace();
            scan.expect(b':')?;
            scan.whitespace();
            // A later duplicate wins, as in `serde_json::Value`.
            match names.iter().position(|n| n == name) {
                Some(slot) => values[slot] = scan.wanted()?,
                None => scan.skip(0)?,
            }
            scan.whitespace();
            match scan.next()? {
                b',' => scan.whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.whitespace();
    (scan.at == scan.bytes.len()).then_some(values)
}

/// A number's text (checked against the grammar) as serde_json reads it:
/// an integer that fits as `u64` or `i64`, `-0` and everything else as
/// `f64` (correctly rounded, as serde_json's `float_roundtrip` parses).
/// `None` for a number serde_json refuses (out of `f64`'s range).
fn number(text: &str) -> Option<Number> {
    let integral = !text.contains(['.', 'e', 'E']);
    match (integral, text.starts_with('-')) {
        (true, false) => match text.parse::<u64>() {
            Ok(n) => Some(Number::from(n)),
            Err(_) => Number::from_str(text).ok(),
        },
        (true, true) => match text.parse::<i64>() {
            Ok(0) => Number::from_f64(-0.0),
            Ok(n) => Some(Number::from(n)),
            Err(_) => Number::from_str(text).ok(),
        },
        (false, _) => text.parse::<f64>().ok().filter(|v| v.is_finite()).and_then(Number::from_f64),
    }
}

struct Scan<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// The rest of a string after its opening quote, when it holds no
    /// escape and no control character.
    fn plain_string(&mut self) -> Option<&'a str> {
        let start = self.at;
        let length = self.bytes[start..].iter().position(|&b| STOPS_A_STRING[b as usize])?;
        self.at = start + length + 1;
        (self.bytes[start + length] == b'"').then(|| &self.text[start..start + length])
    }

    /// A JSON number's text, checked against the grammar.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digit()?;
            self.digits();
        }
        Some(&self.text[start..self.at])
    }

    fn digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A wanted value: `null` is missing, as in the tree.
    fn wanted(&mut self) -> Option<Option<Field<'a>>> {
        Some(match self.peek()? {
            b'"' => {
                self.at += 1;
                Some(Field::Str(Cow::Borrowed(self.plain_string()?)))
            }
            b'n' => {
                self.literal(b"null")?;
                None
            }
            b't' => {
                self.literal(b"true")?;
                Some(Field::Other(Json::Bool(true)))
            }
            b'f' => {
                self.literal(b"false")?;
                Some(Field::Other(Json::Bool(false)))
            }
            b'-' | b'0'..=b'9' => {
                let text = self.number()?;
                Some(Field::Other(Json::Number(number(text)?)))
            }
            _ => return None,
        })
    }

    /// Checks one value without building it.
    fn skip(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                self.plain_string().map(drop)
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b'[' | b'{' if depth >= MAX_DEPTH => None,
            b'[' => {
                self.at += 1;
                self.whitespace();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    self.whitespace();
                    match self.next()? {
                        b',' => self.whitespace(),
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.at += 1;
                self.whitespace();
                if self.peek()? == b'}' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.expect(b'"')?;
                    self.plain_string()?;
                    self.whitespace();
                    self.expect(b':')?;
                    self.whitespace();
                    self.skip(depth + 1)?;
                    self.whitespace();
                    match self.next()? {
                        b',' => self.whitespace(),
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}
