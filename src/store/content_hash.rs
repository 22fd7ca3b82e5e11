//! `sessions.content_hash` (migration `20261201000008_content_hash.sql`): what a session's rows were derived from,
//! so that a re-read of an unchanged session (a reconcile, the incremental lookback, enrichment) is recognised by
//! one index probe in the merge instead of a JSON parse and comparison, and writes nothing.
//!
//! It must change whenever the rows the loader would write for an item change: so it covers the item's JSON as
//! the API returned it *and* how this release turns an item into rows (the catalogue's tables and columns, and
//! [`ROWS_VERSION`]). A release that stores more, or derives a column differently, so rewrites every session the
//! next time it reads it. SHA-256 because the value is stored and compared across releases and machines (a
//! process-seeded hash would not do), and the 64 bits kept make an accidental match of a changed session
//! negligible (2⁻⁶⁴ per change).

use std::sync::LazyLock;

use sha2::{Digest as _, Sha256};

use super::catalogue::Table;

/// Bump when an item's rows are derived differently without a catalogue change (a parsing fix, a new rule), so
/// that the next read rewrites every session.
const ROWS_VERSION: u32 = 1;

/// The hasher primed with what, besides the JSON, decides an item's rows.
static PRIMED: LazyLock<Sha256> = LazyLock::new(|| {
    let mut hasher = Sha256::new();
    hasher.update(ROWS_VERSION.to_be_bytes());
    for table in Table::ALL {
        let def = table.def();
        hasher.update(def.name.as_bytes());
        for column in def.columns {
            hasher.update([0]);
            hasher.update(column.name.as_bytes());
            hasher.update([1]);
            hasher.update(column.sql_type.as_bytes());
        }
        hasher.update([2]);
    }
    hasher
});

/// The content hash of a session whose item is `raw` (its JSON text, as stored in `sessions.raw`).
pub fn content_hash(raw: &str) -> i64 {
    let digest = PRIMED.clone().chain_update(raw.as_bytes()).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_json_has_the_same_hash_and_any_change_another() {
        let a = r#"{"session_id":"s1","acus_consumed":1.5}"#;
        assert_eq!(content_hash(a), content_hash(a));
        assert_ne!(content_hash(a), content_hash(r#"{"session_id":"s1","acus_consumed":1.6}"#));
        // Text, not meaning: a reformatted item is rewritten once (the merge then records its new hash).
        assert_ne!(content_hash(a), content_hash(r#"{"session_id": "s1", "acus_consumed": 1.5}"#));
    }

    #[test]
    fn the_hash_is_stable_across_processes_and_releases_until_the_rows_change() {
        // Stored in the warehouse and compared by later processes: a change of this value rewrites every session
        // on its next read. Update it deliberately (with ROWS_VERSION or the catalogue), never by accident.
        assert_eq!(content_hash(r#"{"session_id":"s1"}"#), PINNED);
    }

    const PINNED: i64 = 2_315_129_837_027_763_326;
}
