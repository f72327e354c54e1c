//! Helpers for oracle tests: random record streams, an independent batch sessionizer, and a
//! runner that pushes a stream through the real pipeline and the real transactional sink into
//! an in-memory "table", comparing it with a family's oracle at every completed epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use clickflow_operators::sink::{MemoryTable, SinkConfig, SinkStatus};
use clickflow_operators::time::{bucket_of, epoch_of, parse_tz, Granularity};
use differential_dataflow::input::Input;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use timely::dataflow::operators::ToStream;

use crate::enrich::{Source, TextHit as Hit};
use crate::event::{BotHit, Client, Erasure, Event, Record, Revenue};
use crate::family::Family;
use crate::metric::{Cell, MetricKey};
use crate::pipeline::metrics_with;
use crate::settings::Settings;
use crate::symbol::fingerprint;

/// A visit in text, as the oracles rebuild it.
#[derive(Clone, Debug)]
pub struct OracleVisit {
    pub site: String,
    pub visitor: u64,
    pub tz: String,
    pub start: i64,
    pub end: i64,
    pub pageviews: i64,
    pub interactions: i64,
    /// Empty for visits without pageviews.
    pub entry_page: String,
    pub exit_page: String,
    pub source: Source,
    pub client: Client,
    pub country: String,
    pub page_times: Vec<(i64, String, i64)>,
}

impl OracleVisit {
    pub fn is_bounce(&self) -> bool {
        self.pageviews == 1 && self.interactions == 0
    }

    pub fn duration_ms(&self) -> i64 {
        self.end - self.start
    }
}

pub const TEST_LATENESS_MS: u64 = 2 * 3_600_000;

pub fn test_settings() -> Settings {
    Settings {
        seal_lateness_ms: TEST_LATENESS_MS,
        ..Settings::default()
    }
}

/// Records with the ingest time (the timely time) they arrive at, in arrival order. Event
/// times lag arrival by up to an hour (late and back-dated events); about one in ten events
/// is a client retry of an earlier one; there are refunds of earlier purchases, bot hits and
/// erasures of visitors. Records are grouped into epochs of random size.
pub fn random_stream(seed: u64, n: usize) -> Vec<(Record, u64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"];
    let pages = ["/", "/pricing", "/blog/a", "/blog/b", "/cart"];
    let referrers = [
        None,
        None,
        Some("https://www.google.com/search?q=x"),
        Some("https://t.co/xyz"),
        Some("https://blog.friend.org/post?id=3"),
    ];
    let utms = [
        "",
        "",
        "",
        "?utm_source=newsletter&utm_medium=email&utm_campaign=bf",
    ];
    let clients = [
        ("desktop", "Chrome", "120", "Windows", "10"),
        ("mobile", "Safari", "17", "iOS", "17.1"),
        ("tablet", "Chrome", "119", "Android", "14"),
    ];
    let countries = ["FR", "US", "DE", "unknown"];
    let start = 1_795_400_000_000i64 + rng.random_range(0..86_400_000);
    let new_epoch_odds = rng.random_range(0.1..1.0);
    let mut out: Vec<(Record, i64)> = Vec::with_capacity(n);
    let mut events: Vec<Event> = Vec::new();
    let mut arrival = start;
    let mut last_bot: Option<BotHit> = None;
    for i in 0..n {
        arrival += rng.random_range(0..90_000);
        let roll = rng.random_range(0..100);
        if roll < 10 && !events.is_empty() {
            let copy = events[rng.random_range(0..events.len())].clone();
            if arrival - copy.ts < 3_600_000 {
                out.push((
                    Record::Event(Event {
                        received: arrival,
                        ..copy
                    }),
                    arrival,
                ));
                continue;
            }
        }
        let site = rng.random_range(0..4usize);
        if roll < 13 {
            // Bots retry too, with the same id and time.
            let bot = match (&last_bot, rng.random_bool(0.2)) {
                (Some(b), true) => b.clone(),
                _ => BotHit {
                    site: format!("site{site}"),
                    event_id: format!("b{i}"),
                    ts: arrival - rng.random_range(0..600_000),
                    tz: zones[site].to_string(),
                },
            };
            last_bot = Some(bot.clone());
            out.push((Record::Bot(bot), arrival));
            continue;
        }
        if roll < 14 {
            out.push((
                Record::Erase(Erasure {
                    site: format!("site{site}"),
                    visitor: rng.random_range(0..10),
                }),
                arrival,
            ));
            continue;
        }
        let ts = arrival - rng.random_range(0..3_600_000);
        let kind = rng.random_range(0..100);
        let (name, props, revenue, refund_of, ts) = if kind < 65 {
            ("pageview", Vec::new(), None, None, ts)
        } else if kind < 80 {
            let plan = ["free", "pro"][rng.random_range(0..2)];
            (
                "signup",
                vec![("plan".to_string(), plan.to_string())],
                None,
                None,
                ts,
            )
        } else if kind < 96 {
            let revenue = rng.random_bool(0.8).then(|| Revenue {
                amount: format!(
                    "{}.{:02}",
                    rng.random_range(1..200),
                    rng.random_range(0..100)
                ),
                currency: ["EUR", "USD"][rng.random_range(0..2)].to_string(),
            });
            ("purchase", Vec::new(), revenue, None, ts)
        } else {
            let purchases: Vec<&Event> = events
                .iter()
                .filter(|e| e.name == "purchase" && e.site == format!("site{site}"))
                .collect();
            match purchases.last() {
                // A refund comes after its purchase, in event time too.
                Some(p) => (
                    "refund",
                    Vec::new(),
                    None,
                    Some(p.event_id.clone()),
                    ts.max(p.ts),
                ),
                None => ("pageview", Vec::new(), None, None, ts),
            }
        };
        let client = clients[rng.random_range(0..clients.len())];
        let event = Event {
            site: format!("site{site}"),
            event_id: format!("e{i}"),
            name: name.into(),
            ts,
            received: arrival,
            visitor: rng.random_range(0..10),
            url: format!(
                "https://s{site}.example{}{}",
                pages[rng.random_range(0..pages.len())],
                utms[rng.random_range(0..utms.len())]
            ),
            referrer: referrers[rng.random_range(0..referrers.len())].map(str::to_owned),
            props,
            revenue,
            refund_of,
            tz: zones[site % zones.len()].to_string(),
            client: Client {
                device: client.0.into(),
                browser: client.1.into(),
                browser_version: client.2.into(),
                os: client.3.into(),
                os_version: client.4.into(),
            },
            country: countries[rng.random_range(0..countries.len())].into(),
        };
        events.push(event.clone());
        out.push((Record::Event(event), arrival));
    }
    // Random epoch splits: an epoch's time is the latest arrival in it, rounded up.
    let mut timed: Vec<(Record, u64)> = Vec::with_capacity(out.len());
    let mut group: Vec<Record> = Vec::new();
    let mut last_time = 0u64;
    let len = out.len();
    for (idx, (record, at)) in out.into_iter().enumerate() {
        group.push(record);
        if idx + 1 == len || rng.random_bool(new_epoch_odds) {
            let t = epoch_of(at, 1_000).max(last_time + 1_000);
            last_time = t;
            timed.extend(group.drain(..).map(|r| (r, t)));
        }
    }
    timed
}

/// What a family's oracle sees: the records that arrived before `now`, reduced the way the
/// product promises, by plain Rust.
pub struct Oracle {
    /// Surviving events (one per id: the first to arrive; of copies arriving together, the
    /// one with the earliest time, then the least visitor), erased visitors removed, refunds
    /// apart.
    pub hits: Vec<Hit>,
    pub refunds: Vec<Hit>,
    pub bots: Vec<BotHit>,
    /// The frontier: every record with a time before it is in; `None` once input ended.
    pub now: Option<u64>,
    pub settings: Settings,
}

impl Oracle {
    pub fn at(stream: &[(Record, u64)], now: Option<u64>, settings: &Settings) -> Oracle {
        let arrived = stream.iter().filter(|(_, t)| now.is_none_or(|n| *t < n));
        let mut least: HashMap<(String, String), (u64, i64, u64, Event)> = HashMap::new();
        let mut erased: HashSet<(String, u64)> = HashSet::new();
        let mut bots: HashMap<(String, String), (u64, i64, BotHit)> = HashMap::new();
        for (record, t) in arrived {
            match record {
                Record::Event(e) => {
                    let key = (e.site.clone(), e.event_id.clone());
                    let rank = (*t, e.ts, e.visitor);
                    if least
                        .get(&key)
                        .is_none_or(|old| rank < (old.0, old.1, old.2))
                    {
                        least.insert(key, (rank.0, rank.1, rank.2, e.clone()));
                    }
                }
                Record::Bot(b) => {
                    let key = (b.site.clone(), b.event_id.clone());
                    if bots.get(&key).is_none_or(|old| (*t, b.ts) < (old.0, old.1)) {
                        bots.insert(key, (*t, b.ts, b.clone()));
                    }
                }
                Record::Erase(x) => {
                    erased.insert((x.site.clone(), x.visitor));
                }
            }
        }
        let (refunds, hits): (Vec<Hit>, Vec<Hit>) = least
            .into_values()
            .map(|(_, _, _, e)| e)
            .filter(|e| !erased.contains(&(e.site.clone(), e.visitor)))
            .map(Hit::from)
            .partition(|h| h.is_refund());
        Oracle {
            hits,
            refunds,
            bots: bots.into_values().map(|(_, _, b)| b).collect(),
            now,
            settings: settings.clone(),
        }
    }
}

/// Accumulates expected rows: sums, and distinct counts from the members seen; rows whose
/// value is zero are not materialized.
#[derive(Default)]
pub struct Put {
    sums: BTreeMap<MetricKey, i64>,
    distinct: BTreeMap<MetricKey, BTreeSet<u64>>,
    sketched: BTreeSet<MetricKey>,
}

impl Put {
    pub fn add(&mut self, key: MetricKey, n: i64) {
        *self.sums.entry(key).or_default() += n;
    }

    /// Counts `member` once in the row `key`.
    pub fn distinct(&mut self, key: MetricKey, member: u64) {
        self.distinct.entry(key).or_default().insert(member);
    }

    /// As [`Put::distinct`], and the row's HyperLogLog registers too (as
    /// [`crate::uniques::registers_of`] has them for the row's set).
    pub fn distinct_sketched(&mut self, key: MetricKey, member: u64) {
        self.sketched.insert(key.clone());
        self.distinct(key, member);
    }

    pub fn rows(mut self) -> BTreeMap<MetricKey, i64> {
        for (k, members) in &self.distinct {
            if !self.sketched.contains(k) {
                continue;
            }
            for (precision, index, rank) in crate::uniques::registers_of(members) {
                let mut sketch = k.clone();
                sketch.metric = format!("{}_hll", k.metric);
                sketch.dimension_value = register_value(&k.dimension_value, precision, index);
                self.sums.insert(sketch, rank as i64);
            }
        }
        for (k, members) in std::mem::take(&mut self.distinct) {
            self.add(k, members.len() as i64);
        }
        self.sums.into_iter().filter(|(_, v)| *v != 0).collect()
    }
}

/// The oracle of a visit breakdown: per bucket of each visit's start and each of
/// `dimensions(visit)`, visits, distinct visitors and (with `bounces`) bounces.
pub fn oracle_visit_breakdown(
    o: &Oracle,
    family: &str,
    dimensions: fn(&OracleVisit) -> Vec<(&'static str, String)>,
    bounces: bool,
) -> BTreeMap<MetricKey, i64> {
    let mut put = Put::default();
    for v in oracle_visits(&o.hits, o.settings.visit_timeout_ms) {
        for g in crate::metric::VISIT_GRANULARITIES {
            let b = bucket_of(v.start, g, parse_tz(&v.tz));
            for (d, value) in dimensions(&v) {
                let key = |m: &str| {
                    MetricKey::new(&v.site, b, family, m)
                        .by(d, &value)
                        .open_until(crate::metric::visit_rows_open_until(b, parse_tz(&v.tz)))
                };
                put.add(key("visits"), 1);
                if bounces {
                    put.add(key("bounces"), v.is_bounce() as i64);
                }
                put.distinct_sketched(key("visitors"), v.visitor);
            }
        }
    }
    put.rows()
}

/// The property every family states: its rows equal its oracle after every epoch of random
/// streams (sizes 50 to 300; `PROPTEST_CASES` raises the number of streams from 6).
macro_rules! oracle_property {
    ($test:ident, $family:expr, $oracle:expr) => {
        proptest::proptest! {
            #![proptest_config(proptest::test_runner::Config::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6)
            ))]
            #[test]
            fn $test(seed in proptest::prelude::any::<u64>(), n in 50usize..300) {
                $crate::testing::check_every_epoch(&$crate::testing::random_stream(seed, n), $family, $oracle);
            }
        }
    };
}
pub(crate) use oracle_property;

/// Visits by plain batch logic: sort each (site, visitor, local day)'s hits by time and cut
/// where the gap exceeds `timeout`.
pub fn oracle_visits(hits: &[Hit], timeout: i64) -> Vec<OracleVisit> {
    let mut groups: BTreeMap<(String, u64, i64), Vec<&Hit>> = BTreeMap::new();
    for h in hits {
        let day = bucket_of(h.ts, Granularity::Day, parse_tz(&h.tz));
        groups
            .entry((h.site.clone(), h.visitor, day.end))
            .or_default()
            .push(h);
    }
    let mut visits = Vec::new();
    for ((site, visitor, _day_end), mut group) in groups {
        // Events at the same instant go in the order of their ids' fingerprints.
        group.sort_by_key(|h| (h.ts, fingerprint(&h.event_id)));
        let mut cuts = vec![0];
        for i in 1..group.len() {
            if group[i].ts - group[i - 1].ts > timeout {
                cuts.push(i);
            }
        }
        cuts.push(group.len());
        for w in cuts.windows(2) {
            let run = &group[w[0]..w[1]];
            let views: Vec<&&Hit> = run.iter().filter(|h| h.is_pageview()).collect();
            let first = views.first().copied().copied().unwrap_or(run[0]);
            visits.push(OracleVisit {
                site: site.clone(),
                visitor,
                tz: first.tz.clone(),
                start: run[0].ts,
                end: run[run.len() - 1].ts,
                pageviews: views.len() as i64,
                interactions: (run.len() - views.len()) as i64,
                entry_page: views
                    .first()
                    .map(|h| h.pathname.clone())
                    .unwrap_or_default(),
                exit_page: views.last().map(|h| h.pathname.clone()).unwrap_or_default(),
                source: first.source.clone(),
                client: first.client.clone(),
                country: first.country.clone(),
                page_times: (1..views.len())
                    .map(|i| {
                        (
                            views[i - 1].ts,
                            views[i - 1].pathname.clone(),
                            views[i].ts - views[i - 1].ts,
                        )
                    })
                    .collect(),
            });
        }
    }
    visits
}

/// Runs the whole pipeline over `stream` and, after every completed epoch and at the end,
/// compares the sink's rows of `family` with `oracle`. A row the sink has sealed must keep
/// the value the oracle gave it when it sealed, whatever arrives later.
pub fn check_every_epoch(
    stream: &[(Record, u64)],
    family: &'static Family,
    oracle: fn(&Oracle) -> BTreeMap<MetricKey, i64>,
) {
    check_families_every_epoch(stream, vec![family], oracle);
}

/// As [`check_every_epoch`], for several families at once: the whole table the sink holds
/// (every row of every family in `families`) must equal `oracle` after every epoch.
pub fn check_families_every_epoch(
    stream: &[(Record, u64)],
    families: Vec<&'static Family>,
    oracle: impl Fn(&Oracle) -> BTreeMap<MetricKey, i64>,
) {
    let settings = test_settings();
    let lateness = settings.seal_lateness_ms;
    let family = families
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(",");
    let table: MemoryTable<MetricKey, Cell> = MemoryTable::default();
    let rows = table.0.clone();
    let owned = stream.to_vec();
    let snapshot = move || rows.lock().expect("table lock").clone();
    // Rows the sink sealed, with the value they had then (absent rows stay absent).
    let mut frozen: BTreeMap<MetricKey, i64> = BTreeMap::new();
    let mut previous_frontier = 0u64;
    let mut expected_at = |now: Option<u64>| -> BTreeMap<MetricKey, i64> {
        let fresh = oracle(&Oracle::at(&owned, now, &settings));
        let frontier = now.unwrap_or(u64::MAX);
        let mut want = BTreeMap::new();
        for (k, v) in fresh {
            let seal = k.seal_time(lateness);
            if seal > frontier {
                want.insert(k, v);
            } else if seal > previous_frontier {
                frozen.insert(k, v);
            }
        }
        previous_frontier = frontier;
        want.extend(frozen.iter().map(|(k, v)| (k.clone(), *v)));
        want
    };
    let stream = stream.to_vec();
    let settings = test_settings();
    type Snapshots = Vec<(Option<u64>, BTreeMap<MetricKey, Cell>)>;
    let checks: Arc<Mutex<Snapshots>> = Arc::default();
    let checks_w = checks.clone();
    let status_w = Arc::new(SinkStatus::default());
    timely::execute_directly(move |worker| {
        let (mut input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, records) = scope.new_collection::<Record, isize>();
            let mut out = metrics_with(records, &settings, families);
            let progress = Vec::<(u32, u64)>::new()
                .to_stream(scope)
                .container::<Vec<_>>();
            let probe;
            (probe, out.rows) = out.rows.probe();
            out.sink(progress, SinkConfig::default(), table, status_w.clone());
            (input, probe)
        });
        for (record, t) in stream {
            if t > *input.time() {
                input.advance_to(t);
                input.flush();
                while probe.less_than(input.time()) {
                    worker.step();
                }
                // The sink commits in its own activation after the probe passes (and not at
                // all when nothing changed).
                for _ in 0..50 {
                    if status_w.committed_frontier.load(Ordering::Relaxed) >= t {
                        break;
                    }
                    worker.step();
                }
                checks_w.lock().expect("checks").push((Some(t), snapshot()));
            }
            input.insert(record);
        }
        input.close();
        while worker.step() {}
        checks_w.lock().expect("checks").push((None, snapshot()));
    });
    let checks = std::mem::take(&mut *checks.lock().expect("checks"));
    for (i, (now, stored)) in checks.into_iter().enumerate() {
        // Postgres keys rows without `open_until`: two rows differing only there would collide
        // (all metrics of a stored row must share it).
        let mut primary = std::collections::BTreeSet::new();
        for k in stored.keys() {
            let pk = MetricKey {
                open_until: 0,
                ..k.clone()
            };
            assert!(
                primary.insert(pk),
                "{family}: two rows share a primary key: {k:?}"
            );
        }
        let got = metric_by_metric(&stored);
        let want = expected_at(now);
        assert_same_rows(
            &got,
            &want,
            &format!("{family}, check {i} at frontier {now:?}"),
        );
    }
}

/// The table as oracles state it: one row per metric, and a sketch as one row per register
/// (the register's precision and index appended to the row's value after
/// [`crate::metric::VALUE_SEPARATOR`], its rank the value).
pub fn metric_by_metric(table: &BTreeMap<MetricKey, Cell>) -> BTreeMap<MetricKey, i64> {
    let mut out = BTreeMap::new();
    for (k, cell) in table {
        assert!(k.metric.is_empty(), "{k:?}: a stored row names no metric");
        for (metric, v) in &cell.numbers {
            let mut row = k.clone();
            row.metric = metric.to_string();
            out.insert(row, *v);
        }
        if let Some((metric, bytes)) = &cell.sketch {
            let registers = crate::uniques::decode(bytes).expect("a sketch the sink wrote");
            assert!(!registers.is_empty(), "{k:?}: an empty sketch is no sketch");
            for (precision, index, rank) in registers {
                let mut row = k.clone();
                row.metric = metric.to_string();
                row.dimension_value = register_value(&k.dimension_value, precision, index);
                out.insert(row, rank as i64);
            }
        }
    }
    out
}

/// A register's row as oracles state it: its precision and index after the row's value.
fn register_value(value: &str, precision: u8, index: u32) -> String {
    format!("{value}\u{1f}{precision}:{index}")
}

/// Compares two tables and reports the first few differing rows instead of both tables.
pub fn assert_same_rows(
    got: &BTreeMap<MetricKey, i64>,
    want: &BTreeMap<MetricKey, i64>,
    context: &str,
) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        if got.get(k) != Some(v) {
            diffs.push(format!("{k:?}: got {:?}, want {v}", got.get(k)));
        }
    }
    for (k, v) in got {
        if !want.contains_key(k) {
            diffs.push(format!("{k:?}: got {v}, want nothing"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{context}: {} of {} rows differ; first:\n{}",
        diffs.len(),
        want.len(),
        diffs.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
}
