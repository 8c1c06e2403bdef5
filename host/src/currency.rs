//! Currencies: the ISO 4217 list with the number of decimal places each allows.

use crate::db::Database;
use crate::on_conn;

/// A currency the ledger accepts: its ISO 4217 code and how many minor units (decimal places)
/// an amount in it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency {
    pub code: &'static str,
    pub name: &'static str,
    pub minor_units: u32,
}

/// ISO 4217 currencies in current use (and a few recently replaced ones that old books hold).
pub const ISO_4217: &[Currency] = &[
    c("AED", "UAE Dirham", 2),
    c("AFN", "Afghani", 2),
    c("ALL", "Lek", 2),
    c("AMD", "Armenian Dram", 2),
    c("ANG", "Netherlands Antillean Guilder", 2),
    c("AOA", "Kwanza", 2),
    c("ARS", "Argentine Peso", 2),
    c("AUD", "Australian Dollar", 2),
    c("AWG", "Aruban Florin", 2),
    c("AZN", "Azerbaijan Manat", 2),
    c("BAM", "Convertible Mark", 2),
    c("BBD", "Barbados Dollar", 2),
    c("BDT", "Taka", 2),
    c("BGN", "Bulgarian Lev", 2),
    c("BHD", "Bahraini Dinar", 3),
    c("BIF", "Burundi Franc", 0),
    c("BMD", "Bermudian Dollar", 2),
    c("BND", "Brunei Dollar", 2),
    c("BOB", "Boliviano", 2),
    c("BRL", "Brazilian Real", 2),
    c("BSD", "Bahamian Dollar", 2),
    c("BTN", "Ngultrum", 2),
    c("BWP", "Pula", 2),
    c("BYN", "Belarusian Ruble", 2),
    c("BZD", "Belize Dollar", 2),
    c("CAD", "Canadian Dollar", 2),
    c("CDF", "Congolese Franc", 2),
    c("CHF", "Swiss Franc", 2),
    c("CLF", "Unidad de Fomento", 4),
    c("CLP", "Chilean Peso", 0),
    c("CNY", "Yuan Renminbi", 2),
    c("COP", "Colombian Peso", 2),
    c("CRC", "Costa Rican Colon", 2),
    c("CUP", "Cuban Peso", 2),
    c("CVE", "Cabo Verde Escudo", 2),
    c("CZK", "Czech Koruna", 2),
    c("DJF", "Djibouti Franc", 0),
    c("DKK", "Danish Krone", 2),
    c("DOP", "Dominican Peso", 2),
    c("DZD", "Algerian Dinar", 2),
    c("EGP", "Egyptian Pound", 2),
    c("ERN", "Nakfa", 2),
    c("ETB", "Ethiopian Birr", 2),
    c("EUR", "Euro", 2),
    c("FJD", "Fiji Dollar", 2),
    c("FKP", "Falkland Islands Pound", 2),
    c("GBP", "Pound Sterling", 2),
    c("GEL", "Lari", 2),
    c("GHS", "Ghana Cedi", 2),
    c("GIP", "Gibraltar Pound", 2),
    c("GMD", "Dalasi", 2),
    c("GNF", "Guinean Franc", 0),
    c("GTQ", "Quetzal", 2),
    c("GYD", "Guyana Dollar", 2),
    c("HKD", "Hong Kong Dollar", 2),
    c("HNL", "Lempira", 2),
    c("HTG", "Gourde", 2),
    c("HUF", "Forint", 2),
    c("IDR", "Rupiah", 2),
    c("ILS", "New Israeli Sheqel", 2),
    c("INR", "Indian Rupee", 2),
    c("IQD", "Iraqi Dinar", 3),
    c("IRR", "Iranian Rial", 2),
    c("ISK", "Iceland Krona", 0),
    c("JMD", "Jamaican Dollar", 2),
    c("JOD", "Jordanian Dinar", 3),
    c("JPY", "Yen", 0),
    c("KES", "Kenyan Shilling", 2),
    c("KGS", "Som", 2),
    c("KHR", "Riel", 2),
    c("KMF", "Comorian Franc", 0),
    c("KPW", "North Korean Won", 2),
    c("KRW", "Won", 0),
    c("KWD", "Kuwaiti Dinar", 3),
    c("KYD", "Cayman Islands Dollar", 2),
    c("KZT", "Tenge", 2),
    c("LAK", "Lao Kip", 2),
    c("LBP", "Lebanese Pound", 2),
    c("LKR", "Sri Lanka Rupee", 2),
    c("LRD", "Liberian Dollar", 2),
    c("LSL", "Loti", 2),
    c("LYD", "Libyan Dinar", 3),
    c("MAD", "Moroccan Dirham", 2),
    c("MDL", "Moldovan Leu", 2),
    c("MGA", "Malagasy Ariary", 2),
    c("MKD", "Denar", 2),
    c("MMK", "Kyat", 2),
    c("MNT", "Tugrik", 2),
    c("MOP", "Pataca", 2),
    c("MRU", "Ouguiya", 2),
    c("MUR", "Mauritius Rupee", 2),
    c("MVR", "Rufiyaa", 2),
    c("MWK", "Malawi Kwacha", 2),
    c("MXN", "Mexican Peso", 2),
    c("MYR", "Malaysian Ringgit", 2),
    c("MZN", "Mozambique Metical", 2),
    c("NAD", "Namibia Dollar", 2),
    c("NGN", "Naira", 2),
    c("NIO", "Cordoba Oro", 2),
    c("NOK", "Norwegian Krone", 2),
    c("NPR", "Nepalese Rupee", 2),
    c("NZD", "New Zealand Dollar", 2),
    c("OMR", "Rial Omani", 3),
    c("PAB", "Balboa", 2),
    c("PEN", "Sol", 2),
    c("PGK", "Kina", 2),
    c("PHP", "Philippine Peso", 2),
    c("PKR", "Pakistan Rupee", 2),
    c("PLN", "Zloty", 2),
    c("PYG", "Guarani", 0),
    c("QAR", "Qatari Rial", 2),
    c("RON", "Romanian Leu", 2),
    c("RSD", "Serbian Dinar", 2),
    c("RUB", "Russian Ruble", 2),
    c("RWF", "Rwanda Franc", 0),
    c("SAR", "Saudi Riyal", 2),
    c("SBD", "Solomon Islands Dollar", 2),
    c("SCR", "Seychelles Rupee", 2),
    c("SDG", "Sudanese Pound", 2),
    c("SEK", "Swedish Krona", 2),
    c("SGD", "Singapore Dollar", 2),
    c("SHP", "Saint Helena Pound", 2),
    c("SLE", "Leone", 2),
    c("SOS", "Somali Shilling", 2),
    c("SRD", "Surinam Dollar", 2),
    c("SSP", "South Sudanese Pound", 2),
    c("STN", "Dobra", 2),
    c("SVC", "El Salvador Colon", 2),
    c("SYP", "Syrian Pound", 2),
    c("SZL", "Lilangeni", 2),
    c("THB", "Baht", 2),
    c("TJS", "Somoni", 2),
    c("TMT", "Turkmenistan New Manat", 2),
    c("TND", "Tunisian Dinar", 3),
    c("TOP", "Pa'anga", 2),
    c("TRY", "Turkish Lira", 2),
    c("TTD", "Trinidad and Tobago Dollar", 2),
    c("TWD", "New Taiwan Dollar", 2),
    c("TZS", "Tanzanian Shilling", 2),
    c("UAH", "Hryvnia", 2),
    c("UGX", "Uganda Shilling", 0),
    c("USD", "US Dollar", 2),
    c("UYU", "Peso Uruguayo", 2),
    c("UYW", "Unidad Previsional", 4),
    c("UZS", "Uzbekistan Sum", 2),
    c("VES", "Bolivar Soberano", 2),
    c("VND", "Dong", 0),
    c("VUV", "Vatu", 0),
    c("WST", "Tala", 2),
    c("XAF", "CFA Franc BEAC", 0),
    c("XCD", "East Caribbean Dollar", 2),
    c("XCG", "Caribbean Guilder", 2),
    c("XOF", "CFA Franc BCEAO", 0),
    c("XPF", "CFP Franc", 0),
    c("YER", "Yemeni Rial", 2),
    c("ZAR", "Rand", 2),
    c("ZMW", "Zambian Kwacha", 2),
    c("ZWG", "Zimbabwe Gold", 2),
];

const fn c(code: &'static str, name: &'static str, minor_units: u32) -> Currency {
    Currency {
        code,
        name,
        minor_units,
    }
}

/// The currency with this ISO code, if Keel knows it.
pub fn lookup(code: &str) -> Option<&'static Currency> {
    ISO_4217
        .binary_search_by(|currency| currency.code.cmp(code))
        .ok()
        .map(|index| &ISO_4217[index])
}

/// Writes the currency list into the database so that foreign keys can refer to it.
pub(crate) async fn seed(db: &Database) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO currencies (code, name, minor_units) VALUES {} ON CONFLICT (code) DO NOTHING",
        db.backend().values_list(ISO_4217.len(), 3)
    );
    let mut tx = db.begin_write().await?;
    on_conn!(&mut tx, conn => {
        let mut query = sqlx::query(&sql);
        for currency in ISO_4217 {
            query = query
                .bind(currency.code)
                .bind(currency.name)
                .bind(i64::from(currency.minor_units));
        }
        query.execute(&mut *conn).await?;
    });
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_list_is_sorted_so_lookup_can_bisect_it() {
        assert!(ISO_4217.windows(2).all(|pair| pair[0].code < pair[1].code));
    }

    #[test]
    fn lookup_finds_known_currencies_and_their_decimal_places() {
        assert_eq!(lookup("JPY").map(|c| c.minor_units), Some(0));
        assert_eq!(lookup("KWD").map(|c| c.minor_units), Some(3));
        assert_eq!(lookup("EUR").map(|c| c.minor_units), Some(2));
        assert_eq!(lookup("XXX"), None);
        assert_eq!(lookup("eur"), None);
    }
}
