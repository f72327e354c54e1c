//! Event-time bucketing: the window a record belongs to is part of its key, so a late event
//! updates its old bucket by retraction instead of needing watermark logic.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The width of an event-time bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Granularity {
    Minute,
    Hour,
    /// A calendar day in the site's time zone (23, 24 or 25 hours long around DST changes).
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Granularity> {
        match s {
            "minute" => Some(Granularity::Minute),
            "hour" => Some(Granularity::Hour),
            "day" => Some(Granularity::Day),
            _ => None,
        }
    }

    /// The longest a bucket of this granularity can be, which bounds how far back a restart
    /// must re-read to rebuild every open bucket.
    pub fn max_len_ms(self) -> Millis {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 25 * 3_600_000,
        }
    }
}

/// A half-open event-time interval `[start, end)` in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bucket {
    pub granularity: Granularity,
    pub start: Millis,
    pub end: Millis,
}

/// Returns the bucket of `granularity` containing `ts`. Minutes and hours are aligned in UTC
/// (every zone in use is offset by whole quarter hours, so hours are almost always local hours
/// too); days follow the calendar of `tz`.
///
/// ```
/// use clickflow_operators::time::{bucket_of, Granularity};
/// let tz: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
/// // 2026-11-23T23:30:00Z is already the 24th in Paris (UTC+1).
/// let b = bucket_of(1_795_476_600_000, Granularity::Day, tz);
/// assert_eq!(b.start, 1_795_474_800_000); // 2026-11-23T23:00:00Z = Paris midnight
/// assert_eq!(b.end - b.start, 24 * 3_600_000);
/// ```
pub fn bucket_of(ts: Millis, granularity: Granularity, tz: Tz) -> Bucket {
    match granularity {
        Granularity::Minute => fixed(ts, 60_000, granularity),
        Granularity::Hour => fixed(ts, 3_600_000, granularity),
        Granularity::Day => day_of(ts, tz),
    }
}

/// Since 1980 every zone's offset is a whole number of quarter hours (earlier, local mean
/// times such as Monrovia's −0:44:30 were not), so all instants of one UTC quarter hour share
/// their local day: the day is computed once per (zone, quarter hour).
const QUARTER_HOUR_OFFSETS_SINCE: Millis = 315_532_800_000;
const QUARTER_MS: Millis = 900_000;
const DAY_CACHE_SLOTS: usize = 4096;

thread_local! {
    /// Direct-mapped: (zone, quarter hour) → day bucket. Most events are recent, so a few
    /// thousand slots hold every day in use; a miss only costs the computation.
    static DAY_CACHE: std::cell::RefCell<Vec<(u16, Millis, Bucket)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn day_of(ts: Millis, tz: Tz) -> Bucket {
    if ts < QUARTER_HOUR_OFFSETS_SINCE {
        return computed_day(ts, tz);
    }
    let quarter = ts.div_euclid(QUARTER_MS);
    let zone = tz as u16;
    let slot = (quarter as usize)
        .wrapping_mul(31)
        .wrapping_add(zone as usize)
        % DAY_CACHE_SLOTS;
    DAY_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.is_empty() {
            let empty = Bucket {
                granularity: Granularity::Day,
                start: 0,
                end: 0,
            };
            cache.resize(DAY_CACHE_SLOTS, (u16::MAX, Millis::MIN, empty));
        }
        let (z, q, bucket) = cache[slot];
        if z == zone && q == quarter {
            return bucket;
        }
        let bucket = computed_day(ts, tz);
        cache[slot] = (zone, quarter, bucket);
        bucket
    })
}

fn computed_day(ts: Millis, tz: Tz) -> Bucket {
    let start = local_midnight_at_or_before(ts, tz);
    let end = local_midnight_at_or_before(start + 26 * 3_600_000, tz);
    Bucket {
        granularity: Granularity::Day,
        start,
        end,
    }
}

fn fixed(ts: Millis, width: Millis, granularity: Granularity) -> Bucket {
    let start = ts.div_euclid(width) * width;
    Bucket {
        granularity,
        start,
        end: start + width,
    }
}

fn local_midnight_at_or_before(ts: Millis, tz: Tz) -> Millis {
    let utc = DateTime::<Utc>::from_timestamp_millis(ts).unwrap_or_default();
    let date = utc.with_timezone(&tz).date_naive();
    // Some zones skip midnight on DST days; the day then starts at the first instant that exists.
    let mut t = NaiveTime::MIN;
    for _ in 0..4 {
        if let Some(dt) = tz.from_local_datetime(&date.and_time(t)).earliest() {
            return dt.timestamp_millis();
        }
        t += Duration::minutes(30);
    }
    utc.timestamp_millis() - utc.timestamp_millis().rem_euclid(86_400_000)
}

/// Rounds a log timestamp up to the end of its ingest epoch: the epoch is the timely time, so
/// everything appended during `(t - epoch, t]` completes together.
///
/// ```
/// use clickflow_operators::time::epoch_of;
/// assert_eq!(epoch_of(1_001, 1_000), 2_000);
/// assert_eq!(epoch_of(2_000, 1_000), 2_000);
/// ```
pub fn epoch_of(ts: Millis, epoch_ms: u64) -> u64 {
    let ts = ts.max(0) as u64;
    let epoch_ms = epoch_ms.max(1);
    ts.div_ceil(epoch_ms) * epoch_ms
}

/// The ingest time at which a bucket is sealed: no accepted event can change it afterwards.
pub fn seal_time(bucket_end: Millis, lateness_ms: u64) -> u64 {
    (bucket_end.max(0) as u64).saturating_add(lateness_ms)
}

/// Parses an IANA zone name, falling back to UTC for names the tz database does not know.
pub fn parse_tz(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dst_days_have_their_real_length() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 2026-03-29 is 23 hours long in Berlin, 2026-10-25 is 25 hours long.
        let spring = tz
            .with_ymd_and_hms(2026, 3, 29, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        let autumn = tz
            .with_ymd_and_hms(2026, 10, 25, 12, 0, 0)
            .unwrap()
            .timestamp_millis();
        let b = bucket_of(spring, Granularity::Day, tz);
        assert_eq!(b.end - b.start, 23 * 3_600_000);
        let b = bucket_of(autumn, Granularity::Day, tz);
        assert_eq!(b.end - b.start, 25 * 3_600_000);
    }

    #[test]
    fn cached_days_equal_computed_days() {
        for name in [
            "Asia/Kolkata",
            "Europe/Berlin",
            "America/St_Johns",
            "Asia/Kathmandu",
        ] {
            let tz: Tz = name.parse().unwrap();
            // Every 7 minutes over ten days across a DST change, twice: computed, then cached.
            for _ in 0..2 {
                for i in 0..(10 * 24 * 60 / 7) {
                    let ts = 1_774_396_800_000 + i * 7 * 60_000;
                    let start = local_midnight_at_or_before(ts, tz);
                    let end = local_midnight_at_or_before(start + 26 * 3_600_000, tz);
                    let b = bucket_of(ts, Granularity::Day, tz);
                    assert_eq!((b.start, b.end), (start, end), "{name} {ts}");
                }
            }
        }
    }

    #[test]
    fn buckets_contain_their_timestamp() {
        let tz: Tz = "America/Los_Angeles".parse().unwrap();
        for ts in [
            0i64,
            1_795_476_600_123,
            1_774_746_000_000,
            1_761_386_400_000,
        ] {
            for g in Granularity::ALL {
                let b = bucket_of(ts, g, tz);
                assert!(b.start <= ts && ts < b.end, "{g:?} {ts} {b:?}");
            }
        }
    }
}
