//! Human byte sizes (`"2GB"`, `"256MiB"`) for configuration values and reports.

/// Parses a size such as `2GB`, `512MB`, `0.5GB`, `8 GB`, `100000B`, `256MiB`.
/// Decimal units are powers of 1000 as DuckDB reads them; `KiB`/`MiB`/`GiB`/
/// `TiB` are powers of 1024. A unit is required.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let multiplier: f64 = match unit.trim() {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((number * multiplier) as u64)
}

/// Formats a byte count for people: `1.5 MiB`, `320 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("8 GB"), Some(8_000_000_000));
        assert_eq!(parse_size("0.5GB"), Some(500_000_000));
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("100000B"), Some(100_000));
    }

    #[test]
    fn sizes_without_units_or_with_percent_are_refused() {
        for bad in ["40%", "1000000", "0.5", "bogus", "GB", "-1GB", ""] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn bytes_format_for_people() {
        assert_eq!(format_bytes(320), "320 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }
}
