//! Value parsers shared by the drivers' clap command lines (`suite`, `stalls`).

/// A comma-separated list of names, taken as one option value (`--scenarios c100,idle`): the
/// names in the order given, without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl List {
    /// The list of `names` (for defaults).
    pub fn of(names: &[&str]) -> List {
        List(names.iter().map(|s| s.to_string()).collect())
    }

    fn parse(v: &str, allowed: impl Fn(&str) -> bool) -> Result<List, String> {
        let mut out: Vec<String> = Vec::new();
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !allowed(item) {
                return Err(format!("unknown {item:?}"));
            }
            if !out.iter().any(|s| s == item) {
                out.push(item.to_string());
            }
        }
        if out.is_empty() {
            return Err("empty list".to_string());
        }
        Ok(List(out))
    }
}

/// Comma-separated, as on the command line (clap shows defaults with it).
impl std::fmt::Display for List {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// A value parser for a [`List`] of names from `allowed`.
pub fn list_of(
    allowed: &'static [&'static str],
) -> impl Fn(&str) -> Result<List, String> + Clone + Send + Sync + 'static {
    move |v| {
        List::parse(v, |item| allowed.contains(&item))
            .map_err(|e| format!("{e}; expected some of {}", allowed.join(",")))
    }
}

/// A value parser for a [`List`] of any plain names (ASCII letters, digits, `_` and `-`).
pub fn list_of_names(v: &str) -> Result<List, String> {
    for name in v.split(',').map(str::trim) {
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if name.is_empty() || !plain {
            return Err(format!("bad name {name:?}"));
        }
    }
    List::parse(v, |_| true)
}

/// A value parser for seconds from `min` to `max`, fractions allowed.
pub fn secs(min: f64, max: f64) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync {
    move |v| match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= min && s <= max => Ok(s),
        _ => Err(format!("expected seconds from {min} to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_seconds() {
        let list = list_of(&["a", "b", "c"]);
        assert_eq!(list("b, a,b").unwrap().0, ["b", "a"]);
        assert!(list("d").is_err());
        assert!(list(",").is_err());
        assert_eq!(list_of_names("x-1,y_2,x-1").unwrap().0, ["x-1", "y_2"]);
        assert!(list_of_names("a,,b").is_err());
        assert!(list_of_names("a/b").is_err());
        let secs = secs(0.1, 600.0);
        assert_eq!(secs("1.5"), Ok(1.5));
        assert!(secs("0.05").is_err());
        assert!(secs("601").is_err());
        assert!(secs("NaN").is_err());
    }
}
