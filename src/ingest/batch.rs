//! A request's accepted records, grouped into log messages: one per site and up to
//! [`MAX_RECORDS_PER_MESSAGE`] records, because the log and a broker pay per message, not per
//! byte. A message is acknowledged whole, so a site's records of one request are accepted or
//! refused together.

use clickflow_dataflows::event::{Record, MAX_RECORDS_PER_MESSAGE};
use std::collections::HashMap;

use super::refusal::{unavailable, Accepted, Refusal};
use crate::log::{Append, Log};

/// Records of one request, by site in order of first appearance, each with the slot of its
/// result.
#[derive(Default)]
pub struct Batch {
    by_site: Vec<(String, Vec<usize>, Vec<Record>)>,
    site_at: HashMap<String, usize>,
}

impl Batch {
    /// Files `record`, whose result is `results[slot]`.
    pub fn add(&mut self, slot: usize, record: Record) {
        let site = match &record {
            Record::Event(e) => &e.site,
            Record::Bot(b) => &b.site,
            Record::Erase(x) => &x.site,
        };
        let at = match self.site_at.get(site) {
            Some(at) => *at,
            None => {
                self.by_site.push((site.to_owned(), Vec::new(), Vec::new()));
                self.site_at.insert(site.to_owned(), self.by_site.len() - 1);
                self.by_site.len() - 1
            }
        };
        self.by_site[at].1.push(slot);
        self.by_site[at].2.push(record);
    }

    /// Appends every message, stamped `now`; a record whose message the log refused turns
    /// its result into a 503 (the client retries), one that cannot be encoded into a 400.
    pub async fn append(self, log: &dyn Log, now: i64, results: &mut [Result<Accepted, Refusal>]) {
        let mut appends = Vec::new();
        let mut appended_slots: Vec<&[usize]> = Vec::new();
        for (site, slots, records) in &self.by_site {
            for (slots, records) in slots
                .chunks(MAX_RECORDS_PER_MESSAGE)
                .zip(records.chunks(MAX_RECORDS_PER_MESSAGE))
            {
                match Record::encode_all(records) {
                    Ok(value) => {
                        appends.push(Append {
                            key: site.clone(),
                            value,
                            timestamp: now,
                        });
                        appended_slots.push(slots);
                    }
                    Err(e) => {
                        for slot in slots {
                            results[*slot] = Err(Refusal::bad("event", e.to_string()));
                        }
                    }
                }
            }
        }
        if appends.is_empty() {
            return;
        }
        let acks = log.append(appends).await;
        for (slots, ack) in appended_slots.into_iter().zip(acks) {
            if let Err(e) = ack {
                let refusal = unavailable("log append", &e);
                for slot in slots {
                    results[*slot] = Err(refusal.clone());
                }
            }
        }
    }
}
