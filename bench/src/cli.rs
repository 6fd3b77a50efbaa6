//! Command-line helpers shared by the drivers (`suite`, `stalls`).

/// A comma-separated list of names from `allowed`, without repeats, in the order given.
pub fn parse_list(name: &str, v: &str, allowed: &[&str]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !allowed.contains(&item) {
            return Err(format!(
                "{name}: unknown {item:?}; expected some of {}",
                allowed.join(",")
            ));
        }
        if !out.iter().any(|s| s == item) {
            out.push(item.to_string());
        }
    }
    if out.is_empty() {
        return Err(format!("{name}: empty list"));
    }
    Ok(out)
}

/// Seconds from `min` to 600.
pub fn parse_secs(name: &str, v: &str, min: f64) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= min && s <= 600.0 => Ok(s),
        _ => Err(format!("{name} {v:?}: expected seconds from {min} to 600")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_seconds() {
        let all = ["a", "b", "c"];
        assert_eq!(parse_list("--x", "b, a,b", &all).unwrap(), ["b", "a"]);
        assert!(parse_list("--x", "d", &all).is_err());
        assert!(parse_list("--x", ",", &all).is_err());
        assert_eq!(parse_secs("--s", "1.5", 0.1), Ok(1.5));
        assert!(parse_secs("--s", "0.05", 0.1).is_err());
        assert!(parse_secs("--s", "601", 0.1).is_err());
        assert!(parse_secs("--s", "NaN", 0.1).is_err());
    }
}
