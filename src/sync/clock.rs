//! How far a new watermark may move: the API server's clock is trusted for the watermark's value (server time,
//! not ours — see `docs/architecture.md`, "When the watermark moves"), but not blindly. One API node with a clock a day ahead would otherwise set a
//! watermark a day ahead, and every incremental run would then skip a day of updates.
//!
//! The model: the API's clock and the database's clock (shared by every replica, unlike their local clocks) run at
//! the same rate, so their offset is stable. The offset of the last accepted server time is kept (`sync_state.
//! clock_offset`). A new server time is accepted when it agrees with that offset within `sync.clock_tolerance`; a
//! server clock consistently a year ahead or behind of ours therefore works as before, since only the offset's
//! stability matters. A server time that disagrees is an anomaly:
//! - **ahead**: the watermark goes only as far as the kept offset says (the honest time);
//! - **behind**: the watermark moves back to that time minus the time elapsed since the previous walk, so that
//!   even if the server's clock really jumped back, nothing stamped since is skipped (a re-read, never a skip).
//!
//! Neither moves the kept offset, so one lying response cannot shift it. A clock that has really been corrected
//! backwards is re-anchored after [`CONSISTENT_TO_REANCHOR`] walks agree on its new offset (the safe direction:
//! a lower offset only bounds harder). A clock corrected *forwards* is never followed automatically, since a
//! lying node reached again and again could look the same: the watermark keeps to the old offset (re-reading the
//! difference each run, losing nothing) and every run reports the anomaly until an operator clears
//! `sync_state.clock_offset` (README, "Failure modes").

pub use crate::store::{ClockState, WatermarkUpdate};

/// Consecutive walks whose server clock agrees on a new, lower offset before it is adopted.
pub const CONSISTENT_TO_REANCHOR: i32 = 3;

/// Where the candidate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The API server's clock: the smallest HTTP `Date` of the walk.
    ServerClock,
    /// No `Date` header: the largest `updated_at` seen.
    LargestUpdatedAt,
}

/// An observation: `server` (the server's time, or the largest `updated_at`) seen at database time `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub server: i64,
    pub basis: Basis,
    pub at: f64,
}

/// Decides the new watermark from `seen`, given the source's clock state, `settle` and `tolerance` (seconds).
pub fn decide(seen: Observation, state: &ClockState, settle: i64, tolerance: i64) -> WatermarkUpdate {
    let previous = state.watermark;
    // Outside an anomaly the watermark only moves forward.
    let forward = |value: i64| previous.map_or(value, |w| w.max(value));
    // Time elapsed since the previous walk's observation, on the database's clock.
    let elapsed = state.observed_at.map(|at| (seen.at - at).max(0.0) as i64);
    let mut update = WatermarkUpdate {
        value: seen.server,
        observed_at: seen.at,
        offset: state.offset,
        suspect: state.suspect,
        anomaly: None,
    };
    match seen.basis {
        Basis::LargestUpdatedAt => {
            // No server clock: bound by the previous watermark plus elapsed time, or (first run) by the database's.
            let limit = match (previous, elapsed) {
                (Some(w), Some(e)) => w + e + tolerance,
                _ => seen.at as i64 + tolerance,
            };
            if seen.server > limit {
                update.value = limit - tolerance;
                update.anomaly = Some(format!(
                    "the largest updated_at seen (no Date header) is {}, {}s beyond what elapsed time allows; the \
                     watermark is bounded to {}",
                    seen.server,
                    seen.server - limit,
                    update.value
                ));
            }
            update.value = forward(update.value);
        }
        Basis::ServerClock => {
            let implied = seen.server - seen.at as i64;
            let Some(offset) = state.offset else {
                // The first server time (or the first since this was kept): nothing to compare it with.
                update.offset = Some(implied);
                update.value = forward(seen.server - settle);
                return update;
            };
            let expected = seen.at as i64 + offset;
            let drift = seen.server - expected;
            if drift.abs() <= tolerance {
                update.offset = Some(implied);
                update.suspect = None;
                update.value = forward(seen.server - settle);
            } else if drift > 0 {
                update.suspect = None;
                update.value = forward(expected - settle);
                update.anomaly = Some(format!(
                    "the API server's clock says {}, {drift}s ahead of what its clock said before plus the time \
                     elapsed since; the watermark is bounded to {}",
                    seen.server, update.value
                ));
            } else {
                let back_to = seen.server - settle - elapsed.unwrap_or(0);
                update.value = previous.map_or(back_to, |w| w.min(back_to));
                let count = match state.suspect {
                    Some((o, n)) if (o - implied).abs() <= tolerance => n + 1,
                    _ => 1,
                };
                if count >= CONSISTENT_TO_REANCHOR {
                    update.offset = Some(implied);
                    update.suspect = None;
                } else {
                    update.suspect = Some((implied, count));
                }
                update.anomaly = Some(format!(
                    "the API server's clock says {}, {}s behind what its clock said before plus the time elapsed \
                     since; the watermark moves back to {} so the next run re-reads rather than skips{}",
                    seen.server,
                    -drift,
                    update.value,
                    if update.suspect.is_none() { " (the new clock offset is adopted: seen consistently)" } else { "" }
                ));
            }
        }
    }
    update
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: i64 = 60;
    const SETTLE: i64 = 30;
    /// The API's clock runs 1,000,000 s ahead of the database's in these tests.
    const OFFSET: i64 = 1_000_000;

    fn state_at(db_time: f64) -> ClockState {
        ClockState {
            watermark: Some(db_time as i64 + OFFSET - SETTLE),
            observed_at: Some(db_time),
            offset: Some(OFFSET),
            suspect: None,
        }
    }

    fn server(server: i64, at: f64) -> Observation {
        Observation { server, basis: Basis::ServerClock, at }
    }

    #[test]
    fn an_honest_clock_moves_the_watermark_as_before() {
        // 15 minutes later on the database's clock, the server's clock also moved 15 minutes (and 5 s of jitter).
        let u = decide(server(5_900 + OFFSET + 5, 5_900.0), &state_at(5_000.0), SETTLE, TOL);
        assert_eq!((u.value, u.anomaly, u.offset), (5_900 + OFFSET + 5 - SETTLE, None, Some(OFFSET + 5)));
    }

    #[test]
    fn a_response_a_day_ahead_is_bounded_to_the_honest_time() {
        let u = decide(server(5_900 + OFFSET + 86_400, 5_900.0), &state_at(5_000.0), SETTLE, TOL);
        assert_eq!(u.value, 5_900 + OFFSET - SETTLE);
        assert_eq!(u.offset, Some(OFFSET), "one lying response does not move the kept offset");
        assert!(u.anomaly.unwrap().contains("86400s ahead"));
    }

    #[test]
    fn a_clock_consistently_a_year_off_works_as_before() {
        let year = 365 * 86_400;
        for offset in [year, -year] {
            let state =
                ClockState { offset: Some(offset), watermark: Some(5_000 + offset - SETTLE), ..state_at(5_000.0) };
            let u = decide(server(5_900 + offset, 5_900.0), &state, SETTLE, TOL);
            assert_eq!((u.value, u.anomaly), (5_900 + offset - SETTLE, None));
        }
    }

    #[test]
    fn a_response_behind_moves_the_watermark_back_far_enough_and_the_next_honest_one_is_taken() {
        let state = state_at(5_000.0);
        let u = decide(server(5_900 + OFFSET - 3_600, 5_900.0), &state, SETTLE, TOL);
        // Back past the previous walk: anything stamped since the (possible) jump is re-read.
        assert_eq!(u.value, 5_900 + OFFSET - 3_600 - SETTLE - 900);
        assert!(u.anomaly.unwrap().contains("3600s behind"));
        assert_eq!(u.offset, Some(OFFSET));
        // The next honest response is accepted: the watermark is not stuck behind.
        let next =
            ClockState { watermark: Some(u.value), observed_at: Some(5_900.0), offset: u.offset, suspect: u.suspect };
        let v = decide(server(6_800 + OFFSET, 6_800.0), &next, SETTLE, TOL);
        assert_eq!((v.value, v.anomaly, v.suspect), (6_800 + OFFSET - SETTLE, None, None));
    }

    #[test]
    fn a_clock_corrected_backwards_is_adopted_once_seen_consistently() {
        let mut state = state_at(5_000.0);
        let mut at = 5_000.0;
        for walk in 1..=CONSISTENT_TO_REANCHOR {
            at += 900.0;
            let u = decide(server(at as i64 + OFFSET - 7_200, at), &state, SETTLE, TOL);
            assert!(u.anomaly.is_some());
            state =
                ClockState { watermark: Some(u.value), observed_at: Some(at), offset: u.offset, suspect: u.suspect };
            let adopted = walk == CONSISTENT_TO_REANCHOR;
            assert_eq!(state.offset, Some(if adopted { OFFSET - 7_200 } else { OFFSET }), "walk {walk}");
        }
        at += 900.0;
        let u = decide(server(at as i64 + OFFSET - 7_200, at), &state, SETTLE, TOL);
        assert_eq!((u.value, u.anomaly), (at as i64 + OFFSET - 7_200 - SETTLE, None));
    }

    #[test]
    fn a_clock_corrected_forwards_is_never_followed_but_nothing_is_skipped() {
        let mut state = state_at(5_000.0);
        let mut at = 5_000.0;
        for _ in 0..5 {
            at += 900.0;
            let u = decide(server(at as i64 + OFFSET + 7_200, at), &state, SETTLE, TOL);
            assert_eq!(u.value, at as i64 + OFFSET - SETTLE, "bounded to the kept offset: a re-read, not a skip");
            assert!(u.anomaly.is_some());
            state =
                ClockState { watermark: Some(u.value), observed_at: Some(at), offset: u.offset, suspect: u.suspect };
        }
        assert_eq!(state.offset, Some(OFFSET));
    }

    #[test]
    fn an_item_from_the_future_without_a_date_header_is_bounded() {
        let year_2100 = 4_102_444_800;
        let seen = Observation { server: year_2100, basis: Basis::LargestUpdatedAt, at: 5_900.0 };
        let u = decide(seen, &ClockState { watermark: Some(1_000_000), ..state_at(5_000.0) }, SETTLE, TOL);
        assert_eq!(u.value, 1_000_900);
        assert!(u.anomaly.is_some());
        let first = Observation { server: year_2100, basis: Basis::LargestUpdatedAt, at: 1_800_000_000.0 };
        assert_eq!(decide(first, &ClockState::default(), SETTLE, TOL).value, 1_800_000_000);
    }

    #[test]
    fn the_first_server_time_is_taken_and_anchors_the_offset() {
        let u = decide(server(4_102_444_800, 1_800_000_000.0), &ClockState::default(), SETTLE, TOL);
        assert_eq!((u.value, u.anomaly), (4_102_444_800 - SETTLE, None));
        assert_eq!(u.offset, Some(4_102_444_800 - 1_800_000_000));
    }
}
