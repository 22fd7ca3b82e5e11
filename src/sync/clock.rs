//! How far a new watermark may move: the API server's clock is trusted for the watermark's value (DESIGN.md:
//! "server time, not ours"), but not blindly. One API node with a clock a day ahead would otherwise set a
//! watermark a day ahead, and every incremental run would then skip a day of updates.
//!
//! The bound: a new watermark may not run further ahead of the previous one than the time that has really
//! elapsed between the two observations, plus `sync.clock_tolerance`. Elapsed time is measured on the database's
//! clock (shared by every replica, unlike their local clocks; the offset between the database's and the API's
//! clocks does not matter, only its rate), so a server clock that is consistently a year ahead or behind works
//! as before. A watermark may also move *back* when the server's clock is now behind it: that costs a re-read,
//! never a row.

pub use crate::store::WatermarkUpdate;

/// The watermark a walk is about to replace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Previous {
    pub watermark: i64,
    /// Database time (Unix seconds) when the server time behind it was observed; `None` for a watermark set before
    /// this was recorded.
    pub observed_at: Option<f64>,
}

/// Where the new watermark's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The API server's clock (the HTTP `Date` of a response, minus settle).
    ServerClock,
    /// No `Date` header: the largest `updated_at` seen.
    LargestUpdatedAt,
}

/// Decides the new watermark from `candidate`, observed at database time `observed_at`.
pub fn decide(
    candidate: i64,
    basis: Basis,
    previous: Option<Previous>,
    observed_at: f64,
    tolerance: i64,
) -> WatermarkUpdate {
    let take = |value: i64, anomaly: Option<String>| WatermarkUpdate { value, observed_at, anomaly };
    let source = match basis {
        Basis::ServerClock => "the API server's clock",
        Basis::LargestUpdatedAt => "the largest updated_at seen (no Date header)",
    };
    let Some(previous) = previous else {
        // Nothing to measure elapsed time against. Without a server clock there is no other anchor than the
        // database's: an item claiming to be updated in the future must not carry the watermark there.
        let limit = observed_at as i64 + tolerance;
        if basis == Basis::LargestUpdatedAt && candidate > limit {
            return take(
                limit,
                Some(format!(
                    "{source} says {candidate}, {}s ahead of the database's clock; the first watermark is bounded to {limit}",
                    candidate - observed_at as i64
                )),
            );
        }
        return take(candidate, None);
    };
    let elapsed = previous.observed_at.map(|at| (observed_at - at).max(0.0) as i64);
    if let Some(elapsed) = elapsed {
        let justified = previous.watermark + elapsed;
        if candidate > justified + tolerance {
            return take(
                justified,
                Some(format!(
                    "{source} says {candidate}, {}s further than the {elapsed}s elapsed since the last watermark \
                     ({}) allow; the watermark is bounded to {justified}",
                    candidate - justified,
                    previous.watermark
                )),
            );
        }
    }
    if candidate < previous.watermark - tolerance {
        return take(
            candidate,
            Some(format!(
                "{source} says {candidate}, {}s behind the watermark ({}); the watermark moves back to it, so the next \
                 run re-reads rather than skips",
                previous.watermark - candidate,
                previous.watermark
            )),
        );
    }
    take(candidate.max(previous.watermark), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 60;

    fn prev(watermark: i64, observed_at: f64) -> Option<Previous> {
        Some(Previous { watermark, observed_at: Some(observed_at) })
    }

    #[test]
    fn an_honest_clock_moves_the_watermark_as_before() {
        // 15 minutes later on the database's clock, the server's clock also moved 15 minutes.
        let u = decide(1_000_900, Basis::ServerClock, prev(1_000_000, 5_000.0), 5_900.0, T);
        assert_eq!((u.value, u.anomaly), (1_000_900, None));
        // A few seconds of jitter between the clocks' readings are within the tolerance.
        let u = decide(1_000_930, Basis::ServerClock, prev(1_000_000, 5_000.0), 5_900.0, T);
        assert_eq!((u.value, u.anomaly), (1_000_930, None));
    }

    #[test]
    fn a_response_a_day_ahead_is_bounded_to_elapsed_time() {
        let u = decide(1_000_900 + 86_400, Basis::ServerClock, prev(1_000_000, 5_000.0), 5_900.0, T);
        assert_eq!(u.value, 1_000_900);
        assert!(u.anomaly.unwrap().contains("86400s further"));
    }

    #[test]
    fn a_clock_consistently_a_year_off_works_as_before() {
        let year = 365 * 86_400;
        for offset in [year, -year] {
            let u = decide(1_000_900 + offset, Basis::ServerClock, prev(1_000_000 + offset, 5_000.0), 5_900.0, T);
            assert_eq!((u.value, u.anomaly), (1_000_900 + offset, None));
        }
    }

    #[test]
    fn a_clock_behind_the_watermark_moves_it_back() {
        let u = decide(990_000, Basis::ServerClock, prev(1_000_000, 5_000.0), 5_010.0, T);
        assert_eq!(u.value, 990_000);
        assert!(u.anomaly.unwrap().contains("behind"));
        // Slightly behind (within tolerance): forward only, no anomaly.
        let u = decide(999_990, Basis::ServerClock, prev(1_000_000, 5_000.0), 5_010.0, T);
        assert_eq!((u.value, u.anomaly), (1_000_000, None));
    }

    #[test]
    fn an_item_from_the_future_without_a_date_header_is_bounded() {
        let year_2100 = 4_102_444_800;
        let u = decide(year_2100, Basis::LargestUpdatedAt, prev(1_000_000, 5_000.0), 5_900.0, T);
        assert_eq!(u.value, 1_000_900);
        let u = decide(year_2100, Basis::LargestUpdatedAt, None, 1_800_000_000.0, T);
        assert_eq!(u.value, 1_800_000_000 + T);
        assert!(u.anomaly.is_some());
    }

    #[test]
    fn the_first_watermark_from_the_server_clock_is_taken_as_is() {
        let u = decide(4_102_444_800, Basis::ServerClock, None, 1_800_000_000.0, T);
        assert_eq!((u.value, u.anomaly), (4_102_444_800, None));
    }

    #[test]
    fn a_watermark_without_an_observation_time_only_moves_forward() {
        let old = Some(Previous { watermark: 1_000_000, observed_at: None });
        let u = decide(1_086_400, Basis::ServerClock, old, 5_900.0, T);
        assert_eq!((u.value, u.anomaly), (1_086_400, None));
    }
}
