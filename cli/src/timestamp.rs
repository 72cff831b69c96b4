//! RFC 3339 timestamps, as the command line reads them.

use carnet_core::Timestamp;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Parses an RFC 3339 timestamp.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let d = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = d.unix_timestamp_nanos() / 1_000_000;
    Some(Timestamp::from_unix_millis(i64::try_from(ms).ok()?))
}
