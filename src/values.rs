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
}
