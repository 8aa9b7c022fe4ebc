//! Parsers of the human-friendly flag values of `flotilla bench`:
//! durations (`30s`, `500ms`), sizes (`16`, `1KiB`), rates (`150k`) and
//! fractions (`0.1`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Splits `s` into its numeric prefix and its (trimmed) unit suffix.
fn split_number(s: &str) -> Result<(f64, &str), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    if num.is_empty() {
        return Err(format!("`{s}`: expected a number"));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: `{num}` is not a number"))?;
    if !value.is_finite() {
        return Err(format!("`{s}`: not a finite number"));
    }
    Ok((value, unit.trim()))
}

/// A duration: a number with an optional unit `ns`, `us`/`µs`, `ms`, `s`,
/// `m` or `h` (no unit: seconds). Decimals are allowed (`1.5s`).
///
/// # Errors
/// A message naming the bad value.
pub fn duration(s: &str) -> Result<Duration, String> {
    let (value, unit) = split_number(s)?;
    let nanos_per_unit: f64 = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "" | "s" | "sec" | "secs" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        other => {
            return Err(format!(
                "`{s}`: unknown duration unit `{other}` (use ns, us, ms, s, m, h)"
            ))
        }
    };
    let nanos = value * nanos_per_unit;
    if nanos > 1e9 * 86_400.0 * 365.0 {
        return Err(format!("`{s}`: longer than a year"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// A byte size: a number with an optional unit `B`, `K`/`KB`/`KiB` (1024),
/// `M`/`MB`/`MiB` (1024²) or `G`/`GB`/`GiB`.
///
/// # Errors
/// A message naming the bad value.
pub fn bytes(s: &str) -> Result<usize, String> {
    let (value, unit) = split_number(s)?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (use B, KiB, MiB, GiB)"
            ))
        }
    };
    let n = value * scale;
    if n.fract() != 0.0 || n > (1u64 << 40) as f64 {
        return Err(format!("`{s}`: not a whole number of bytes up to 1 TiB"));
    }
    Ok(n as usize)
}

/// A rate in operations per second: a number with an optional `k` (10³) or
/// `m` (10⁶) suffix and an optional `/s`.
///
/// # Errors
/// A message naming the bad value; zero is refused.
pub fn rate(s: &str) -> Result<u64, String> {
    let trimmed = s.trim().trim_end_matches("/s");
    let (value, unit) = split_number(trimmed)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        other => return Err(format!("`{s}`: unknown rate suffix `{other}` (use k or m)")),
    };
    let n = (value * scale).round();
    if !(1.0..=1e10).contains(&n) {
        return Err(format!("`{s}`: a rate must be in 1..=10^10 ops/s"));
    }
    Ok(n as u64)
}

/// A fraction in `0.0..=1.0` (e.g. the share of reads); `10%` is accepted
/// too.
///
/// # Errors
/// A message naming the bad value.
pub fn fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (value, percent) = match t.strip_suffix('%') {
        Some(p) => (p.trim().parse::<f64>(), true),
        None => (t.parse::<f64>(), false),
    };
    let mut v = value.map_err(|_| format!("`{s}`: expected a fraction like 0.25 or 25%"))?;
    if percent {
        v /= 100.0;
    }
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{s}`: a fraction must be between 0 and 1"));
    }
    Ok(v)
}

/// A comma-separated list of `host:port` endpoints, resolved now.
///
/// # Errors
/// A message naming the endpoint that does not resolve.
pub fn endpoints(s: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr = part
            .to_socket_addrs()
            .map_err(|e| format!("target `{part}`: {e}"))?
            .next()
            .ok_or_else(|| format!("target `{part}`: resolves to no address"))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err(format!(
            "`{s}`: no endpoint (expected host:port,host:port,...)"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(duration(" 1h "), Ok(Duration::from_secs(3600)));
        assert!(duration("ms").is_err());
        assert!(duration("10x").is_err());
        assert!(duration("").is_err());
        assert!(duration("-1s").is_err());
        assert!(duration("1e400s").is_err());
    }

    #[test]
    fn sizes_rates_and_fractions() {
        assert_eq!(bytes("16"), Ok(16));
        assert_eq!(bytes("1KiB"), Ok(1024));
        assert_eq!(bytes("1k"), Ok(1024));
        assert_eq!(bytes("2MiB"), Ok(2 << 20));
        assert_eq!(bytes("0.5KiB"), Ok(512));
        assert!(bytes("1.5").is_err());
        assert!(bytes("3 parsecs").is_err());

        assert_eq!(rate("150000"), Ok(150_000));
        assert_eq!(rate("150k"), Ok(150_000));
        assert_eq!(rate("1.2M/s"), Ok(1_200_000));
        assert_eq!(rate("100_000"), Ok(100_000));
        assert!(rate("0").is_err());
        assert!(rate("fast").is_err());

        assert_eq!(fraction("0"), Ok(0.0));
        assert_eq!(fraction("0.25"), Ok(0.25));
        assert_eq!(fraction("1"), Ok(1.0));
        assert_eq!(fraction("10%"), Ok(0.1));
        assert!(fraction("1.1").is_err());
        assert!(fraction("-0.1").is_err());
        assert!(fraction("half").is_err());
    }

    #[test]
    fn endpoint_lists() {
        let eps = endpoints("127.0.0.1:6381, 127.0.0.1:6382").unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[1].port(), 6382);
        assert!(endpoints("").is_err());
        assert!(endpoints("127.0.0.1").is_err());
    }
}
