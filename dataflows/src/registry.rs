//! The list of metric families. Adding a family is one file plus one line here.

use differential_dataflow::VecCollection;

use crate::metric::Row;
use crate::pipeline::Inputs;
use crate::settings::Settings;

/// A metric family: a named group of metrics computed by one dataflow fragment.
pub struct Family {
    pub name: &'static str,
    pub metrics: &'static [&'static str],
    /// The breakdowns it materializes; `""` is the total without a breakdown. A breakdown by
    /// several dimensions is their names joined by `,`.
    pub dimensions: &'static [&'static str],
    pub build: for<'s> fn(&Inputs<'s>, &Settings) -> VecCollection<'s, u64, Row>,
}

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
}
