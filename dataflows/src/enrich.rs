//! The first dataflow stage: turns a logged event into a [`TextHit`], which the source interns
//! into the [`crate::hit::Hit`] every family reads. Page, referrer and campaign parsing live here rather than at the collector
//! because they are pure functions of logged fields: after a fix, a replay re-derives them for
//! history. (User agent and IP are parsed at the collector, which does not keep them.)

use serde::{Deserialize, Serialize};
use url::Url;

use crate::event::{Client, Event, Revenue, PAGEVIEW, REFUND};

/// An event enriched, in text: what [`crate::hit::Hit`] interns, and what oracles compute with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TextHit {
    pub site: String,
    pub ts: i64,
    pub visitor: u64,
    pub event_id: String,
    pub name: String,
    pub tz: String,
    pub hostname: String,
    /// Path without query string or fragment; `/` at least.
    pub pathname: String,
    pub source: Source,
    pub client: Client,
    pub country: String,
    pub props: Vec<(String, String)>,
    pub revenue: Option<Revenue>,
    pub refund_of: Option<String>,
}

impl TextHit {
    pub fn is_pageview(&self) -> bool {
        self.name == PAGEVIEW
    }

    pub fn is_refund(&self) -> bool {
        self.name == REFUND
    }
}

/// Where a visit came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Source {
    /// A known name (`Google`, `Twitter`…), the referring domain, the `utm_source`, or
    /// `Direct / None`.
    pub source: String,
    /// Referring host and path (no query), empty for direct traffic.
    pub referrer: String,
    pub channel: Channel,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Channel {
    #[default]
    Direct,
    OrganicSearch,
    OrganicSocial,
    Email,
    Paid,
    Referral,
}

impl Channel {
    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Direct => "Direct",
            Channel::OrganicSearch => "Organic Search",
            Channel::OrganicSocial => "Organic Social",
            Channel::Email => "Email",
            Channel::Paid => "Paid",
            Channel::Referral => "Referral",
        }
    }
}

pub const DIRECT: &str = "Direct / None";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Search,
    Social,
    Email,
    Other,
}

/// Well-known referrers: (host suffix, display name, kind). Matched on the host with `www.`
/// removed; a suffix matches itself and its subdomains.
const KNOWN: &[(&str, &str, Kind)] = &[
    ("mail.google.com", "Gmail", Kind::Email),
    ("outlook.live.com", "Outlook.com", Kind::Email),
    ("mail.yahoo.com", "Yahoo! Mail", Kind::Email),
    ("google.com", "Google", Kind::Search),
    ("bing.com", "Bing", Kind::Search),
    ("duckduckgo.com", "DuckDuckGo", Kind::Search),
    ("search.yahoo.com", "Yahoo!", Kind::Search),
    ("yahoo.com", "Yahoo!", Kind::Search),
    ("yandex.ru", "Yandex", Kind::Search),
    ("yandex.com", "Yandex", Kind::Search),
    ("baidu.com", "Baidu", Kind::Search),
    ("ecosia.org", "Ecosia", Kind::Search),
    ("search.brave.com", "Brave", Kind::Search),
    ("qwant.com", "Qwant", Kind::Search),
    ("naver.com", "Naver", Kind::Search),
    ("t.co", "Twitter", Kind::Social),
    ("twitter.com", "Twitter", Kind::Social),
    ("x.com", "Twitter", Kind::Social),
    ("facebook.com", "Facebook", Kind::Social),
    ("fb.com", "Facebook", Kind::Social),
    ("instagram.com", "Instagram", Kind::Social),
    ("linkedin.com", "LinkedIn", Kind::Social),
    ("lnkd.in", "LinkedIn", Kind::Social),
    ("reddit.com", "Reddit", Kind::Social),
    ("youtube.com", "YouTube", Kind::Social),
    ("pinterest.com", "Pinterest", Kind::Social),
    ("tiktok.com", "TikTok", Kind::Social),
    ("news.ycombinator.com", "Hacker News", Kind::Social),
    ("mastodon.social", "Mastodon", Kind::Social),
    ("bsky.app", "Bluesky", Kind::Social),
    ("threads.net", "Threads", Kind::Social),
    ("github.com", "GitHub", Kind::Other),
];

fn known_host(host: &str) -> Option<(&'static str, Kind)> {
    let host = host.strip_prefix("www.").unwrap_or(host);
    KNOWN.iter().find_map(|(suffix, name, kind)| {
        let hit = host == *suffix
            || host
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.'));
        // Google and Yandex run country domains (google.de, google.co.uk).
        let country_domain = matches!(*name, "Google" | "Yandex")
            && host
                .split('.')
                .any(|label| label == suffix.trim_end_matches(".com").trim_end_matches(".ru"))
            && !host.starts_with("mail.");
        (hit || country_domain).then_some((*name, *kind))
    })
}

fn known_source_name(utm_source: &str) -> Option<(&'static str, Kind)> {
    let lower = utm_source.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|(suffix, name, _)| {
            name.eq_ignore_ascii_case(&lower)
                || suffix.split('.').next().is_some_and(|s| s == lower)
        })
        .map(|(_, name, kind)| (*name, *kind))
}

const PAID_MEDIUMS: &[&str] = &[
    "cpc",
    "ppc",
    "paid",
    "paidsearch",
    "paid_search",
    "paid-search",
    "paidsocial",
    "paid_social",
    "paid-social",
    "cpm",
    "cpv",
    "cpa",
    "display",
    "banner",
    "retargeting",
];
const EMAIL_MEDIUMS: &[&str] = &["email", "e-mail", "e_mail", "newsletter", "mail"];
const SOCIAL_MEDIUMS: &[&str] = &["social", "social-network", "social_media", "sm"];

/// Classifies where a page view came from. UTM parameters in the page URL win over the
/// referrer; a referrer on the page's own host is internal navigation (direct).
pub fn source_of(page: Option<&Url>, referrer: Option<&str>) -> Source {
    let mut out = Source::default();
    let page_host = page.and_then(|u| u.host_str()).map(strip_www);
    if let Some(u) = page {
        for (k, v) in u.query_pairs() {
            let slot = match k.as_ref() {
                "utm_source" => &mut out.utm_source,
                "utm_medium" => &mut out.utm_medium,
                "utm_campaign" => &mut out.utm_campaign,
                "utm_term" => &mut out.utm_term,
                "utm_content" => &mut out.utm_content,
                _ => continue,
            };
            if slot.is_empty() {
                *slot = v.trim().chars().take(200).collect();
            }
        }
    }
    let referrer = referrer
        .and_then(|r| Url::parse(r).ok())
        .filter(|r| r.host_str().is_some())
        .filter(|r| r.host_str().map(strip_www) != page_host);
    let mut kind = Kind::Other;
    if let Some(r) = &referrer {
        let host = r.host_str().unwrap_or_default();
        out.referrer = format!("{}{}", strip_www(host), r.path().trim_end_matches('/'));
        match known_host(host) {
            Some((name, k)) => {
                out.source = name.into();
                kind = k;
            }
            None => out.source = strip_www(host).to_owned(),
        }
    }
    if !out.utm_source.is_empty() {
        match known_source_name(&out.utm_source) {
            Some((name, k)) => {
                out.source = name.into();
                kind = k;
            }
            None => out.source = out.utm_source.clone(),
        }
    }
    let medium = out.utm_medium.to_ascii_lowercase();
    out.channel = if PAID_MEDIUMS.contains(&medium.as_str()) {
        Channel::Paid
    } else if EMAIL_MEDIUMS.contains(&medium.as_str()) || kind == Kind::Email {
        Channel::Email
    } else if SOCIAL_MEDIUMS.contains(&medium.as_str()) || kind == Kind::Social {
        Channel::OrganicSocial
    } else if kind == Kind::Search {
        Channel::OrganicSearch
    } else if out.source.is_empty() {
        Channel::Direct
    } else {
        Channel::Referral
    };
    if out.source.is_empty() {
        out.source = DIRECT.into();
    }
    out
}

fn strip_www(host: &str) -> &str {
    host.strip_prefix("www.").unwrap_or(host)
}

/// Host (without `www.`) and path of a page URL; query string and fragment are dropped,
/// except a hash route's (`#/cart`, `#!/cart`): single-page apps that route by fragment have
/// their pages there, so `/#/cart` is a page of its own.
pub fn page_of(url: Option<&Url>) -> (String, String) {
    match url {
        Some(u) => {
            let trimmed = |p: &str| {
                if p.len() > 1 {
                    p.trim_end_matches('/').to_owned()
                } else {
                    "/".to_owned()
                }
            };
            let mut path = trimmed(u.path());
            let route = u.fragment().and_then(|f| {
                let route = f.strip_prefix('!').unwrap_or(f);
                route
                    .starts_with('/')
                    .then(|| route.split('?').next().unwrap_or(route))
            });
            if let Some(route) = route {
                path = format!("{path}#{}", trimmed(route));
            }
            (strip_www(u.host_str().unwrap_or_default()).to_owned(), path)
        }
        None => (String::new(), String::new()),
    }
}

impl From<Event> for TextHit {
    fn from(e: Event) -> TextHit {
        let url = Url::parse(&e.url).ok();
        let (hostname, pathname) = page_of(url.as_ref());
        let source = source_of(url.as_ref(), e.referrer.as_deref());
        TextHit {
            site: e.site,
            ts: e.ts,
            visitor: e.visitor,
            event_id: e.event_id,
            name: e.name,
            tz: e.tz,
            hostname,
            pathname,
            source,
            client: e.client,
            country: e.country,
            props: e.props,
            revenue: e.revenue,
            refund_of: e.refund_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(page: &str, referrer: Option<&str>) -> Source {
        source_of(Url::parse(page).ok().as_ref(), referrer)
    }

    #[test]
    fn referrers_become_sources_and_channels() {
        let s = src(
            "https://shop.example/",
            Some("https://www.google.de/search?q=x"),
        );
        assert_eq!(
            (s.source.as_str(), s.channel),
            ("Google", Channel::OrganicSearch)
        );
        assert_eq!(s.referrer, "google.de/search");
        let s = src("https://shop.example/", Some("https://t.co/abc"));
        assert_eq!(
            (s.source.as_str(), s.channel),
            ("Twitter", Channel::OrganicSocial)
        );
        let s = src("https://shop.example/", Some("https://mail.google.com/"));
        assert_eq!((s.source.as_str(), s.channel), ("Gmail", Channel::Email));
        let s = src(
            "https://shop.example/",
            Some("https://blog.other.org/post?id=1"),
        );
        assert_eq!(s.source, "blog.other.org");
        assert_eq!(s.referrer, "blog.other.org/post");
        assert_eq!(s.channel, Channel::Referral);
        let s = src("https://shop.example/a", None);
        assert_eq!((s.source.as_str(), s.channel), (DIRECT, Channel::Direct));
        // internal navigation is not a referral
        let s = src("https://shop.example/a", Some("https://www.shop.example/b"));
        assert_eq!((s.source.as_str(), s.channel), (DIRECT, Channel::Direct));
        assert_eq!(s.referrer, "");
        // mail.google.com is not the Google search engine
        let s = src("https://shop.example/", Some("https://notgoogle.com/"));
        assert_eq!(s.source, "notgoogle.com");
    }

    #[test]
    fn utm_parameters_win_over_the_referrer() {
        let s = src(
            "https://shop.example/p?utm_source=newsletter42&utm_medium=email&utm_campaign=bf&utm_term=shoes&utm_content=top",
            Some("https://www.google.com/"),
        );
        assert_eq!(s.source, "newsletter42");
        assert_eq!(s.channel, Channel::Email);
        assert_eq!(
            (
                s.utm_campaign.as_str(),
                s.utm_term.as_str(),
                s.utm_content.as_str()
            ),
            ("bf", "shoes", "top")
        );
        let s = src(
            "https://shop.example/?utm_source=google&utm_medium=cpc",
            None,
        );
        assert_eq!((s.source.as_str(), s.channel), ("Google", Channel::Paid));
        let s = src("https://shop.example/?utm_source=facebook", None);
        assert_eq!(
            (s.source.as_str(), s.channel),
            ("Facebook", Channel::OrganicSocial)
        );
    }

    #[test]
    fn pages_drop_query_and_fragment() {
        let u = Url::parse("https://www.Shop.example/Cart/?utm_source=x#top").ok();
        assert_eq!(
            page_of(u.as_ref()),
            ("shop.example".to_owned(), "/Cart".to_owned())
        );
        let u = Url::parse("https://shop.example").ok();
        assert_eq!(page_of(u.as_ref()).1, "/");
    }

    #[test]
    fn hash_routes_are_pages() {
        let page = |u: &str| page_of(Url::parse(u).ok().as_ref()).1;
        assert_eq!(page("https://app.example/#/cart/?step=2"), "/#/cart");
        assert_eq!(page("https://app.example/shop#!/cart"), "/shop#/cart");
        assert_eq!(page("https://app.example/#/"), "/#/");
        // An anchor is a place on the page, not a page.
        assert_eq!(page("https://app.example/docs#install"), "/docs");
    }
}
