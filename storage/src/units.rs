//! Sizes with units on the command line: `16384`, `256KiB`, `1MiB`, `64MB`,
//! `1.5GiB`. Binary units (KiB, MiB, GiB, TiB, and the bare K, M, G, T) are
//! powers of 1024; decimal units (kB, MB, GB, TB) powers of 1000.

/// Parses a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB)"
            ));
        }
    };
    let bad = || format!("{s:?} is not a size (e.g. 16384, 256KiB, 1MiB, 64MB)");
    if num.is_empty() || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut bytes = whole
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if !frac.is_empty() {
        let digits: u32 = frac.len().try_into().map_err(|_| bad())?;
        let frac_val: u64 = frac.parse().map_err(|_| bad())?;
        let scale = 10u64.checked_pow(digits).ok_or_else(bad)?;
        let part = u128::from(frac_val) * u128::from(mult) / u128::from(scale);
        bytes = bytes
            .checked_add(part as u64)
            .ok_or_else(|| format!("{s:?} is too large"))?;
    }
    Ok(bytes)
}

/// Parses a rate in bytes/s: a size with an optional `/s` (`20MB/s`,
/// `512KiB`).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    parse_size(t.strip_suffix("/s").unwrap_or(t))
}

/// Formats bytes for people: `1.50 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// A rate in at most 9 characters: `968 KiB/s`, `1.21 MiB/s` → `1.2 MiB/s`,
/// three significant digits.
pub fn format_rate(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes_per_sec.max(0.0);
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    let digits = if u == 0 || v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}/s", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_stay_short() {
        assert_eq!(format_rate(0.0), "0 B/s");
        assert_eq!(format_rate(999.0), "999 B/s");
        assert_eq!(format_rate(991_200.0), "968 KiB/s");
        assert_eq!(format_rate(1_268_000.0), "1.21 MiB/s");
        assert_eq!(format_rate(20.0 * 1024.0 * 1024.0), "20.0 MiB/s");
        for r in [0.0, 1.0, 999.9, 1e3, 1e6, 9.99e8, 1e12] {
            assert!(format_rate(r).chars().count() <= 10, "{}", format_rate(r));
        }
    }

    #[test]
    fn sizes() {
        for (s, want) in [
            ("16384", 16384),
            ("256KiB", 256 << 10),
            ("1MiB", 1 << 20),
            ("1M", 1 << 20),
            ("64MB", 64_000_000),
            ("1.5GiB", 3 << 29),
            ("0", 0),
            (" 2 KiB ", 2048),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "12XB",
            "MiB",
            "1.2.3",
            "-1",
            "1e9",
            "99999999999999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(format_size(1536 * 1024), "1.50 MiB");
        assert_eq!(parse_rate("20MB/s"), Ok(20_000_000));
        assert_eq!(parse_rate("1MiB"), Ok(1 << 20));
        assert!(parse_rate("fast").is_err());
        assert_eq!(format_size(12), "12 B");
    }
}

/// Serde helpers: a size or rate in a scenario file may be a number of
/// bytes or a string with a unit (`"64MiB"`, `"5MB/s"`).
pub mod serde_units {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    fn parse(raw: Raw, rate: bool) -> Result<u64, String> {
        match raw {
            Raw::Number(n) => Ok(n),
            Raw::Text(t) if rate => super::parse_rate(&t),
            Raw::Text(t) => super::parse_size(&t),
        }
    }

    pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(Raw::deserialize(d)?, false).map_err(serde::de::Error::custom)
    }

    pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|r| parse(r, false))
            .transpose()
            .map_err(serde::de::Error::custom)
    }

    pub fn opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<Raw>::deserialize(d)?
            .map(|r| parse(r, true))
            .transpose()
            .map_err(serde::de::Error::custom)
    }

    pub fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        parse(Raw::deserialize(d)?, true).map_err(serde::de::Error::custom)
    }
}
