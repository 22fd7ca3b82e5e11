//! Number fields that still load when the API changes how it writes them: a numeric string (`"3.5"`, as
//! Python APIs write decimals) or, for whole numbers, a float with no fraction (`3.0`). Anything else (a
//! non-numeric string, a fraction where a whole number is expected, null) still fails the item. Timestamps are
//! not lenient: a watermark built on a guess would be wrong.

use std::fmt;

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// A JSON number, or a string holding one.
pub fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(NumberVisitor)
}

/// A whole JSON number (also written as `3.0`), or a string holding one.
pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntegerVisitor)
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number (or a string holding one)")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<f64, E> {
        match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
        }
    }
}

struct IntegerVisitor;

impl Visitor<'_> for IntegerVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number (or a string holding one)")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
        // Within ±2^53 every whole f64 is exact.
        if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
        }
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<i64, E> {
        let v = v.trim();
        match v.parse::<i64>() {
            Ok(n) => Ok(n),
            Err(_) => match v.parse::<f64>() {
                Ok(n) => self.visit_f64(n),
                Err(_) => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct N {
        #[serde(deserialize_with = "super::number")]
        n: f64,
        #[serde(deserialize_with = "super::integer")]
        i: i64,
    }

    fn read(json: &str) -> Result<(f64, i64), String> {
        serde_json::from_str::<N>(json).map(|x| (x.n, x.i)).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_load_as_numbers_numeric_strings_and_whole_floats() {
        assert_eq!(read(r#"{"n": 1.5, "i": 3}"#), Ok((1.5, 3)));
        assert_eq!(read(r#"{"n": 2, "i": 3.0}"#), Ok((2.0, 3)));
        assert_eq!(read(r#"{"n": "12.25", "i": "7"}"#), Ok((12.25, 7)));
        assert_eq!(read(r#"{"n": " 1e2 ", "i": "8.0"}"#), Ok((100.0, 8)));
        assert_eq!(read(r#"{"n": -0.5, "i": -4}"#), Ok((-0.5, -4)));
    }

    #[test]
    fn anything_else_still_fails_naming_what_was_expected() {
        for bad in [
            r#"{"n": "abc", "i": 1}"#,
            r#"{"n": "NaN", "i": 1}"#,
            r#"{"n": "inf", "i": 1}"#,
            r#"{"n": null, "i": 1}"#,
            r#"{"n": true, "i": 1}"#,
            r#"{"n": 1, "i": 1.5}"#,
            r#"{"n": 1, "i": "1.5"}"#,
            r#"{"n": 1, "i": 1e300}"#,
            r#"{"n": 1, "i": 18446744073709551615}"#,
            r#"{"n": 1, "i": null}"#,
        ] {
            let error = read(bad).expect_err(bad);
            assert!(error.contains("number"), "{bad}: {error}");
        }
    }
}
