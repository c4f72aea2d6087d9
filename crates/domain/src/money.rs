//! Exact money. Amounts travel as decimal strings and live as `Decimal`;
//! the currency's ISO 4217 minor unit bounds the scale. No floats anywhere.

use std::{fmt, str::FromStr};

use rust_decimal::Decimal;

use crate::InputError;

/// An ISO 4217 currency this bank supports, with its minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    minor_unit: u32,
}

/// Supported currencies and their ISO 4217 minor units. Deliberately a closed
/// list: an unknown code is refused rather than guessed at two decimals.
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PLN", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Looks up an upper-case ISO 4217 code.
    pub fn from_code(code: &str) -> Result<Self, InputError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, minor_unit)| Currency { code, minor_unit })
            .ok_or_else(|| InputError::new("currency_code", "must be a supported ISO 4217 code such as USD"))
    }

    /// Every supported currency.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES.iter().map(|&(code, minor_unit)| Currency { code, minor_unit })
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn minor_unit(&self) -> u32 {
        self.minor_unit
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// Parses a client-supplied amount strictly: digits, an optional dot and at
/// most `currency.minor_unit()` decimals; > 0 and <= `max`. Rejects signs,
/// exponents, NaN, whitespace and anything `Decimal` would round.
pub fn parse_amount(field: &str, text: &str, currency: Currency, max: Decimal) -> Result<Decimal, InputError> {
    let bad = |why: &str| InputError::new(field, why);
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int_part) || frac_part.is_some_and(|f| !digits(f)) {
        return Err(bad("must be a positive decimal such as \"10.50\""));
    }
    // One way to write each amount: "01.00" is not "1.00" to every reader
    // (octal, padding), so it is refused rather than guessed at.
    if int_part.len() > 1 && int_part.starts_with('0') {
        return Err(bad("must not start with a leading zero (write \"1.00\", not \"01.00\")"));
    }
    // Bound the length before parsing so a 40-digit amount is a clear error,
    // not an overflow.
    if int_part.trim_start_matches('0').len() > 15 {
        return Err(bad("is larger than the maximum amount"));
    }
    let scale = frac_part.map_or(0, str::len) as u32;
    if scale > currency.minor_unit() {
        return Err(bad(&format!("{} allows at most {} decimal places", currency.code(), currency.minor_unit())));
    }
    let amount = Decimal::from_str(text).map_err(|_| bad("is not a valid decimal"))?;
    if amount <= Decimal::ZERO {
        return Err(bad("must be greater than zero"));
    }
    if amount > max {
        return Err(bad(&format!("must not exceed {max}")));
    }
    Ok(amount)
}

/// An amount in a currency, already validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub currency: Currency,
    pub amount: Decimal,
}

impl Money {
    pub fn new(currency: Currency, amount: Decimal) -> Self {
        Self { currency, amount }
    }

    pub fn zero(currency: Currency) -> Self {
        Self::new(currency, Decimal::ZERO)
    }

    /// The amount rendered with exactly the currency's minor unit ("10.50").
    pub fn amount_string(&self) -> String {
        format_amount(self.amount, self.currency)
    }
}

/// Renders an amount at the currency's scale ("100" USD → "100.00").
pub fn format_amount(amount: Decimal, currency: Currency) -> String {
    at_scale(amount, currency).to_string()
}

/// The same value carried at the currency's scale, so that a message built
/// from it reads "50.00" for USD even when storage kept "50.000".
pub fn at_scale(amount: Decimal, currency: Currency) -> Decimal {
    let mut a = amount;
    a.rescale(currency.minor_unit());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    fn max() -> Decimal {
        Decimal::from(1_000_000_000)
    }

    #[test]
    fn accepts_plain_amounts_within_the_minor_unit() {
        assert_eq!(parse_amount("a", "10.50", usd(), max()).unwrap().to_string(), "10.50");
        assert_eq!(parse_amount("a", "7", usd(), max()).unwrap(), Decimal::from(7));
        assert_eq!(parse_amount("a", "0.50", usd(), max()).unwrap().to_string(), "0.50");
        let jpy = Currency::from_code("JPY").unwrap();
        assert!(parse_amount("a", "500", jpy, max()).is_ok());
        assert!(parse_amount("a", "5.0", jpy, max()).is_err());
        let kwd = Currency::from_code("KWD").unwrap();
        assert!(parse_amount("a", "1.125", kwd, max()).is_ok());
    }

    #[test]
    fn refuses_hostile_amounts() {
        for bad in [
            "",
            "0",
            "0.00",
            "-1",
            "+1",
            "1e3",
            "NaN",
            "inf",
            " 1",
            "1 ",
            "1.",
            ".5",
            "0.001",
            "1,5",
            "0x10",
            "１",
            "1.2.3",
            "1_000",
            "01.00",
            "00.50",
            "007",
            "1234567890123456789012345678901234567890",
        ] {
            assert!(parse_amount("amount", bad, usd(), max()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_amounts_over_the_maximum() {
        assert!(parse_amount("a", "1000000000.01", usd(), max()).is_err());
        assert!(parse_amount("a", "1000000000.00", usd(), max()).is_ok());
    }

    #[test]
    fn unknown_currencies_are_refused() {
        for code in ["", "usd", "XXX", "US", "USDD", "BTC"] {
            assert!(Currency::from_code(code).is_err(), "{code} accepted");
        }
    }

    #[test]
    fn formats_at_the_currency_scale() {
        assert_eq!(format_amount(Decimal::from(100), usd()), "100.00");
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(format_amount(Decimal::from(100), jpy), "100");
    }

    proptest! {
        #[test]
        fn any_valid_cents_amount_round_trips(cents in 1u64..100_000_000_000u64) {
            let text = format!("{}.{:02}", cents / 100, cents % 100);
            let parsed = parse_amount("a", &text, usd(), max()).unwrap();
            prop_assert_eq!(format_amount(parsed, usd()), text);
        }

        #[test]
        fn arbitrary_strings_never_panic_and_accepted_ones_are_positive(s in "\\PC{0,48}") {
            if let Ok(v) = parse_amount("a", &s, usd(), max()) {
                prop_assert!(v > Decimal::ZERO && v <= max());
                prop_assert!(v.scale() <= 2);
            }
        }
    }
}
