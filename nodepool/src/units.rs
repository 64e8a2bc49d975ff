//! Sizes, rates and durations written the way people write them in Helm values:
//! `capacity: 40GiB`, `ratelimit: 512M` (512 MB/s, as in the seeds), `cacheTTL: 24h`.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A number of bytes: `1024`, `64KiB`, `512M`, `40GiB`, `1.5G`. `K`/`M`/`G`/`T` are decimal
/// (10^3...), `Ki`/`Mi`/`Gi`/`Ti` binary; a trailing `B` is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

/// A transfer rate in bytes per second, in the seeds' notation: `512M` is 512 MB/s, `5M` is 5 MB/s.
/// A trailing `/s` is accepted. `0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rate(pub u64);

/// `blocksize`: `auto` (a piece size per blob, from its size: `layout::auto_piece_size`) or
/// one size for every blob (`1MiB`). A bare number is KiB, as the seeds write it (`256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockSize {
    #[default]
    Auto,
    Fixed(u64),
}

/// A duration as humantime writes it: `24h`, `15s`, `500ms`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix('B')
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "`{text}` is not a size (expected e.g. 512M, 40GiB, 1048576)"
        ));
    }
    let mult: u64 = match unit.trim() {
        "" => 1,
        "K" | "k" => 1_000,
        "M" | "m" => 1_000_000,
        "G" | "g" => 1_000_000_000,
        "T" | "t" => 1_000_000_000_000,
        "Ki" | "ki" => 1 << 10,
        "Mi" | "mi" => 1 << 20,
        "Gi" | "gi" => 1 << 30,
        "Ti" | "ti" => 1 << 40,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use K, M, G, T, Ki, Mi, Gi, Ti)"
            ))
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (expected e.g. 512M, 40GiB)"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as u64)
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(ByteSize)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let t = t.strip_suffix("/s").unwrap_or(t);
        parse_size(t).map(Rate)
    }
}

impl FromStr for BlockSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(BlockSize::Auto);
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let kib: u64 = t.parse().map_err(|_| format!("`{s}` is out of range"))?;
            return kib
                .checked_mul(1024)
                .map(BlockSize::Fixed)
                .ok_or_else(|| format!("`{s}` is out of range"));
        }
        parse_size(t)
            .map(BlockSize::Fixed)
            .map_err(|e| format!("{e}, or `auto`"))
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockSize::Auto => f.write_str("auto"),
            BlockSize::Fixed(n) => ByteSize(*n).fmt(f),
        }
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration (expected e.g. 24h, 15s): {e}"))
    }
}

const BINARY: [(u64, &str); 4] = [
    (1 << 40, "Ti"),
    (1 << 30, "Gi"),
    (1 << 20, "Mi"),
    (1 << 10, "Ki"),
];
const DECIMAL: [(u64, &str); 4] = [
    (1_000_000_000_000, "T"),
    (1_000_000_000, "G"),
    (1_000_000, "M"),
    (1_000, "K"),
];

/// `n` in the largest unit of `units` that holds it exactly: (`4`, `Gi`).
fn exact(n: u64, units: &[(u64, &'static str)]) -> Option<(u64, &'static str)> {
    units
        .iter()
        .find(|(unit, _)| n >= *unit && n.is_multiple_of(*unit))
        .map(|(unit, name)| (n / unit, *name))
}

/// `n` with the unit that gives the shortest number (`first`'s units on a tie), or plainly.
fn shortest(n: u64, first: &[(u64, &'static str)], then: &[(u64, &'static str)]) -> String {
    match (exact(n, first), exact(n, then)) {
        (Some(a), Some(b)) if b.0 < a.0 => format!("{}{}", b.0, b.1),
        (Some((m, unit)), _) | (None, Some((m, unit))) => format!("{m}{unit}"),
        (None, None) => n.to_string(),
    }
}

/// As people write sizes: `4GiB`, `256KiB`, `512MB`, `1023`; parses back.
impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = shortest(self.0, &BINARY, &DECIMAL);
        let unit = text.ends_with(|c: char| c.is_ascii_alphabetic());
        write!(f, "{text}{}", if unit { "B" } else { "" })
    }
}

/// In the seeds' notation: `512M` is 512 MB/s, `64Ki` 64 KiB/s; parses back.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shortest(self.0, &DECIMAL, &BINARY))
    }
}

/// In whole hours, seconds or milliseconds (`24h`, `60s`, `500ms`), as the docs and the chart
/// write them; humantime's form otherwise. Parses back.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        match (secs, nanos) {
            (0, 0) => f.write_str("0s"),
            (s, 0) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            (s, 0) => write!(f, "{s}s"),
            (0, n) if n % 1_000_000 == 0 => write!(f, "{}ms", n / 1_000_000),
            _ => write!(f, "{}", humantime::format_duration(self.0)),
        }
    }
}

/// Values in YAML may be strings (`"512M"`) or bare numbers (`1048576`).
#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    Str(String),
    Num(u64),
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = match StrOrNum::deserialize(d)? {
                    StrOrNum::Str(s) => s,
                    StrOrNum::Num(n) => n.to_string(),
                };
                text.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(ByteSize);
serde_via_str!(Rate);
serde_via_str!(HumanDuration);
serde_via_str!(BlockSize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_auto_a_size_or_the_seeds_kib() {
        assert_eq!("auto".parse::<BlockSize>(), Ok(BlockSize::Auto));
        assert_eq!("1MiB".parse::<BlockSize>(), Ok(BlockSize::Fixed(1 << 20)));
        assert_eq!("256".parse::<BlockSize>(), Ok(BlockSize::Fixed(256 << 10)));
        assert!("huge".parse::<BlockSize>().is_err());
        assert!("99999999999999999999".parse::<BlockSize>().is_err());
        for b in [BlockSize::Auto, BlockSize::Fixed(256 << 10)] {
            assert_eq!(b.to_string().parse::<BlockSize>(), Ok(b));
        }
        let yaml: BlockSize = serde_yaml::from_str("256").expect("a bare number");
        assert_eq!(yaml, BlockSize::Fixed(256 << 10));
    }

    #[test]
    fn sizes_parse_as_people_write_them() {
        assert_eq!("1024".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert_eq!("64KiB".parse::<ByteSize>(), Ok(ByteSize(64 << 10)));
        assert_eq!("40GiB".parse::<ByteSize>(), Ok(ByteSize(40 << 30)));
        assert_eq!("512M".parse::<ByteSize>(), Ok(ByteSize(512_000_000)));
        assert_eq!("1.5G".parse::<ByteSize>(), Ok(ByteSize(1_500_000_000)));
        assert!("".parse::<ByteSize>().is_err());
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("5X".parse::<ByteSize>().is_err());
        assert!("99999999999T".parse::<ByteSize>().is_err());
    }

    #[test]
    fn rates_use_the_seeds_notation() {
        assert_eq!("512M".parse::<Rate>(), Ok(Rate(512_000_000)));
        assert_eq!("5M/s".parse::<Rate>(), Ok(Rate(5_000_000)));
        assert_eq!("0".parse::<Rate>(), Ok(Rate(0)));
    }

    #[test]
    fn values_are_written_as_people_write_them_and_parse_back() {
        let sizes = [
            (4 << 30, "4GiB"),
            (256 << 10, "256KiB"),
            (512_000_000, "512MB"),
        ];
        for (n, text) in sizes.into_iter().chain([(0, "0"), (1023, "1023")]) {
            assert_eq!(ByteSize(n).to_string(), text);
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(n)));
        }
        for (n, text) in [(512_000_000, "512M"), (64 << 10, "64Ki"), (0, "0")] {
            assert_eq!(Rate(n).to_string(), text);
            assert_eq!(text.parse::<Rate>(), Ok(Rate(n)));
        }
        let secs = |s| HumanDuration(Duration::from_secs(s));
        let cases = [
            (secs(86400), "24h"),
            (secs(90), "90s"),
            (secs(60), "60s"),
            (secs(0), "0s"),
            (HumanDuration(Duration::from_millis(500)), "500ms"),
            (HumanDuration(Duration::from_millis(1500)), "1s 500ms"),
        ];
        for (d, text) in cases {
            assert_eq!(d.to_string(), text);
            assert_eq!(text.parse::<HumanDuration>(), Ok(d));
        }
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(
            "24h".parse::<HumanDuration>(),
            Ok(HumanDuration(Duration::from_secs(86400)))
        );
        assert!("forever".parse::<HumanDuration>().is_err());
    }
}
