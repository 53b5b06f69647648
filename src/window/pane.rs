//! One pane of fixed-window state: the keys seen in a `slide`-long stretch
//! of event time and their aggregates, stored as columns.
//!
//! A pane is a key → row map plus one column per aggregate, so a key costs
//! a hash-map entry (`Arc<str>` + row number) and the bare numbers of its
//! aggregates (8 bytes for a count or a sum) instead of a `Vec` of
//! [`Accumulator`] enums per key and window. Aggregates without a compact
//! column (min, max, avg, distinct count, first, last) keep a column of
//! accumulators.

use std::sync::Arc;

use ahash::AHashMap;

use super::AggregateFunction;
use super::{Accumulator, Input};
use crate::time::Millis;

#[derive(Debug)]
enum Column {
    Count(Vec<u64>),
    Sum(Vec<f64>),
    Other(AggregateFunction, Vec<Accumulator>),
}

impl Column {
    fn with_capacity(function: AggregateFunction, rows: usize) -> Self {
        match function {
            AggregateFunction::Count => Column::Count(Vec::with_capacity(rows)),
            AggregateFunction::Sum => Column::Sum(Vec::with_capacity(rows)),
            other => Column::Other(other, Vec::with_capacity(rows)),
        }
    }

    fn push_empty(&mut self) {
        match self {
            Column::Count(v) => v.push(0),
            Column::Sum(v) => v.push(0.0),
            Column::Other(f, v) => v.push(Accumulator::new(*f)),
        }
    }

    /// Whether `value` is an accumulator of this column's aggregate.
    fn fits(&self, value: &Accumulator) -> bool {
        match (self, value) {
            (Column::Count(_), Accumulator::Count(_)) | (Column::Sum(_), Accumulator::Sum(_)) => true,
            (Column::Other(f, _), value) => {
                std::mem::discriminant(&Accumulator::new(*f)) == std::mem::discriminant(value)
            }
            _ => false,
        }
    }

    /// Appends a row holding `value`, which [`Column::fits`].
    fn push_value(&mut self, value: Accumulator) {
        match (self, value) {
            (Column::Count(v), Accumulator::Count(n)) => v.push(n),
            (Column::Sum(v), Accumulator::Sum(s)) => v.push(s),
            (Column::Other(_, v), value) => v.push(value),
            (column, value) => unreachable!("{value:?} does not fit {column:?}"),
        }
    }

    /// As [`Accumulator::add`].
    fn add(&mut self, row: usize, input: &Input, event_time: Millis) {
        match (self, input) {
            (Column::Count(v), Input::Unit) => v[row] += 1,
            (Column::Sum(v), Input::Number(x)) => v[row] += x,
            (Column::Other(_, v), input) => v[row].add(input, event_time),
            _ => {}
        }
    }

    fn value(&self, row: usize) -> Accumulator {
        match self {
            Column::Count(v) => Accumulator::Count(v[row]),
            Column::Sum(v) => Accumulator::Sum(v[row]),
            Column::Other(_, v) => v[row].clone(),
        }
    }

    fn merge_into(&self, row: usize, into: &mut Accumulator) {
        match (self, into) {
            (Column::Count(v), Accumulator::Count(n)) => *n += v[row],
            (Column::Sum(v), Accumulator::Sum(s)) => *s += v[row],
            (Column::Other(_, v), into) => into.merge(&v[row]),
            _ => {}
        }
    }
}

#[derive(Debug)]
pub(super) struct Pane {
    rows: AHashMap<Arc<str>, u32>,
    columns: Vec<Column>,
    /// Changed since the last running values were emitted (emit mode `updates`).
    dirty: Vec<bool>,
}

impl Pane {
    /// An empty pane with room for `rows` keys.
    pub(super) fn with_capacity(functions: &[AggregateFunction], rows: usize) -> Self {
        Pane {
            rows: AHashMap::with_capacity(rows),
            columns: functions.iter().map(|f| Column::with_capacity(*f, rows)).collect(),
            dirty: Vec::with_capacity(rows),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.dirty.len()
    }

    pub(super) fn row(&self, key: &str) -> Option<usize> {
        self.rows.get(key).map(|&row| row as usize)
    }

    /// The key's row, added (empty) if the pane has none; and whether it was added.
    pub(super) fn row_or_insert(&mut self, key: &str) -> (usize, bool) {
        if let Some(row) = self.row(key) {
            return (row, false);
        }
        let row = self.len();
        self.rows.insert(Arc::from(key), u32::try_from(row).expect("a pane holds fewer than 2^32 keys"));
        for column in &mut self.columns {
            column.push_empty();
        }
        self.dirty.push(false);
        (row, true)
    }

    /// Adds a row restored from a snapshot, marked changed (whether the
    /// region holds its latest value is not in the snapshot, so the row's
    /// windows write it when they fire); `false` when the values do not
    /// match the pane's aggregates (or the key is already there).
    pub(super) fn insert(&mut self, key: Arc<str>, values: Vec<Accumulator>) -> bool {
        let fits = values.len() == self.columns.len() && self.columns.iter().zip(&values).all(|(c, v)| c.fits(v));
        if !fits || self.rows.contains_key(&key) {
            return false;
        }
        let row = u32::try_from(self.len()).expect("a pane holds fewer than 2^32 keys");
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.push_value(value);
        }
        self.rows.insert(key, row);
        self.dirty.push(true);
        true
    }

    pub(super) fn add(&mut self, row: usize, inputs: &[Input], event_time: Millis) {
        for (column, input) in self.columns.iter_mut().zip(inputs) {
            column.add(row, input, event_time);
        }
    }

    pub(super) fn mark_dirty(&mut self, row: usize) {
        self.dirty[row] = true;
    }

    /// Whether the row changed since the last [`Pane::take_dirty`] (or was
    /// never taken).
    pub(super) fn is_dirty(&self, row: usize) -> bool {
        self.dirty[row]
    }

    /// Keys changed since the last call, their flags cleared.
    pub(super) fn take_dirty(&mut self) -> Vec<Arc<str>> {
        let mut keys = Vec::new();
        for (key, &row) in &self.rows {
            if std::mem::take(&mut self.dirty[row as usize]) {
                keys.push(key.clone());
            }
        }
        keys
    }

    pub(super) fn values(&self, row: usize) -> Vec<Accumulator> {
        self.columns.iter().map(|c| c.value(row)).collect()
    }

    /// Merges the row's aggregates into `into` (one accumulator per aggregate).
    pub(super) fn merge_into(&self, row: usize, into: &mut [Accumulator]) {
        for (column, acc) in self.columns.iter().zip(into) {
            column.merge_into(row, acc);
        }
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = (&Arc<str>, usize)> + '_ {
        self.rows.iter().map(|(key, &row)| (key, row as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_add_and_merge_like_accumulators() {
        let functions = [AggregateFunction::Count, AggregateFunction::Sum, AggregateFunction::Max];
        let mut pane = Pane::with_capacity(&functions, 0);
        let key: Arc<str> = Arc::from("k");
        let (row, added) = pane.row_or_insert(&key);
        assert!(added);
        let mut expected: Vec<Accumulator> = functions.iter().map(|f| Accumulator::new(*f)).collect();
        for (v, t) in [(2.5, 1), (-1.0, 2)] {
            let inputs = [Input::Unit, Input::Number(v), Input::Number(v)];
            pane.add(row, &inputs, t);
            for (acc, input) in expected.iter_mut().zip(&inputs) {
                acc.add(input, t);
            }
        }
        assert_eq!(pane.row_or_insert(&key), (row, false));
        assert_eq!(pane.values(row), expected);
        let mut merged: Vec<Accumulator> = functions.iter().map(|f| Accumulator::new(*f)).collect();
        pane.merge_into(row, &mut merged);
        pane.merge_into(row, &mut merged);
        let mut twice = expected.clone();
        for (a, b) in twice.iter_mut().zip(&expected) {
            a.merge(b);
        }
        assert_eq!(merged, twice);
    }

    #[test]
    fn insert_refuses_values_of_other_aggregates() {
        let mut pane = Pane::with_capacity(&[AggregateFunction::Count, AggregateFunction::Min], 0);
        assert!(pane.insert(Arc::from("a"), vec![Accumulator::Count(3), Accumulator::Min(Some(1.0))]));
        assert!(!pane.insert(Arc::from("b"), vec![Accumulator::Sum(3.0), Accumulator::Min(None)]));
        assert!(!pane.insert(Arc::from("c"), vec![Accumulator::Count(3), Accumulator::Max(None)]));
        assert!(!pane.insert(Arc::from("a"), vec![Accumulator::Count(1), Accumulator::Min(None)]));
        assert_eq!(
            pane.row("a").map(|r| pane.values(r)),
            Some(vec![Accumulator::Count(3), Accumulator::Min(Some(1.0))])
        );
    }
}
