//! `tech`: per device type, browser, browser version, operating system and its version:
//! visitors and visits (from the visit's first pageview).

use differential_dataflow::VecCollection;

use crate::aggregate::visit_breakdown;
use crate::family::{Family, Inputs};
use crate::metric::Row;
use crate::settings::Settings;
use crate::symbol::Sym;
use crate::visits::Visit;

pub const FAMILY: Family = Family {
    name: "tech",
    metrics: &["visitors", "visitors_hll", "visits"],
    distinct: &["visitors"],
    derived: &[],
    dimensions: &["device", "browser", "browser_version", "os", "os_version"],
    build,
};

fn dimensions(v: &Visit) -> Vec<(&'static str, Sym)> {
    let c = &v.client;
    vec![
        ("device", c.device),
        ("browser", c.browser),
        // Versions are only meaningful next to their name: "Chrome 120".
        ("browser_version", c.browser_version),
        ("os", c.os),
        ("os_version", c.os_version),
    ]
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
        vec![
            ("device", v.client.device.clone()),
            ("browser", v.client.browser.clone()),
            (
                "browser_version",
                format!("{} {}", v.client.browser, v.client.browser_version),
            ),
            ("os", v.client.os.clone()),
            (
                "os_version",
                format!("{} {}", v.client.os, v.client.os_version),
            ),
        ]
    }

    pub(crate) fn oracle(o: &Oracle) -> std::collections::BTreeMap<crate::MetricKey, i64> {
        oracle_visit_breakdown(o, "tech", expected_dimensions, false)
    }

    oracle_property!(tech_equal_oracle_at_every_epoch, &super::FAMILY, oracle);
}
