//! Python's `repr`/`str` of a float, for rendering numbers the way the seed's Python code
//! prints them (an `exe_ans` of 1393.0 becomes the target " 1393.0", a JSON number 94.0 in an
//! `answer` column becomes "94.0").
//!
//! Python prints the shortest digit string that round-trips (as Rust does), but chooses the
//! layout differently: with the decimal exponent `e` of the first significant digit, fixed
//! notation is used when `-4 <= e < 16` (always with a fractional part, "94.0"), otherwise
//! scientific notation with a signed exponent of at least two digits ("1e-05", "1.5e+16").

/// Formats `v` exactly as Python's `repr(float)` does.
pub fn python_float_repr(v: f64) -> String {
    if v.is_nan() {
        return "nan".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if v == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddddde<exp>".
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let n = digits.len() as i32;
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp + 1;
            if n <= int_len {
                let zeros = "0".repeat((int_len - n) as usize);
                format!("{sign}{digits}{zeros}.0")
            } else {
                let (i, f) = digits.split_at(int_len as usize);
                format!("{sign}{i}.{f}")
            }
        } else {
            let zeros = "0".repeat((-exp - 1) as usize);
            format!("{sign}0.{zeros}{digits}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::python_float_repr;

    #[test]
    fn matches_python_repr() {
        // Pairs printed by CPython 3 (`repr(v)`).
        let cases: [(f64, &str); 14] = [
            (94.0, "94.0"),
            (0.00327, "0.00327"),
            (1e-05, "1e-05"),
            (1393.0, "1393.0"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (123456789012345.0, "123456789012345.0"),
            (0.0001, "0.0001"),
            (-0.5, "-0.5"),
            (3.6e13, "36000000000000.0"),
            (2.5e-07, "2.5e-07"),
            (1063076.5, "1063076.5"),
            (-0.0, "-0.0"),
            (0.34719, "0.34719"),
        ];
        for (v, want) in cases {
            assert_eq!(python_float_repr(v), want, "value {v:e}");
        }
    }
}
