//! Money amounts as the policy compares them: a decimal string in major
//! units ("1500.00" euros, "12" yen) and an ISO 4217 currency code.
//!
//! Amounts are never floating point: a threshold of "1000.00" must not be
//! crossed by "999.995" through rounding. A value is kept as an integer of
//! up to 38 digits and a scale (digits after the point), and two values are
//! compared by bringing them to the same scale.

use std::cmp::Ordering;

/// Digits after the decimal point accepted (more than any currency has).
pub const MAX_SCALE: u32 = 18;
/// Digits before the decimal point accepted.
pub const MAX_INTEGER_DIGITS: usize = 18;

/// A non-negative decimal amount.
#[derive(Clone, Copy, Debug, Eq)]
pub struct Decimal {
    /// The value times 10^scale.
    mantissa: u128,
    scale: u32,
}

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    /// Parses `123`, `123.4`, `0.05`. No sign, no exponent, no separators,
    /// no leading or trailing point: what a bank's systems send, and
    /// nothing a reader could mistake.
    pub fn parse(text: &str) -> Result<Decimal, String> {
        let (int, frac) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{:?} is not a decimal amount such as 1500.00",
                clip(text, 40)
            ));
        }
        if int.len() > MAX_INTEGER_DIGITS {
            return Err(format!(
                "more than {MAX_INTEGER_DIGITS} digits before the point"
            ));
        }
        let frac = frac.unwrap_or("");
        if text.contains('.') && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!(
                "{:?} is not a decimal amount such as 1500.00",
                clip(text, 40)
            ));
        }
        if frac.len() > MAX_SCALE as usize {
            return Err(format!("more than {MAX_SCALE} digits after the point"));
        }
        // At most 36 digits: fits u128 (38 digits) with room to rescale.
        let mut mantissa: u128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa * 10 + u128::from(b - b'0');
        }
        Ok(Decimal {
            mantissa,
            scale: frac.len() as u32,
        })
    }

    fn at_scale(self, scale: u32) -> u128 {
        // scale - self.scale <= MAX_SCALE and mantissa < 10^36: no overflow.
        self.mantissa * 10u128.pow(scale - self.scale)
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        let scale = self.scale.max(other.scale);
        self.at_scale(scale).cmp(&other.at_scale(scale))
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Decimal) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let div = 10u128.pow(self.scale);
        write!(
            f,
            "{}.{:0width$}",
            self.mantissa / div,
            self.mantissa % div,
            width = self.scale as usize
        )
    }
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// An ISO 4217 alphabetic code: three uppercase ASCII letters. The list of
/// codes in force changes; the bank's systems own it, signet only refuses
/// what cannot be a code.
pub fn currency(text: &str) -> Result<String, String> {
    if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{:?} is not an ISO 4217 code such as EUR",
            clip(text, 16)
        ))
    }
}

/// An amount in a currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amount {
    pub value: Decimal,
    pub currency: String,
}

impl Amount {
    pub fn parse(value: &str, currency_code: &str) -> Result<Amount, String> {
        Ok(Amount {
            value: Decimal::parse(value)?,
            currency: currency(currency_code)?,
        })
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.value, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect(s)
    }

    #[test]
    fn compares_across_scales_without_rounding() {
        assert!(d("999.995") < d("1000"));
        assert!(d("1000.00") == d("1000"));
        assert!(d("1000.000000000000000001") > d("1000"));
        assert!(d("0.1") > d("0.09"));
        assert_eq!(d("000123.4500").to_string(), "123.4500");
        assert_eq!(d("7").to_string(), "7");
        assert_eq!(d("0.05").to_string(), "0.05");
        // The largest accepted value compares at the largest scale.
        let big = "9".repeat(MAX_INTEGER_DIGITS) + "." + &"9".repeat(MAX_SCALE as usize);
        assert!(d(&big) > d("1"));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        for bad in [
            "", ".", "1.", ".5", "-1", "+1", "1e3", "1,000", "1 000", "0x10", "1.2.3", "NaN", "١٢",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long_int = "1".repeat(MAX_INTEGER_DIGITS + 1);
        assert!(Decimal::parse(&long_int).is_err());
        let long_frac = format!("1.{}", "1".repeat(MAX_SCALE as usize + 1));
        assert!(Decimal::parse(&long_frac).is_err());
    }

    #[test]
    fn currencies_are_three_uppercase_letters() {
        assert_eq!(currency("EUR").as_deref(), Ok("EUR"));
        for bad in ["eur", "EU", "EURO", "E1R", "", "ÉUR"] {
            assert!(currency(bad).is_err(), "{bad:?} accepted");
        }
        let a = Amount::parse("12.50", "CHF").expect("amount");
        assert_eq!(a.to_string(), "12.50 CHF");
    }
}
