//! Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD,
//! the schedule Falcon-H1 was trained with), or constant.

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Schedule {
    Constant,
    /// Cosine from the peak to `min_ratio · peak` over the steps after warmup.
    Cosine {
        min_ratio: f64,
    },
    /// Constant after warmup, then linear decay to `min_ratio · peak` over the last
    /// `decay_fraction` of the run.
    Wsd {
        decay_fraction: f64,
        min_ratio: f64,
    },
}

/// The learning rate at `step` (0-based) of a `total`-step run.
pub fn learning_rate(schedule: Schedule, peak: f64, warmup: u64, step: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let after = (step - warmup) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    match schedule {
        Schedule::Constant => peak,
        Schedule::Cosine { min_ratio } => {
            let p = (after / span).min(1.0);
            peak * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        }
        Schedule::Wsd { decay_fraction, min_ratio } => {
            let decay_steps = (total as f64 * decay_fraction).max(1.0);
            let decay_start = total as f64 - decay_steps;
            if (step as f64) < decay_start {
                peak
            } else {
                let p = ((step as f64 - decay_start) / decay_steps).min(1.0);
                peak * (1.0 - (1.0 - min_ratio) * p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        assert_eq!(learning_rate(Schedule::Constant, 1.0, 4, 0, 100), 0.25);
        assert_eq!(learning_rate(Schedule::Constant, 1.0, 4, 3, 100), 1.0);
        let cos = Schedule::Cosine { min_ratio: 0.1 };
        assert!((learning_rate(cos, 1.0, 0, 0, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(cos, 1.0, 0, 50, 100) - 0.55).abs() < 1e-12);
        assert!((learning_rate(cos, 1.0, 0, 100, 100) - 0.1).abs() < 1e-12);
        let wsd = Schedule::Wsd { decay_fraction: 0.2, min_ratio: 0.0 };
        assert_eq!(learning_rate(wsd, 2.0, 0, 79, 100), 2.0);
        assert!((learning_rate(wsd, 2.0, 0, 90, 100) - 1.0).abs() < 1e-12);
    }
}
