//! `geo`: per country (ISO 3166-1 alpha-2, or `unknown`): visitors and visits.

use differential_dataflow::VecCollection;

use crate::aggregate::visit_breakdown;
use crate::family::{Family, Inputs};
use crate::metric::Row;
use crate::settings::Settings;
use crate::symbol::Sym;
use crate::visits::Visit;

pub const FAMILY: Family = Family {
    name: "geo",
    metrics: &["visitors", "visitors_hll", "visits"],
    distinct: &["visitors"],
    derived: &[],
    dimensions: &["country"],
    build,
};

fn dimensions(v: &Visit) -> Vec<(&'static str, Sym)> {
    vec![("country", v.country)]
}

fn build<'s>(inputs: &Inputs<'s>, _settings: &Settings) -> VecCollection<'s, u64, Row> {
    visit_breakdown(inputs.visits(), FAMILY.name, dimensions, false)
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::testing::OracleVisit as Visit;
    use crate::testing::{oracle_property, oracle_visit_breakdown, Oracle};

    /// The dimensions as the product defines them, spelled out again here.
    fn expected_dimensions(v: &Visit) -> Vec<(&'static str, String)> {
        vec![("country", v.country.clone())]
    }

    pub(crate) fn oracle(o: &Oracle) -> std::collections::BTreeMap<crate::MetricKey, i64> {
        oracle_visit_breakdown(o, "geo", expected_dimensions, false)
    }

    oracle_property!(geo_equal_oracle_at_every_epoch, &super::FAMILY, oracle);
}
