//! Parsers for numeric flags, so that a value the program cannot honour is refused by clap
//! with the flag's name instead of being accepted (`--lr nan`) or crashing later
//! (`--token-bytes 0`).

/// A positive finite number (learning rates).
pub fn positive_finite(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(format!("must be a positive finite number, not {s}"))
    }
}

/// A finite number ≥ 0 (weight decay).
pub fn non_negative_finite(s: &str) -> Result<f64, String> {
    let x: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(format!("must be a finite number ≥ 0, not {s}"))
    }
}

/// A count of at least one (batch size, sequence length, MQAR pairs).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

/// The width of a binary token id: 2 or 4 bytes.
pub fn token_width(s: &str) -> Result<usize, String> {
    match s {
        "2" => Ok(2),
        "4" => Ok(4),
        _ => Err(format!("token ids are 2 or 4 bytes wide, not {s}")),
    }
}

/// A memory size: bytes, or a number with a unit (`80GiB`, `141 GB`, `512MiB`); decimal
/// units are powers of 1000, binary ones of 1024.
pub fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim());
    let x: f64 = number.parse().map_err(|_| format!("`{s}` is not a size (e.g. 80GiB)"))?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit `{unit}` in `{s}`; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")),
    };
    let bytes = x * scale;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}` is not a usable memory size"));
    }
    Ok(bytes as u64)
}

/// `NAME=VALUE` or `layers[A..B].NAME=VALUE`: a model setting replaced for one run.
pub fn parse_set(s: &str) -> Result<hyb_dsl::variant::Set, String> {
    hyb_dsl::variant::Set::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_zero_and_negative_values_are_refused() {
        for bad in ["nan", "NaN", "inf", "-inf", "-1", "0", "x"] {
            assert!(positive_finite(bad).is_err(), "{bad}");
        }
        assert_eq!(positive_finite("3e-3"), Ok(3e-3));
        assert!(non_negative_finite("nan").is_err());
        assert_eq!(non_negative_finite("0"), Ok(0.0));
        assert!(at_least_one("0").is_err() && at_least_one("-2").is_err());
        assert!(token_width("0").is_err() && token_width("3").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(byte_size("80GiB"), Ok(80 << 30));
        assert_eq!(byte_size("141 GB"), Ok(141_000_000_000));
        assert_eq!(byte_size("512MiB"), Ok(512 << 20));
        assert_eq!(byte_size("4096"), Ok(4096));
        for bad in ["", "GiB", "80 GiBs", "-1GB", "0", "nanGB", "1e400GB"] {
            assert!(byte_size(bad).is_err(), "{bad}");
        }
    }
}
