//! Collector-side enrichment: what needs the raw user agent or client IP, which are dropped
//! right after. Parsing choices: `woothee` (compact embedded dataset, no regex files to ship,
//! fast enough for the ingest path) for device/browser/OS, `isbot` (the isbot pattern list,
//! broader than woothee's crawler table) for bots, `maxminddb` for an optional country
//! database in MaxMind format.

use std::net::IpAddr;
use std::path::Path;

use clickflow_dataflows::event::{Client, UNKNOWN};
use serde::Deserialize;

pub struct Enricher {
    ua: woothee::parser::Parser,
    bots: isbot::Bots,
    geo: Option<maxminddb::Reader<Vec<u8>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("opening the geo database {path}: {source}")]
pub struct GeoError {
    path: String,
    source: maxminddb::MaxMindDbError,
}

/// The two record shapes in use: GeoIP2/GeoLite2 (`country.iso_code`) and the ip-location-db
/// country databases (`country_code`).
#[derive(Deserialize)]
struct GeoRecord {
    country_code: Option<String>,
    country: Option<GeoCountry>,
}

#[derive(Deserialize)]
struct GeoCountry {
    iso_code: Option<String>,
}

impl Enricher {
    /// `geo_db`: path of a MaxMind-format database; `None` leaves every country `unknown`.
    pub fn new(geo_db: Option<&Path>) -> Result<Enricher, GeoError> {
        let geo = match geo_db {
            Some(path) => {
                Some(
                    maxminddb::Reader::open_readfile(path).map_err(|source| GeoError {
                        path: path.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Ok(Enricher {
            ua: woothee::parser::Parser::new(),
            bots: isbot::Bots::default(),
            geo,
        })
    }

    pub fn has_geo(&self) -> bool {
        self.geo.is_some()
    }

    /// Crawlers, monitors, headless browsers and HTTP libraries; an empty user agent too,
    /// since no browser sends none.
    pub fn is_bot(&self, user_agent: &str) -> bool {
        let ua = user_agent.trim();
        ua.is_empty()
            || self.bots.is_bot(ua)
            || self.ua.parse(ua).is_some_and(|r| r.category == "crawler")
    }

    pub fn client(&self, user_agent: &str) -> Client {
        let Some(r) = self.ua.parse(user_agent) else {
            return Client::default();
        };
        let known = |s: &str| {
            if s.is_empty() || s == "UNKNOWN" {
                UNKNOWN.to_owned()
            } else {
                s.to_owned()
            }
        };
        let tablet = r.os == "iPad"
            || (r.os == "Android" && !user_agent.contains("Mobile"))
            || user_agent.contains("Tablet");
        let device = match r.category {
            "pc" => "desktop",
            "smartphone" | "mobilephone" if tablet => "tablet",
            "smartphone" | "mobilephone" => "mobile",
            _ => UNKNOWN,
        };
        Client {
            device: device.to_owned(),
            browser: known(r.name),
            browser_version: known(major_minor(r.version)),
            os: known(r.os),
            os_version: known(major_minor(&r.os_version)),
        }
    }

    /// ISO 3166-1 alpha-2 code, or `unknown` without a database or a match.
    pub fn country(&self, ip: Option<IpAddr>) -> String {
        let (Some(reader), Some(ip)) = (&self.geo, ip) else {
            return UNKNOWN.to_owned();
        };
        let record = reader
            .lookup(ip)
            .and_then(|r| r.decode::<GeoRecord>())
            .ok()
            .flatten();
        record
            .and_then(|r| r.country_code.or(r.country.and_then(|c| c.iso_code)))
            .filter(|c| c.len() == 2)
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_else(|| UNKNOWN.to_owned())
    }
}

/// "120.0.6099.71" → "120.0": finer versions split the audience into noise.
fn major_minor(version: &str) -> &str {
    let mut dots = version.match_indices('.');
    match dots.nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Safari/537.36";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const SAFARI_IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36";
    const FIREFOX_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";

    #[test]
    fn user_agents_become_device_browser_and_os() {
        let e = Enricher::new(None).unwrap();
        let c = e.client(CHROME_WIN);
        assert_eq!(
            (
                c.device.as_str(),
                c.browser.as_str(),
                c.browser_version.as_str(),
                c.os.as_str()
            ),
            ("desktop", "Chrome", "120.0", "Windows 10")
        );
        let c = e.client(SAFARI_IPHONE);
        assert_eq!(
            (c.device.as_str(), c.browser.as_str(), c.os.as_str()),
            ("mobile", "Safari", "iPhone")
        );
        assert_eq!(c.os_version, "17.1");
        assert_eq!(e.client(SAFARI_IPAD).device, "tablet");
        assert_eq!(e.client(ANDROID_TABLET).device, "tablet");
        let c = e.client(FIREFOX_LINUX);
        assert_eq!(
            (c.device.as_str(), c.browser.as_str(), c.os.as_str()),
            ("desktop", "Firefox", "Linux")
        );
        assert_eq!(e.client("curl-ish nonsense"), Client::default());
    }

    #[test]
    fn bots_are_recognised() {
        let e = Enricher::new(None).unwrap();
        for bot in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "curl/8.4.0",
            "python-requests/2.31.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "",
        ] {
            assert!(e.is_bot(bot), "{bot:?} is a bot");
        }
        for human in [CHROME_WIN, SAFARI_IPHONE, SAFARI_IPAD, FIREFOX_LINUX] {
            assert!(!e.is_bot(human), "{human:?} is not a bot");
        }
    }

    #[test]
    fn country_is_unknown_without_a_database() {
        let e = Enricher::new(None).unwrap();
        assert_eq!(e.country("8.8.8.8".parse().ok()), "unknown");
        assert!(Enricher::new(Some(Path::new("/nonexistent.mmdb"))).is_err());
    }

    /// Runs where `scripts/install-deps.sh` fetched the CC0 country database.
    #[test]
    fn country_from_the_installed_database() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/geo/geo-whois-asn-country.mmdb");
        if !path.exists() {
            // CI runs scripts/install-deps.sh first, so there the database must be present.
            assert!(
                std::env::var_os("CI").is_none(),
                "{} missing",
                path.display()
            );
            eprintln!("skipped: {} not installed", path.display());
            return;
        }
        let e = Enricher::new(Some(&path)).unwrap();
        assert!(e.has_geo());
        // Well-known anycast resolvers registered in the US and Australia.
        assert_eq!(e.country("8.8.8.8".parse().ok()), "US");
        assert_eq!(e.country("1.1.1.1".parse().ok()), "AU");
        assert_eq!(e.country("127.0.0.1".parse().ok()), "unknown");
        assert_eq!(e.country(None), "unknown");
    }
}
