//! Money: an ISO 4217 currency code and an exact decimal amount, never a float.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::invalid::{Invalid, ViolationReason, clip};

/// Longest amount accepted, in characters (an exact decimal holds at most 28 digits anyway).
pub const MAX_AMOUNT_LEN: usize = 40;

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CurrencyCode([u8; 3]);

impl CurrencyCode {
    /// Accepts three upper-case ASCII letters (`USD`, `EUR`).
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(Invalid::because(
                ViolationReason::InvalidFormat,
                format!("must be an ISO 4217 code such as USD, got {:?}", clip(raw)),
            )),
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Three ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl std::fmt::Display for CurrencyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of a money value was refused, so the caller's error can name the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoneyPart {
    /// `currency_code`
    CurrencyCode,
    /// `amount`
    Amount,
}

impl MoneyPart {
    /// The field's name in `commerce.type.v1.Money`.
    pub fn field(self) -> &'static str {
        match self {
            MoneyPart::CurrencyCode => "currency_code",
            MoneyPart::Amount => "amount",
        }
    }
}

/// A refused money value: which part, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {invalid}", part.field())]
pub struct MoneyError {
    /// The part at fault.
    pub part: MoneyPart,
    /// Why.
    pub invalid: Invalid,
}

/// Parses an exact decimal: an optional `-` when `signed`, digits, and
/// optionally `.` and digits. No `+`, exponent, spaces or separators, which
/// the decimal crate would otherwise take: what one service reads must read
/// the same in every language a caller uses.
fn parse_amount(raw: &str, signed: bool) -> Result<Decimal, Invalid> {
    if raw.is_empty() {
        return Err(Invalid::empty());
    }
    if raw.len() > MAX_AMOUNT_LEN {
        return Err(Invalid::because(ViolationReason::TooLong, format!("must be at most {MAX_AMOUNT_LEN} characters")));
    }
    let digits = match raw.strip_prefix('-') {
        Some(_) if !signed => return Err(Invalid::because(ViolationReason::OutOfRange, "must not be negative")),
        Some(rest) => rest,
        None => raw,
    };
    let (whole, fraction) = digits.split_once('.').map_or((digits, None), |(w, f)| (w, Some(f)));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(Invalid::because(
            ViolationReason::InvalidFormat,
            format!("must be a decimal such as \"149.00\", got {:?}", clip(raw)),
        ));
    }
    let mut amount = Decimal::from_str_exact(raw).map_err(|_| {
        Invalid::because(
            ViolationReason::OutOfRange,
            "has more digits than an exact decimal holds (28 significant digits)",
        )
    })?;
    // "-0" is zero: one spelling of it, whoever sent it.
    if amount.is_zero() {
        amount.set_sign_positive(true);
    }
    Ok(amount)
}

/// A price paid or asked: a [`Money`] that is never negative; a free line is `"0"`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMoney", into = "RawMoney")]
pub struct Price(Money);

impl Price {
    /// Accepts a currency code and a non-negative exact decimal; the error names the part.
    pub fn parse(currency_code: &str, amount: &str) -> Result<Self, MoneyError> {
        Money::parse_with(currency_code, amount, false).map(Self)
    }

    /// The amount of a price alone (never negative), for a caller whose currency has rules of its own.
    pub fn parse_amount(amount: &str) -> Result<Decimal, Invalid> {
        parse_amount(amount, false)
    }

    /// The currency.
    pub fn currency(&self) -> CurrencyCode {
        self.0.currency
    }

    /// The currency's code, as the wire carries it.
    pub fn currency_code(&self) -> &str {
        self.0.currency_code()
    }

    /// The amount, exact, with the scale it was written with (`149.00` keeps two places).
    pub fn amount(&self) -> Decimal {
        self.0.amount
    }

    /// The amount as the wire carries it: `"149.00"`.
    pub fn amount_text(&self) -> String {
        self.0.amount_text()
    }

    /// True for a free line.
    pub fn is_free(&self) -> bool {
        self.0.amount.is_zero()
    }
}

impl std::fmt::Debug for Price {
    // As a struct of its own, whose parts it shares with `Money`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Price").field("currency", &self.0.currency).field("amount", &self.0.amount).finish()
    }
}

/// An amount of money that may be negative (a refund, a correction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMoney", into = "RawMoney")]
pub struct Money {
    currency: CurrencyCode,
    amount: Decimal,
}

impl Money {
    /// Accepts a currency code and an exact decimal, negative or not; the error names the part.
    pub fn parse(currency_code: &str, amount: &str) -> Result<Self, MoneyError> {
        Self::parse_with(currency_code, amount, true)
    }

    /// Accepts a currency code and an exact decimal, negative only when `signed`.
    fn parse_with(currency_code: &str, amount: &str, signed: bool) -> Result<Self, MoneyError> {
        let currency = CurrencyCode::parse(currency_code)
            .map_err(|invalid| MoneyError { part: MoneyPart::CurrencyCode, invalid })?;
        let amount = parse_amount(amount, signed).map_err(|invalid| MoneyError { part: MoneyPart::Amount, invalid })?;
        Ok(Self { currency, amount })
    }

    /// An amount alone, negative or not.
    pub fn parse_amount(amount: &str) -> Result<Decimal, Invalid> {
        parse_amount(amount, true)
    }

    /// The currency.
    pub fn currency(&self) -> CurrencyCode {
        self.currency
    }

    /// The currency's code, as the wire carries it.
    pub fn currency_code(&self) -> &str {
        self.currency.as_str()
    }

    /// The amount, exact.
    pub fn amount(&self) -> Decimal {
        self.amount
    }

    /// The amount as the wire carries it.
    pub fn amount_text(&self) -> String {
        self.amount.to_string()
    }
}

impl From<Price> for Money {
    fn from(price: Price) -> Self {
        price.0
    }
}

/// The wire and storage form of money (`{"currency_code": "USD", "amount": "149.00"}`).
#[derive(Serialize, Deserialize)]
struct RawMoney {
    currency_code: String,
    amount: String,
}

/// Implements the serde ([`RawMoney`]) and proto forms of a money type, both read through its `parse`.
macro_rules! money_forms {
    ($money:ident) => {
        impl TryFrom<RawMoney> for $money {
            type Error = MoneyError;
            fn try_from(raw: RawMoney) -> Result<Self, MoneyError> {
                Self::parse(&raw.currency_code, &raw.amount)
            }
        }

        impl From<$money> for RawMoney {
            fn from(money: $money) -> Self {
                Self { currency_code: money.currency_code().to_owned(), amount: money.amount_text() }
            }
        }

        impl TryFrom<&proto::commerce::r#type::v1::Money> for $money {
            type Error = MoneyError;
            fn try_from(money: &proto::commerce::r#type::v1::Money) -> Result<Self, MoneyError> {
                Self::parse(&money.currency_code, &money.amount)
            }
        }

        impl From<&$money> for proto::commerce::r#type::v1::Money {
            fn from(money: &$money) -> Self {
                Self { currency_code: money.currency_code().to_owned(), amount: money.amount_text() }
            }
        }
    };
}

money_forms!(Price);
money_forms!(Money);

impl FromStr for CurrencyCode {
    type Err = Invalid;
    fn from_str(raw: &str) -> Result<Self, Invalid> {
        Self::parse(raw)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn prices_are_exact_and_never_negative() {
        let price = Price::parse("USD", "149.00").unwrap();
        assert_eq!(price.amount_text(), "149.00", "the scale is kept");
        assert_eq!(price.currency().as_str(), "USD");
        assert!(Price::parse("USD", "0").unwrap().is_free());
        assert_eq!(Price::parse("USD", "-0").unwrap_err().part, MoneyPart::Amount);
        assert_eq!(Price::parse("USD", "-5").unwrap_err().invalid.reason(), "must not be negative");
        for bad in ["", "1e3", "+1", "1_000", " 1", "1.", ".5", "1,00", "NaN", "0x10", &"9".repeat(29)] {
            assert_eq!(Price::parse("USD", bad).unwrap_err().part, MoneyPart::Amount, "{bad:?}");
        }
        for bad in ["usd", "US", "USDD", "U$D", ""] {
            assert_eq!(Price::parse(bad, "1").unwrap_err().part, MoneyPart::CurrencyCode, "{bad:?}");
        }
    }

    #[test]
    fn money_may_be_negative_and_zero_has_one_sign() {
        assert_eq!(Money::parse("EUR", "-12.50").unwrap().amount_text(), "-12.50");
        assert_eq!(Money::parse("EUR", "-0.00").unwrap().amount_text(), "0.00");
        assert!(Money::parse("EUR", "--1").is_err());
    }

    #[test]
    fn serde_and_proto_go_through_the_parser() {
        let price: Price = serde_json::from_str(r#"{"currency_code":"USD","amount":"49.99"}"#).unwrap();
        assert_eq!(serde_json::to_string(&price).unwrap(), r#"{"currency_code":"USD","amount":"49.99"}"#);
        assert!(serde_json::from_str::<Price>(r#"{"currency_code":"USD","amount":"-1"}"#).is_err());
        let wire = proto::commerce::r#type::v1::Money::from(&price);
        assert_eq!(Price::try_from(&wire), Ok(price));
    }

    proptest! {
        /// A price written once reads back the same, in value and in text.
        #[test]
        fn prices_round_trip(whole in "[0-9]{1,14}", fraction in proptest::option::of("[0-9]{1,8}")) {
            let raw = match &fraction { Some(f) => format!("{whole}.{f}"), None => whole.clone() };
            let price = Price::parse("USD", &raw).unwrap();
            prop_assert_eq!(Price::parse("USD", &price.amount_text()), Ok(price));
            prop_assert_eq!(price.amount(), Decimal::from_str(&raw).unwrap());
        }
    }
}
