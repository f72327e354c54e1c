//! Interned text. Inside the dataflow every name and dimension value is a [`Sym`], a 64-bit
//! integer, so arrangements hold and compare integers instead of strings; text comes back only
//! at the end, where [`Dictionary`] renders the rows the sink writes.
//!
//! A word's symbol is a hash of its text (xxh3, with the top bit set), not a counter: every
//! worker of every process interns independently and still agrees, and a replay gets the same
//! symbols as the run it replaces. The price is the chance of two texts sharing a symbol: with
//! 63 bits, about n²/2⁶⁴ for n distinct texts (10⁻⁷ at a million pages of one site); rows
//! are per site, so only texts of the same site and dimension could merge.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// An interned word, a small integer rendered in decimal, or nothing.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Sym(u64);

const WORD_BIT: u64 = 1 << 63;

impl Sym {
    /// No part: `[a, NONE]` renders as `a`, which is not `[a, EMPTY]` (`a` + separator).
    pub const NONE: Sym = Sym(0);
    /// The empty string.
    pub const EMPTY: Sym = Sym::word("");

    /// The symbol of `text`; `const`, so fixed names cost nothing at run time.
    pub const fn word(text: &str) -> Sym {
        Sym(xxhash_rust::const_xxh3::xxh3_64(text.as_bytes()) | WORD_BIT)
    }

    /// A number that renders as itself (HyperLogLog register indexes and the like).
    pub const fn int(n: u32) -> Sym {
        Sym(n as u64 + 1)
    }

    pub fn is_none(self) -> bool {
        self == Sym::NONE
    }

    pub fn is_word(self) -> bool {
        self.0 & WORD_BIT != 0
    }

    /// One 64-bit fingerprint of `id` within this symbol (an event id within its site):
    /// what deduplication remembers, half the bytes of the pair. Ids are already uniform
    /// 64-bit hashes, so two pairs share a fingerprint with probability 2⁻⁶⁴.
    pub fn mix(self, id: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(&id.to_le_bytes(), self.0)
    }

    /// The same as [`Sym::word`], with the faster non-`const` hash for text known only at run
    /// time (both compute xxh3, so they agree; a test checks it).
    pub fn of(text: &str) -> Sym {
        Sym(xxhash_rust::xxh3::xxh3_64(text.as_bytes()) | WORD_BIT)
    }
}

/// A 64-bit fingerprint of an identifier (event ids): what deduplication and refunds compare.
pub fn fingerprint(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Interns text for one worker, remembering which words it has already announced so each
/// word travels to the dictionary once per worker.
#[derive(Default)]
pub struct Interner {
    announced: HashSet<Sym>,
    fresh: Vec<(Sym, String)>,
    /// Reused for texts built from parts, so interning them allocates nothing per event.
    scratch: String,
}

impl Interner {
    pub fn intern(&mut self, text: &str) -> Sym {
        let sym = Sym::of(text);
        if self.announced.insert(sym) {
            self.fresh.push((sym, text.to_owned()));
        }
        sym
    }

    /// The symbol of the concatenation of `parts` (`["Chrome", " ", "120"]`).
    pub fn intern_parts(&mut self, parts: &[&str]) -> Sym {
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        parts.iter().for_each(|p| text.push_str(p));
        let sym = self.intern(&text);
        self.scratch = text;
        sym
    }

    /// Words interned since the last call, for the dictionary.
    pub fn take_fresh(&mut self) -> Vec<(Sym, String)> {
        std::mem::take(&mut self.fresh)
    }
}

/// Symbol → text, where rows are turned back into text.
#[derive(Default)]
pub struct Dictionary {
    words: HashMap<Sym, Arc<str>>,
}

impl Dictionary {
    /// A dictionary that knows `words` (the fixed names of the registry, say).
    pub fn with<'a>(words: impl IntoIterator<Item = &'a str>) -> Dictionary {
        let mut d = Dictionary::default();
        for w in words {
            d.insert(Sym::of(w), w);
        }
        d.insert(Sym::EMPTY, "");
        d
    }

    pub fn insert(&mut self, sym: Sym, text: &str) {
        self.words.entry(sym).or_insert_with(|| Arc::from(text));
    }

    /// Appends the text of `sym` to `out`; `false` when the word is unknown (a bug: every
    /// word is announced before any row that uses it can complete).
    pub fn render_into(&self, sym: Sym, out: &mut String) -> bool {
        if sym.is_none() {
            return true;
        }
        if !sym.is_word() {
            out.push_str(&(sym.0 - 1).to_string());
            return true;
        }
        match self.words.get(&sym) {
            Some(text) => {
                out.push_str(text);
                true
            }
            None => {
                out.push_str(&format!("\u{fffd}{:016x}", sym.0));
                false
            }
        }
    }

    /// The present parts of `parts`, joined by `separator`.
    pub fn join(&self, parts: &[Sym], separator: char) -> (String, bool) {
        let mut out = String::new();
        let mut known = true;
        for (i, p) in parts.iter().filter(|p| !p.is_none()).enumerate() {
            if i > 0 {
                out.push(separator);
            }
            known &= self.render_into(*p, &mut out);
        }
        (out, known)
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// A time zone as a 2-byte index into the tz database, so records carry no zone names.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Zone(u16);

static ZONE_INDEX: LazyLock<HashMap<&'static str, u16>> = LazyLock::new(|| {
    chrono_tz::TZ_VARIANTS
        .iter()
        .enumerate()
        .map(|(i, tz)| (tz.name(), i as u16))
        .collect()
});

impl Zone {
    /// The zone named `name`; UTC for names the tz database does not know (as
    /// [`clickflow_operators::time::parse_tz`]).
    pub fn of(name: &str) -> Zone {
        let utc = || ZONE_INDEX.get("UTC").copied().unwrap_or(0);
        Zone(ZONE_INDEX.get(name).copied().unwrap_or_else(utc))
    }

    pub fn tz(self) -> Tz {
        chrono_tz::TZ_VARIANTS
            .get(self.0 as usize)
            .copied()
            .unwrap_or(Tz::UTC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn const_and_runtime_hashes_agree() {
        for w in ["", "pageviews", "/blog/a", "Organic Search", "ü"] {
            assert_eq!(Sym::word(w), Sym::of(w), "{w:?}");
            assert!(Sym::of(w).is_word());
        }
        assert!(!Sym::int(4095).is_word() && !Sym::int(0).is_none());
    }

    #[test]
    fn rows_render_back_to_their_text() {
        let mut interner = Interner::default();
        let (a, b) = (interner.intern("signup"), interner.intern("plan"));
        assert_eq!(interner.intern("signup"), a);
        assert_eq!(interner.intern_parts(&["sign", "up"]), a);
        let fresh = interner.take_fresh();
        assert_eq!(fresh.len(), 2, "each word is announced once");
        let mut dict = Dictionary::with(["goal"]);
        for (sym, text) in &fresh {
            dict.insert(*sym, text);
        }
        let sep = '\u{1f}';
        assert_eq!(
            dict.join(&[a, b, Sym::int(7)], sep),
            ("signup\u{1f}plan\u{1f}7".into(), true)
        );
        assert_eq!(dict.join(&[a, Sym::NONE, Sym::NONE], sep).0, "signup");
        assert_eq!(dict.join(&[a, Sym::EMPTY], sep).0, "signup\u{1f}");
        assert_eq!(dict.join(&[Sym::word("goal")], sep).0, "goal");
        assert!(!dict.join(&[Sym::of("never announced")], sep).1);
    }

    #[test]
    fn zones_round_trip() {
        for name in ["UTC", "Europe/Paris", "Asia/Kolkata", "America/New_York"] {
            assert_eq!(Zone::of(name).tz().name(), name);
        }
        assert_eq!(Zone::of("Mars/Olympus").tz(), Tz::UTC);
    }
}
