//! XEP-0082 date-times: the parser of archive query bounds (`mam::query::parse_datetime`) on
//! arbitrary text, and the formatter of delay and archive stamps (`time::stamp`) against it.
//! Besides not panicking: a parsed time written as a stamp parses back to the same instant,
//! so a client that pages with the stamps it was sent gets exactly those messages.

#![no_main]

use hearth::modules::mam::query::parse_datetime;
use hearth::modules::time::stamp;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

/// The first instant of the year 10000: XEP-0082 has four-digit years, and the server's clock
/// (the only source of the stamps it writes) never gets there.
const YEAR_10000_MS: u64 = 253_402_300_800_000;

fn round_trip(ms: u64) {
    let written = stamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    assert_eq!(
        parse_datetime(&written),
        Some(ms),
        "{ms} ms written {written}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(ms) = parse_datetime(s)
        && ms < YEAR_10000_MS
    {
        round_trip(ms);
    }
    if let Some(bytes) = data.get(..8) {
        let ms = u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
        round_trip(ms % YEAR_10000_MS);
    }
});
