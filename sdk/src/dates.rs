//! Calendar dates as plugins exchange them: ISO 8601 strings ("2026-03-31") on the wire,
//! [`NaiveDate`] inside. The clock is the host's (WASI wall clock), in UTC.

pub use chrono::{Datelike, Days, NaiveDate};

use crate::{Error, FieldErrors};

/// Today's date in UTC.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

/// A date written as `YYYY-MM-DD`; anything else is invalid, naming `field`.
pub fn parse(field: &str, text: &str) -> Result<NaiveDate, Error> {
    let well_formed = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    well_formed
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| Error::invalid(field, format!("{text:?} is not a date as YYYY-MM-DD")))
}

/// The date as `YYYY-MM-DD`.
pub fn format(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

/// The date given, or today when absent. A text that is not a date adds an error about
/// `field` to `errors` (and gives today, which the caller never keeps: `errors` fails it).
pub fn parse_or_today(errors: &mut FieldErrors, field: &str, text: Option<&str>) -> NaiveDate {
    let Some(text) = text else {
        return today();
    };
    parse(field, text).unwrap_or_else(|error| {
        // `parse` fails only with `invalid` naming `field`.
        let _ = errors.absorb(error);
        today()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_dates_in_iso_form_parse() {
        assert_eq!(
            parse("d", "2026-02-28").map(format).ok().as_deref(),
            Some("2026-02-28")
        );
        assert!(parse("d", "2026-02-30").is_err());
        assert!(parse("d", "2026-2-28").is_err());
        assert!(parse("d", "28.02.2026").is_err());
    }
}
