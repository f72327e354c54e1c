//! The list of metric families. Adding a family is one file plus one line here.

use differential_dataflow::VecCollection;

use crate::event::Record;
pub use crate::family::{Denominator, Derived, Family};
use crate::pipeline::{metrics_with, Rollup};
use crate::settings::Settings;

pub static FAMILIES: &[Family] = &[
    crate::traffic::FAMILY,
    crate::sessions::FAMILY,
    crate::pages::FAMILY,
    crate::sources::FAMILY,
    crate::tech::FAMILY,
    crate::geo::FAMILY,
    crate::goals::FAMILY,
    crate::revenue::FAMILY,
    crate::realtime::FAMILY,
];

/// Everything downstream of the source: the shared stages and every registered family.
pub fn metrics<'s>(records: VecCollection<'s, u64, Record>, settings: &Settings) -> Rollup<'s> {
    metrics_of(records, settings, |_| true)
}

/// As [`metrics`], with only the registered families `include` accepts (benchmarks and
/// diagnosis).
pub fn metrics_of<'s>(
    records: VecCollection<'s, u64, Record>,
    settings: &Settings,
    include: impl Fn(&Family) -> bool,
) -> Rollup<'s> {
    let families = FAMILIES.iter().filter(|f| include(f)).collect();
    metrics_with(records, settings, families)
}

/// Whether `metric` of `family` counts distinct members, as the family declares.
pub fn is_distinct(family: &str, metric: &str) -> bool {
    FAMILIES
        .iter()
        .any(|f| f.name == family && f.distinct.contains(&metric))
}

/// The derived metric `name` and the family that declares it.
pub fn derived(name: &str) -> Option<(&'static Family, &'static Derived)> {
    FAMILIES
        .iter()
        .find_map(|f| f.derived.iter().find(|d| d.name == name).map(|d| (f, d)))
}

/// The family that computes `metric` broken down by `dimension` (`""` for none), if any.
pub fn family_of(metric: &str, dimension: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| {
        f.metrics.contains(&metric)
            && (f.dimensions.contains(&dimension)
                || f.dimensions
                    .iter()
                    .any(|d| d.ends_with(":*") && matches_pattern(d, dimension)))
    })
}

/// `goal,prop:*` matches `goal,prop:plan`.
fn matches_pattern(pattern: &str, dimension: &str) -> bool {
    let prefix = pattern.trim_end_matches('*');
    dimension.len() > prefix.len() && dimension.starts_with(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_and_breakdown_has_one_family() {
        for f in FAMILIES {
            for m in f.metrics {
                for d in f.dimensions {
                    let d = d.replace('*', "plan");
                    let found = family_of(m, &d).map(|x| x.name);
                    assert_eq!(found, Some(f.name), "{m} by {d:?}");
                }
            }
        }
        assert_eq!(family_of("visitors", "").map(|f| f.name), Some("traffic"));
        assert_eq!(
            family_of("visits", "source").map(|f| f.name),
            Some("sources")
        );
        assert_eq!(
            family_of("conversions", "goal,prop:plan").map(|f| f.name),
            Some("goals")
        );
        assert!(family_of("visits", "nope").is_none());
    }

    #[test]
    fn declarations_name_what_families_store() {
        let mut names = std::collections::BTreeSet::new();
        for f in FAMILIES {
            for m in f.distinct {
                assert!(
                    f.metrics.contains(m),
                    "{}: distinct {m} is not stored",
                    f.name
                );
            }
            for d in f.derived {
                assert!(names.insert(d.name), "{} is derived twice", d.name);
                assert!(
                    FAMILIES.iter().all(|g| !g.metrics.contains(&d.name)),
                    "{} is both stored and derived",
                    d.name
                );
                let stored = |m: &str| FAMILIES.iter().any(|g| g.metrics.contains(&m));
                assert!(stored(d.numerator), "{}: numerator {}", d.name, d.numerator);
                match d.denominator {
                    Denominator::Metric(m) => assert!(stored(m), "{}: {m}", d.name),
                    Denominator::Total(family, m) => assert!(
                        FAMILIES
                            .iter()
                            .any(|g| g.name == family && g.metrics.contains(&m)),
                        "{}: {family} does not store {m}",
                        d.name
                    ),
                    Denominator::Amount => {}
                }
            }
        }
        assert!(is_distinct("traffic", "visitors"));
        assert!(is_distinct("realtime", "current_visitors"));
        assert!(!is_distinct("traffic", "pageviews"));
        assert_eq!(
            derived("conversion_rate").map(|(f, _)| f.name),
            Some("goals")
        );
    }
}

#[cfg(test)]
mod whole_table {
    use std::collections::BTreeMap;

    use super::*;
    use crate::event::Record;
    use crate::metric::MetricKey;
    use crate::testing::{check_families_every_epoch, random_stream, Oracle};

    type FamilyOracle = fn(&Oracle) -> BTreeMap<MetricKey, i64>;

    /// Every family's oracle, merged: the complete rollups table.
    fn all_oracles(o: &Oracle) -> BTreeMap<MetricKey, i64> {
        let oracles: [FamilyOracle; 9] = [
            crate::traffic::tests::oracle,
            crate::sessions::tests::oracle,
            crate::pages::tests::oracle,
            crate::sources::tests::oracle,
            crate::tech::tests::oracle,
            crate::geo::tests::oracle,
            crate::goals::tests::oracle,
            crate::revenue::tests::oracle,
            crate::realtime::tests::oracle,
        ];
        assert_eq!(
            oracles.len(),
            FAMILIES.len(),
            "a family without its oracle here"
        );
        let mut all = BTreeMap::new();
        for oracle in oracles {
            for (k, v) in oracle(o) {
                assert!(
                    all.insert(k.clone(), v).is_none(),
                    "two families claim {k:?}"
                );
            }
        }
        all
    }

    /// A fixed seeded stream (four sites in four zones, late, retried, re-stamped, erased,
    /// refunded, bots) through every registered family at once: after every epoch the complete
    /// table equals the merged oracles, so families neither miss rows nor write each other's.
    #[test]
    fn the_complete_table_equals_an_independent_computation() {
        let stream = random_stream(20_261_125, 1_500);
        let erasures = stream
            .iter()
            .filter(|(r, _)| matches!(r, Record::Erase(_)))
            .count();
        let refunds = stream
            .iter()
            .filter(|(r, _)| matches!(r, Record::Event(e) if e.refund_of.is_some()))
            .count();
        assert!(
            erasures > 10 && refunds > 10,
            "the stream has erasures and refunds"
        );
        check_families_every_epoch(&stream, FAMILIES.iter().collect(), all_oracles);
    }
}
