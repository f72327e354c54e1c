//! The shape every family's output takes: one row per (site, bucket, dimension, metric) inside
//! the dataflow, stored as one row per (site, bucket, dimension) holding all its metrics.

use chrono_tz::Tz;
use clickflow_operators::sink::{add_to, RowModel};
use clickflow_operators::time::{bucket_of, seal_time, Bucket, Granularity};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::symbol::{Dictionary, Sym};
use crate::uniques;

/// Joins the names of a multi-dimension breakdown (`goal,prop:plan`) and, with
/// [`VALUE_SEPARATOR`], its values.
pub const DIMENSION_SEPARATOR: char = ',';
/// Separates the values of a multi-dimension breakdown; the ASCII unit separator cannot occur
/// in values the collector accepts.
pub const VALUE_SEPARATOR: char = '\u{1f}';

/// Rows that describe "now" rather than a bucket (realtime) live at this instant: they never
/// seal. 4000-01-01T00:00:00Z: far beyond any real bucket, and a four-digit year, which
/// Postgres partition bounds need.
pub const TIMELESS_END_MS: i64 = 64_060_588_800_000;

/// Identifies one materialized number. Families without a breakdown use an empty
/// `dimension` and `dimension_value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetricKey {
    pub site: String,
    pub granularity: Granularity,
    pub bucket_start: i64,
    pub bucket_end: i64,
    pub family: String,
    pub dimension: String,
    pub dimension_value: String,
    pub metric: String,
    /// Events with an event time before this can still change the row. Usually the bucket
    /// end; for numbers derived from visits, the end of the visit's day, because a late event
    /// can extend or merge a visit that started in an earlier bucket.
    pub open_until: i64,
}

impl MetricKey {
    pub fn new(site: &str, bucket: Bucket, family: &str, metric: &str) -> MetricKey {
        MetricKey {
            site: site.to_owned(),
            granularity: bucket.granularity,
            bucket_start: bucket.start,
            bucket_end: bucket.end,
            family: family.to_owned(),
            dimension: String::new(),
            dimension_value: String::new(),
            metric: metric.to_owned(),
            open_until: bucket.end,
        }
    }

    /// The same row broken down by `dimension` = `value`.
    pub fn by(mut self, dimension: &str, value: &str) -> MetricKey {
        self.dimension = dimension.to_owned();
        self.dimension_value = value.to_owned();
        self
    }

    /// Marks the row as changeable by events up to `until` (see [`MetricKey::open_until`]).
    pub fn open_until(mut self, until: i64) -> MetricKey {
        self.open_until = self.open_until.max(until);
        self
    }

    /// The ingest time from which this row can no longer change.
    pub fn seal_time(&self, lateness_ms: u64) -> u64 {
        seal_time(self.open_until, lateness_ms)
    }
}

/// Appended to a distinct metric's name for its HyperLogLog sketch row.
pub const SKETCH_SUFFIX: &str = "_hll";

/// What a rollup row holds once written: every metric of one (site, bucket, family,
/// breakdown value), and the row's visitor sketch where the family keeps one. Families emit
/// one [`Row`] per metric; the sink gathers them, so storage has one row per key.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    /// Metric name and value, by name; a metric of value zero is absent.
    pub numbers: Vec<(&'static str, i64)>,
    /// The sketch metric's name and its registers, [`uniques::encode`]d.
    pub sketch: Option<(&'static str, Vec<u8>)>,
}

/// A rollup row as the sink settles it, on any worker: metrics by symbol. The writer renders
/// it into a [`Cell`] ([`Rollups::cell`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Settled {
    /// Metric and value, by metric; a metric of value zero is absent.
    pub numbers: Vec<(Sym, i64)>,
    /// The sketch metric and its registers, [`uniques::encode`]d.
    pub sketch: Option<(Sym, Vec<u8>)>,
}

/// The metric part of a row on its way to the sink, the rest of the key being [`RowKey::row`].
pub type Measure = (Sym, i64);

/// How the transactional sink reads rows: keyed by [`RowKey::row`], each bounded by its seal,
/// its metrics (a sketch's registers included) written together.
#[derive(Clone, Debug)]
pub struct Rollups {
    pub seal_lateness_ms: u64,
    /// Every metric name the families emit, and whether it is a sketch.
    pub metrics: Vec<(Sym, &'static str, bool)>,
}

impl Rollups {
    /// The model of rows holding `metrics` (every name the families emit; repeats are fine).
    pub fn new(seal_lateness_ms: u64, metrics: impl IntoIterator<Item = &'static str>) -> Rollups {
        let mut metrics: Vec<(Sym, &'static str, bool)> = metrics
            .into_iter()
            .map(|m| (Sym::of(m), m, m.ends_with(SKETCH_SUFFIX)))
            .collect();
        metrics.sort_unstable();
        metrics.dedup();
        Rollups {
            seal_lateness_ms,
            metrics,
        }
    }

    /// `row` with its metrics named.
    pub fn cell(&self, row: &Settled) -> Cell {
        let name = |metric: Sym| {
            let named = self.metric(metric).map(|(name, _)| name);
            if named.is_none() {
                tracing::error!(?metric, "a row of a metric no family names");
            }
            named
        };
        let mut numbers: Vec<(&'static str, i64)> = row
            .numbers
            .iter()
            .filter_map(|(metric, v)| Some((name(*metric)?, *v)))
            .collect();
        numbers.sort_unstable();
        let sketch = row
            .sketch
            .as_ref()
            .and_then(|(metric, registers)| Some((name(*metric)?, registers.clone())));
        Cell { numbers, sketch }
    }

    /// The name of `metric` and whether it is a sketch.
    fn metric(&self, metric: Sym) -> Option<(&'static str, bool)> {
        let at = self
            .metrics
            .binary_search_by_key(&metric, |(sym, _, _)| *sym)
            .ok()?;
        let (_, name, sketch) = self.metrics[at];
        Some((name, sketch))
    }
}

/// What the sink holds of a stored row while it is open: its metrics' totals, and its
/// sketch's registers in 5 bytes each (a general value would take 24).
#[derive(Default)]
pub struct RowState {
    /// Each metric's sum of `value × multiplicity` (see [`Row`]), sorted by metric, none zero.
    numbers: SmallVec<[(Sym, i64); 2]>,
    /// The sketch metric; `NONE` while the row has no sketch.
    sketch: Sym,
    /// (register, multiplicity), sorted by precision, index, then rank (see
    /// [`register_bytes`]). No inline slot:
    /// with SmallVec's `union` layout it is the size of a `Vec`. A register's multiplicity
    /// is 1 while it holds a rank and 0 otherwise, -1 or 2 for a moment within a round (its
    /// old rank retracted, its new one added): a byte holds it.
    registers: SmallVec<[([u8; 4], i8); 0]>,
}

impl RowModel<RowKey, Measure> for Rollups {
    type Written = Settled;
    type State = RowState;

    fn bounds(&self, key: &RowKey) -> (i64, u64) {
        (key.bucket.start, key.seal_time(self.seal_lateness_ms))
    }

    fn apply(&self, state: &mut RowState, (metric, value): Measure, diff: isize) {
        if !matches!(self.metric(metric), Some((_, true))) {
            let change = value.saturating_mul(diff as i64);
            match state.numbers.binary_search_by_key(&metric, |(m, _)| *m) {
                Ok(at) => {
                    let total = &mut state.numbers[at].1;
                    *total = total.saturating_add(change);
                    if *total == 0 {
                        state.numbers.remove(at);
                    }
                }
                Err(at) if change != 0 => state.numbers.insert(at, (metric, change)),
                Err(_) => {}
            }
            return;
        }
        state.sketch = metric;
        let Some(register) = uniques::unpack(value) else {
            return;
        };
        let diff = diff.clamp(i8::MIN as isize, i8::MAX as isize) as i8;
        add_to(&mut state.registers, register_bytes(register), diff);
    }

    fn written(&self, _key: &RowKey, state: &RowState) -> Option<Settled> {
        let mut row = Settled::default();
        row.numbers.extend(state.numbers.iter().copied());
        let registers: Vec<uniques::Register> = state
            .registers
            .iter()
            .filter(|(_, d)| *d > 0)
            .map(|(bytes, _)| register_of_bytes(*bytes))
            .collect();
        if state.sketch != Sym::NONE && !registers.is_empty() {
            row.sketch = Some((state.sketch, uniques::encode(registers)));
        }
        (!row.numbers.is_empty() || row.sketch.is_some()).then_some(row)
    }
}

/// A register in the sink's state, in 4 bytes: `sparse << 31 | index << 6 | rank`,
/// big-endian, so entries sort by precision, index, then rank (ranks never exceed 53).
fn register_bytes((precision, index, rank): uniques::Register) -> [u8; 4] {
    let sparse = (precision as u32 == uniques::SPARSE_PRECISION) as u32;
    (sparse << 31 | index << 6 | rank as u32).to_be_bytes()
}

fn register_of_bytes(bytes: [u8; 4]) -> uniques::Register {
    let word = u32::from_be_bytes(bytes);
    let precision = if word >> 31 == 1 {
        uniques::SPARSE_PRECISION
    } else {
        uniques::PRECISION
    };
    (
        precision as u8,
        (word >> 6) & 0x01ff_ffff,
        (word & 0x3f) as u8,
    )
}

/// A metric row inside the dataflow: [`MetricKey`] with every text interned, so keys are
/// plain integers to hash, compare and hold. The sink renders the rows it commits back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RowKey {
    pub site: Sym,
    pub bucket: Bucket,
    pub family: Sym,
    pub metric: Sym,
    /// Dimension names, joined by [`DIMENSION_SEPARATOR`]; `NONE` parts are absent.
    pub dimension: [Sym; 2],
    /// Dimension values, joined by [`VALUE_SEPARATOR`]; `NONE` parts are absent.
    pub value: [Sym; 3],
    pub open_until: i64,
}

/// A family's output. A metric row's value is the sum of `value × multiplicity` of its
/// updates, so a family may send a total that retracts and replaces itself (a distinct count)
/// or changes that add up (sums, [`crate::aggregate::sums_rows`]). Sketch rows (metrics ending
/// in [`SKETCH_SUFFIX`]) have one value per non-zero register ([`uniques::pack`]).
pub type Row = (RowKey, i64);

impl RowKey {
    pub fn new(site: Sym, bucket: Bucket, family: &str, metric: &str) -> RowKey {
        RowKey {
            site,
            bucket,
            family: Sym::of(family),
            metric: Sym::of(metric),
            dimension: [Sym::NONE; 2],
            value: [Sym::NONE; 3],
            open_until: bucket.end,
        }
    }

    /// The same row broken down by `dimension` = `value`.
    pub fn by(mut self, dimension: &str, value: Sym) -> RowKey {
        self.dimension = [Sym::of(dimension), Sym::NONE];
        self.value = [value, Sym::NONE, Sym::NONE];
        self
    }

    /// Broken down by several dimensions at once (`goal,prop:plan` = `signup` + `pro`).
    pub fn by_parts(mut self, dimension: [Sym; 2], value: [Sym; 2]) -> RowKey {
        self.dimension = dimension;
        self.value = [value[0], value[1], Sym::NONE];
        self
    }

    /// The ingest time from which the sink holds the row as final (see
    /// [`MetricKey::seal_time`]).
    pub fn seal_time(&self, lateness_ms: u64) -> u64 {
        seal_time(self.open_until, lateness_ms)
    }

    /// Marks the row as changeable by events up to `until` (see [`MetricKey::open_until`]).
    pub fn open_until(mut self, until: i64) -> RowKey {
        self.open_until = self.open_until.max(until);
        self
    }

    /// The stored row this metric row is part of: the key without its metric.
    pub fn row(mut self) -> RowKey {
        self.metric = Sym::NONE;
        self
    }

    /// The row in text, and whether every symbol had its word (`false` is a bug upstream).
    pub fn render(&self, dict: &Dictionary) -> (MetricKey, bool) {
        let (site, a) = dict.join(&[self.site], ' ');
        let (family, b) = dict.join(&[self.family], ' ');
        let (metric, c) = dict.join(&[self.metric], ' ');
        let (dimension, d) = dict.join(&self.dimension, DIMENSION_SEPARATOR);
        let (dimension_value, e) = dict.join(&self.value, VALUE_SEPARATOR);
        let key = MetricKey {
            site,
            granularity: self.bucket.granularity,
            bucket_start: self.bucket.start,
            bucket_end: self.bucket.end,
            family,
            dimension,
            dimension_value,
            metric,
            open_until: self.open_until,
        };
        (key, a && b && c && d && e)
    }
}

/// `[a, b]` → `"a,b"` for names, `"a\u{1f}b"` for values.
pub fn join_dimensions(parts: &[&str], separator: char) -> String {
    let mut out = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(separator);
        }
        out.push_str(p);
    }
    out
}

/// The granularities every visit-based family materializes. Minute visits would mostly be
/// fragments of visits; the query API serves minutes for per-event metrics only.
pub const VISIT_GRANULARITIES: [Granularity; 2] = [Granularity::Hour, Granularity::Day];

/// Until when a row derived from visits can change: the end of the last day (in the site's
/// zone) that its bucket touches, since a visit starting in the bucket lives in one of those
/// days and can grow until that day seals. A function of the bucket alone, so every visit of
/// a bucket writes the same row even where hours straddle local midnight (UTC+5:30).
pub fn visit_rows_open_until(bucket: Bucket, tz: Tz) -> i64 {
    bucket_of(bucket.end - 1, Granularity::Day, tz).end
}
