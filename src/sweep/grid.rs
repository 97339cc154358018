//! A sweep's grid: axes such as `heads=4,8,12` or `layers=pattern("H{6}"),pattern("(M{3}H){2}")`
//! (values are source text, split at the commas outside brackets and strings), combined
//! as their product, or zipped with `--pairs`.

use hyb_dsl::variant::Set;

/// One axis: a setting and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub values: Vec<Set>,
}

impl Axis {
    /// Parses `TARGET=V1,V2,…`.
    pub fn parse(spec: &str) -> Result<Axis, String> {
        let (target, values) = spec.split_once('=').ok_or_else(|| format!("`{spec}` is not NAME=V1,V2,…"))?;
        let values = split_values(values)?;
        if values.is_empty() {
            return Err(format!("`{spec}` gives no values"));
        }
        let values = values.iter().map(|v| Set::parse(&format!("{target}={v}"))).collect::<Result<Vec<_>, _>>()?;
        Ok(Axis { values })
    }
}

/// The comma-separated values of `text`, commas inside `()`, `[]`, `{}` and strings kept.
fn split_values(text: &str) -> Result<Vec<String>, String> {
    let (mut values, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' | '[' | '{' if !quoted => depth += 1,
            ')' | ']' | '}' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                values.push(std::mem::take(&mut current).trim().to_string());
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("`{text}` closes a bracket it never opened"));
        }
        current.push(c);
    }
    if quoted || depth != 0 {
        return Err(format!("`{text}` leaves a string or bracket open"));
    }
    values.push(current.trim().to_string());
    if values.iter().any(String::is_empty) {
        return Err(format!("`{text}` has an empty value"));
    }
    Ok(values)
}

/// The grid's points, each the settings it replaces: the product of the axes, or with
/// `pairs` their values zipped (the axes must then have as many values). More than `max`
/// points is refused before anything runs.
pub fn points(axes: &[Axis], pairs: bool, max: usize) -> Result<Vec<Vec<Set>>, String> {
    if axes.is_empty() {
        return Err("a sweep needs at least one --grid axis".into());
    }
    let points: Vec<Vec<Set>> = if pairs {
        let n = axes[0].values.len();
        if let Some(a) = axes.iter().find(|a| a.values.len() != n) {
            return Err(format!(
                "--pairs zips axes of equal length: {} has {} values, {} has {n}",
                a.values[0].target(),
                a.values.len(),
                axes[0].values[0].target()
            ));
        }
        (0..n).map(|i| axes.iter().map(|a| a.values[i].clone()).collect()).collect()
    } else {
        let count = axes.iter().try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
        if count.is_none_or(|n| n > max) {
            let n = count.map_or("too many".to_string(), |n| n.to_string());
            return Err(format!("the grid has {n} points, above --max-points {max}"));
        }
        axes.iter().fold(vec![Vec::new()], |acc, a| {
            acc.iter().flat_map(|p| a.values.iter().map(move |v| [p.clone(), vec![v.clone()]].concat())).collect()
        })
    };
    if points.len() > max {
        return Err(format!("the grid has {} points, above --max-points {max}", points.len()));
    }
    let mut targets: Vec<String> = axes.iter().map(|a| a.values[0].target()).collect();
    targets.sort();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("`{}` is swept by two axes", w[0]));
    }
    Ok(points)
}

/// `heads=4 layers=pattern("H{6}")`: a point for people.
pub fn label(point: &[Set]) -> String {
    point.iter().map(Set::to_string).collect::<Vec<_>>().join(" ")
}

/// A directory name for a point: its settings made filename-safe, with a digest of them
/// so that two points never share one.
pub fn slug(point: &[Set]) -> String {
    use sha2::Digest;
    let text = label(point);
    let mut safe: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '=' { c } else { '_' })
        .collect::<String>()
        .split('_')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    safe.truncate(60);
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!("{safe}-{}", digest.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_outside_brackets_and_strings() {
        let a = Axis::parse(r#"layers=pattern("H{6}"),pattern("(M{3}H){2}", H = x)"#).unwrap();
        let v: Vec<&str> = a.values.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(v, [r#"pattern("H{6}")"#, r#"pattern("(M{3}H){2}", H = x)"#]);
        assert!(Axis::parse("heads=4,,8").unwrap_err().contains("empty value"));
        assert!(Axis::parse("heads=(4").unwrap_err().contains("open"));
        assert!(Axis::parse("heads").unwrap_err().contains("NAME=V1"));
    }

    #[test]
    fn grids_are_products_or_zips_within_the_budget() {
        let axes = [Axis::parse("heads=4,8").unwrap(), Axis::parse("layers[0..2].ssm_heads=1,2,3").unwrap()];
        let p = points(&axes, false, 10).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(label(&p[1]), "heads=4 layers[0..2].ssm_heads=2");
        assert!(points(&axes, false, 5).unwrap_err().contains("6 points, above --max-points 5"));
        assert!(points(&axes, true, 10).unwrap_err().contains("equal length"));
        let zipped = [Axis::parse("heads=4,8").unwrap(), Axis::parse("d=32,64").unwrap()];
        assert_eq!(label(&points(&zipped, true, 10).unwrap()[1]), "heads=8 d=64");
        let twice = [Axis::parse("heads=4").unwrap(), Axis::parse("heads=8").unwrap()];
        assert!(points(&twice, false, 10).unwrap_err().contains("swept by two axes"));
        assert_ne!(slug(&p[0]), slug(&p[1]));
        assert!(slug(&p[0]).starts_with("heads=4_layers_0..2_.ssm_heads=1-"), "{}", slug(&p[0]));
    }
}
