//! Sizes, percentages and durations as people write them, and back again for logs.
//!
//! Parsing is pure and lives here so every accepted and rejected form is a unit test. Sizes go
//! through `bytesize`, which reads plain bytes, Kubernetes quantities (`1536Mi`, `2Gi`, `1.5G`)
//! and the usual `KiB/MiB/GiB/KB/MB/GB`; durations through `humantime` (`250ms`, `5s`, `1h30m`).

use std::fmt;
use std::time::Duration;

/// A memory amount given either absolutely or as a share of the memory limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeOrPercent {
    Bytes(u64),
    Percent(f64),
}

impl SizeOrPercent {
    /// The amount in bytes, given the limit a percentage is taken of.
    pub fn resolve(self, limit_bytes: u64) -> u64 {
        match self {
            SizeOrPercent::Bytes(bytes) => bytes,
            SizeOrPercent::Percent(pct) => (limit_bytes as f64 * pct / 100.0) as u64,
        }
    }
}

impl fmt::Display for SizeOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeOrPercent::Bytes(bytes) => write!(f, "{}", Bytes(*bytes)),
            SizeOrPercent::Percent(pct) => write!(f, "{pct}%"),
        }
    }
}

/// Why a size, percentage or duration was refused; the caller adds the flag and the value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UnitError {
    #[error("is not a size (try 1536Mi, 1.5GiB or 2000000000)")]
    NotASize,
    #[error("is not a size or a percentage (try 1536Mi, 1.5GiB or 80%)")]
    NotASizeOrPercent,
    #[error("must be more than 0 (try 1536Mi or 80%)")]
    Zero,
    #[error("is not a percentage between 0 and 100 (try 80%)")]
    PercentOutOfRange,
    #[error("is not a duration (try 250ms, 5s, 5m or 1h30m)")]
    NotADuration,
    #[error("is outside {0} (try 5s)")]
    OutOfRange(DurationRange),
}

/// Parses a size in bytes: `2000000000`, `1536Mi`, `2Gi`, `1.5G`, `500M`, `512MiB`, `2GB`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    // bytesize accepts a bare unit ("MiB") as zero bytes; a size needs a number.
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(UnitError::NotASize);
    }
    let bytes = text
        .parse::<bytesize::ByteSize>()
        .map_err(|_| UnitError::NotASize)?
        .as_u64();
    if bytes == 0 {
        return Err(UnitError::Zero);
    }
    Ok(bytes)
}

/// Parses `80%` or a size as [`parse_size`] reads it.
pub fn parse_size_or_percent(text: &str) -> Result<SizeOrPercent, UnitError> {
    let text = text.trim();
    if let Some(number) = text.strip_suffix('%') {
        let pct: f64 = number
            .trim()
            .parse()
            .map_err(|_| UnitError::NotASizeOrPercent)?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(UnitError::PercentOutOfRange);
        }
        return Ok(SizeOrPercent::Percent(pct));
    }
    match parse_size(text) {
        Ok(bytes) => Ok(SizeOrPercent::Bytes(bytes)),
        Err(UnitError::Zero) => Err(UnitError::Zero),
        Err(_) => Err(UnitError::NotASizeOrPercent),
    }
}

/// Parses `250ms`, `5s`, `5m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(text.trim()).map_err(|_| UnitError::NotADuration)
}

/// The durations a setting accepts. Every duration memprobe takes is bounded: a clock
/// deadline far in the future overflows `Instant`, and one of a few nanoseconds spins a core.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
    /// Whether 0 is accepted too (`--min-drain 0s`: recycle as soon as sessions reach zero).
    pub zero: bool,
}

impl DurationRange {
    /// 10ms to 7 days: every interval, timeout and sustain.
    pub const STANDARD: DurationRange = DurationRange {
        min: Duration::from_millis(10),
        max: Duration::from_secs(7 * 24 * 3600),
        zero: false,
    };
    /// 0, or 10ms to 7 days.
    pub const OR_ZERO: DurationRange = DurationRange {
        zero: true,
        ..DurationRange::STANDARD
    };

    /// Parses `text` and checks it is within the range.
    pub fn parse(self, text: &str) -> Result<Duration, UnitError> {
        let d = parse_duration(text)?;
        if (d.is_zero() && self.zero) || (self.min <= d && d <= self.max) {
            Ok(d)
        } else {
            Err(UnitError::OutOfRange(self))
        }
    }
}

impl fmt::Display for DurationRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (min, max) = (Human(self.min), Human(self.max));
        if self.zero {
            write!(f, "0 or {min} to {max}")
        } else {
            write!(f, "{min} to {max}")
        }
    }
}

/// Cuts text that came from outside (a process name, a KMS answer, a file) to `max` bytes
/// at a character boundary, marking the cut, and replaces control characters: whatever a
/// target or a server sends, a reason stays one short line.
pub fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = text[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < text.len() {
        out.push('…');
    }
    out
}

/// RFC 3339 wall-clock time, for people. A wall clock set before 1970 or after 9999 (which
/// the format cannot say, and its formatter panics on) shows as the nearest time it can.
pub fn timestamp(at: std::time::SystemTime) -> String {
    use std::time::{Duration, SystemTime};
    let last = SystemTime::UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
    let at = at.clamp(SystemTime::UNIX_EPOCH, last);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Bytes shown to people: `1.62 GiB`, `512.00 MiB`, `900 B`.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.2} {}", UNITS[unit])
    }
}

/// A duration shown to people, rounded to what matters: `5m`, `1h 30m`, `12s`, `250ms`.
#[derive(Clone, Copy, Debug)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let rounded = if d >= Duration::from_secs(1) {
            Duration::from_secs(d.as_secs())
        } else {
            Duration::from_millis(d.as_millis() as u64)
        };
        write!(f, "{}", humantime::format_duration(rounded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;
    const GI: u64 = 1024 * MI;

    #[test]
    fn sizes_in_every_accepted_form() {
        let cases = [
            ("2000000000", 2_000_000_000),
            ("1536Mi", 1536 * MI),
            ("2Gi", 2 * GI),
            ("1.5G", 1_500_000_000),
            ("500M", 500_000_000),
            ("512MiB", 512 * MI),
            ("1.5GiB", GI + GI / 2),
            ("64KiB", 64 * 1024),
            ("2GB", 2_000_000_000),
            ("100KB", 100_000),
            (" 1 GiB ", GI),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                parse_size(text),
                Ok(bytes),
                "{text:?} is a size of {bytes} bytes"
            );
        }
    }

    #[test]
    fn sizes_that_are_refused() {
        for text in ["", "MiB", "-1Gi", "1.5 parsecs", "80%", "ten", "1Gi2"] {
            assert_eq!(
                parse_size(text),
                Err(UnitError::NotASize),
                "{text:?} is no size"
            );
        }
        assert_eq!(
            parse_size("0"),
            Err(UnitError::Zero),
            "a size of zero means nothing"
        );
    }

    #[test]
    fn percentages_and_sizes_together() {
        assert_eq!(
            parse_size_or_percent("80%"),
            Ok(SizeOrPercent::Percent(80.0))
        );
        assert_eq!(
            parse_size_or_percent("92.5%"),
            Ok(SizeOrPercent::Percent(92.5))
        );
        assert_eq!(
            parse_size_or_percent("2Gi"),
            Ok(SizeOrPercent::Bytes(2 * GI))
        );
        assert_eq!(
            parse_size_or_percent("80 percent"),
            Err(UnitError::NotASizeOrPercent)
        );
        assert_eq!(
            parse_size_or_percent("x%"),
            Err(UnitError::NotASizeOrPercent)
        );
        for text in ["0%", "101%", "-5%", "NaN%", "inf%"] {
            assert_eq!(
                parse_size_or_percent(text),
                Err(UnitError::PercentOutOfRange),
                "{text:?} is outside (0, 100]"
            );
        }
    }

    #[test]
    fn a_percentage_resolves_against_the_limit() {
        assert_eq!(SizeOrPercent::Percent(80.0).resolve(2 * GI), 1717986918);
        assert_eq!(SizeOrPercent::Bytes(5).resolve(2 * GI), 5);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for text in ["", "5", "five seconds", "-5s", "5 parsecs"] {
            assert_eq!(
                parse_duration(text),
                Err(UnitError::NotADuration),
                "{text:?}"
            );
        }
    }

    #[test]
    fn durations_are_bounded() {
        let standard = DurationRange::STANDARD;
        assert_eq!(standard.parse("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(standard.parse("7days"), Ok(Duration::from_secs(604_800)));
        for text in ["1ns", "9ms", "0s", "8days", "200000000000y"] {
            assert_eq!(
                standard.parse(text),
                Err(UnitError::OutOfRange(standard)),
                "{text:?} is outside 10ms to 7 days"
            );
        }
        assert_eq!(DurationRange::OR_ZERO.parse("0s"), Ok(Duration::ZERO));
        assert_eq!(
            UnitError::OutOfRange(standard).to_string(),
            "is outside 10ms to 7days (try 5s)"
        );
    }

    #[test]
    fn a_wall_clock_before_1970_or_after_9999_never_panics() {
        use std::time::SystemTime;
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(timestamp(epoch), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(epoch - Duration::from_secs(86_400 * 365 * 30)),
            "1970-01-01T00:00:00.000Z",
            "a clock set to 1940 shows the nearest time RFC 3339 can say"
        );
        assert_eq!(
            timestamp(epoch + Duration::from_secs(400_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            timestamp(epoch + Duration::from_secs(1_800_000_000)),
            "2027-01-15T08:00:00.000Z"
        );
    }

    #[test]
    fn text_from_outside_is_clipped_to_one_short_line() {
        assert_eq!(clip("kms", 8), "kms");
        assert_eq!(clip("0123456789", 4), "0123…");
        assert_eq!(clip("ééé", 3), "é…", "never inside a character");
        assert_eq!(clip("a\nb\tc", 10), "a b c", "no control characters");
    }

    #[test]
    fn bytes_and_durations_for_people() {
        assert_eq!(Bytes(900).to_string(), "900 B");
        assert_eq!(Bytes(1536 * MI).to_string(), "1.50 GiB");
        assert_eq!(Bytes(1_739_461_755).to_string(), "1.62 GiB");
        assert_eq!(Human(Duration::from_millis(300_400)).to_string(), "5m");
        assert_eq!(Human(Duration::from_millis(250)).to_string(), "250ms");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_text_makes_a_parser_panic(text in "\\PC*") {
                let _ = parse_size(&text);
                let _ = parse_size_or_percent(&text);
                let _ = DurationRange::STANDARD.parse(&text);
                let _ = DurationRange::OR_ZERO.parse(&text);
            }

            #[test]
            fn sizes_and_durations_as_people_write_them(
                n in 0u64..1_000_000, unit in prop::sample::select(vec!["", "Ki", "Mi", "Gi", "MiB", "G", "%", "ms", "s", "m", "h", "d", "y"])
            ) {
                let text = format!("{n}{unit}");
                let _ = parse_size_or_percent(&text);
                let _ = DurationRange::STANDARD.parse(&text);
            }

            #[test]
            fn a_bounded_duration_is_within_its_range(text in "[0-9]{1,25}(ns|us|ms|s|m|h|d|y)") {
                if let Ok(d) = DurationRange::STANDARD.parse(&text) {
                    prop_assert!(DurationRange::STANDARD.min <= d && d <= DurationRange::STANDARD.max);
                }
            }

            #[test]
            fn clipped_text_is_short_and_one_line(text in "\\PC*|[\\x00-\\x7f]{0,300}", max in 0usize..100) {
                let out = clip(&text, max);
                prop_assert!(out.len() <= max + '…'.len_utf8());
                prop_assert!(!out.contains('\n'));
            }
        }
    }
}
