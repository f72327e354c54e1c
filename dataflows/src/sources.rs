//! `sources`: per source, referrer, channel and each UTM field: visitors, visits and
//! bounces of the visits they brought (attributed by the visit's first pageview).

use differential_dataflow::VecCollection;

use crate::aggregate::visit_breakdown;
use crate::family::{Family, Inputs};
use crate::metric::Row;
use crate::settings::Settings;
use crate::symbol::Sym;
use crate::visits::Visit;

pub const FAMILY: Family = Family {
    name: "sources",
    metrics: &["visitors", "visitors_hll", "visits", "bounces"],
    distinct: &["visitors"],
    derived: &[],
    dimensions: &[
        "source",
        "referrer",
        "channel",
        "utm_source",
        "utm_medium",
        "utm_campaign",
        "utm_term",
        "utm_content",
    ],
    build,
};

fn dimensions(v: &Visit) -> Vec<(&'static str, Sym)> {
    let s = &v.source;
    [
        ("source", s.source),
        ("referrer", s.referrer),
        ("channel", s.channel),
        ("utm_source", s.utm(0)),
        ("utm_medium", s.utm(1)),
        ("utm_campaign", s.utm(2)),
        ("utm_term", s.utm(3)),
        ("utm_content", s.utm(4)),
    ]
    .into_iter()
    // Direct visits have no referrer and most have no campaign: no empty rows for them.
    .filter(|(_, value)| *value != Sym::EMPTY)
    .collect()
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    visit_breakdown(inputs.visits(), FAMILY.name, dimensions, true)
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::testing::OracleVisit as Visit;
    use crate::testing::{oracle_property, oracle_visit_breakdown, Oracle};

    /// The dimensions as the product defines them, spelled out again here.
    fn expected_dimensions(v: &Visit) -> Vec<(&'static str, String)> {
        [
            ("source", v.source.source.clone()),
            ("referrer", v.source.referrer.clone()),
            ("channel", v.source.channel.as_str().to_string()),
            ("utm_source", v.source.utm_source.clone()),
            ("utm_medium", v.source.utm_medium.clone()),
            ("utm_campaign", v.source.utm_campaign.clone()),
            ("utm_term", v.source.utm_term.clone()),
            ("utm_content", v.source.utm_content.clone()),
        ]
        .into_iter()
        .filter(|(_, x)| !x.is_empty())
        .collect()
    }

    pub(crate) fn oracle(o: &Oracle) -> std::collections::BTreeMap<crate::MetricKey, i64> {
        oracle_visit_breakdown(o, "sources", expected_dimensions, true)
    }

    oracle_property!(sources_equal_oracle_at_every_epoch, &super::FAMILY, oracle);
}
