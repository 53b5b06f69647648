//! Independent reference computations for the end-to-end tests: plain
//! loops over the produced data, sharing no code with `src/window`.

use std::collections::{BTreeMap, BTreeSet};

/// One produced order, as the test knows it.
#[derive(Debug, Clone)]
pub struct Order {
    pub partition: i32,
    pub customer: String,
    pub product: String,
    pub amount: f64,
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub window_end: i64,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub products: BTreeSet<String>,
    pub first: (i64, String),
    pub last: (i64, String),
}

impl Expected {
    fn new(window_end: i64, o: &Order) -> Self {
        Expected {
            window_end,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            products: BTreeSet::new(),
            first: (o.ts, o.product.clone()),
            last: (o.ts, o.product.clone()),
        }
    }

    fn add(&mut self, o: &Order) {
        self.count += 1;
        self.sum += o.amount;
        self.min = self.min.min(o.amount);
        self.max = self.max.max(o.amount);
        self.products.insert(o.product.clone());
        let pair = (o.ts, o.product.clone());
        if pair < self.first {
            self.first = pair.clone();
        }
        if pair > self.last {
            self.last = pair;
        }
    }
}

/// (customer, window_start) → expected entry.
pub type Table = BTreeMap<(String, i64), Expected>;

/// Tumbling/sliding windows with a per-partition bounded-out-of-orderness
/// watermark: a record counts in each of its windows whose end plus the
/// lateness is still ahead of its partition's watermark when it arrives;
/// with `amend`, late records count everywhere. Returns the table and the
/// number of records that found no window (late).
pub fn fixed_windows(
    orders: &[Order],
    size: i64,
    slide: i64,
    lateness: i64,
    disorder: i64,
    amend: bool,
) -> (Table, u64) {
    let mut table = Table::new();
    let mut watermark: BTreeMap<i32, i64> = BTreeMap::new();
    let mut late = 0;
    for o in orders {
        let w = watermark.entry(o.partition).or_insert(i64::MIN);
        let mut accepted = false;
        let mut start = (o.ts - size).div_euclid(slide) * slide;
        let mut windows = Vec::new();
        while start <= o.ts {
            if o.ts < start + size {
                windows.push(start);
            }
            start += slide;
        }
        for &start in &windows {
            if start + size + lateness > *w {
                accepted = true;
            }
        }
        if !accepted {
            late += 1;
        }
        for &start in &windows {
            if amend || start + size + lateness > *w {
                table.entry((o.customer.clone(), start)).or_insert_with(|| Expected::new(start + size, o)).add(o);
            }
        }
        *w = (*w).max(o.ts - disorder);
    }
    (table, late)
}

/// Session windows over records that are never late: per customer, sort by
/// time and split where consecutive times are more than `gap` apart.
pub fn sessions(orders: &[Order], gap: i64) -> Table {
    let mut by_customer: BTreeMap<&str, Vec<&Order>> = BTreeMap::new();
    for o in orders {
        by_customer.entry(&o.customer).or_default().push(o);
    }
    let mut table = Table::new();
    for (customer, mut list) in by_customer {
        list.sort_by_key(|o| o.ts);
        let mut groups: Vec<Vec<&Order>> = Vec::new();
        for o in list {
            match groups.last_mut() {
                Some(g) if o.ts - g.last().expect("groups are never empty").ts <= gap => g.push(o),
                _ => groups.push(vec![o]),
            }
        }
        for g in groups {
            let (start, end) = (g[0].ts, g.last().expect("non-empty").ts + gap);
            let e = table.entry((customer.to_string(), start)).or_insert_with(|| Expected::new(end, g[0]));
            for o in g {
                e.add(o);
            }
        }
    }
    table
}

/// Compares a region entry (HGETALL fields) with the reference; returns a
/// description of the first difference.
pub fn check_entry(fields: &BTreeMap<String, String>, start: i64, e: &Expected) -> Result<(), String> {
    let get = |name: &str| fields.get(name).cloned().ok_or_else(|| format!("field {name} missing in {fields:?}"));
    let num = |name: &str| -> Result<f64, String> { get(name)?.parse::<f64>().map_err(|err| format!("{name}: {err}")) };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    if get("window_start")? != start.to_string() || get("window_end")? != e.window_end.to_string() {
        return Err(format!(
            "window bounds {:?}..{:?}, expected {start}..{}",
            fields.get("window_start"),
            fields.get("window_end"),
            e.window_end
        ));
    }
    if get("orders")? != e.count.to_string() {
        return Err(format!("count {} expected {}", get("orders")?, e.count));
    }
    for (name, want) in
        [("revenue", e.sum), ("smallest", e.min), ("largest", e.max), ("avg_amount", e.sum / e.count as f64)]
    {
        if !close(num(name)?, want) {
            return Err(format!("{name} {} expected {want}", num(name)?));
        }
    }
    // HyperLogLog with linear counting: exact within ±1 at these sizes.
    let distinct = num("products")?;
    if (distinct - e.products.len() as f64).abs() > 1.0 {
        return Err(format!("products {distinct} expected {}", e.products.len()));
    }
    if get("first_product")? != e.first.1 || get("last_product")? != e.last.1 {
        return Err(format!(
            "first/last {:?}/{:?} expected {:?}/{:?}",
            fields.get("first_product"),
            fields.get("last_product"),
            e.first,
            e.last
        ));
    }
    Ok(())
}

/// The aggregates section every end-to-end pipeline uses, matching [`check_entry`].
pub const AGGREGATES: &str = r#"
orders = { function = "count" }
revenue = { function = "sum", field = "/amount" }
smallest = { function = "min", field = "/amount" }
largest = { function = "max", field = "/amount" }
avg_amount = { function = "avg", field = "/amount" }
products = { function = "distinct_count", field = "/product" }
first_product = { function = "first", field = "/product" }
last_product = { function = "last", field = "/product" }
"#;
