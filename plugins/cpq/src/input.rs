//! Reading request bodies: a JSON object's fields into typed values, every mistake collected
//! under its path (`lines[0].components[1].quantity`) so that one answer names them all.

use keel_sdk::{Error, FieldErrors};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::amount::INPUT_DECIMALS_MAX;

/// Parses a request body as JSON; an empty or malformed body is invalid, naming `body`.
pub fn parse_body(body: &[u8]) -> Result<Value, Error> {
    if body.is_empty() {
        return Err(Error::invalid("body", "is required: a JSON object"));
    }
    serde_json::from_slice(body)
        .map_err(|error| Error::invalid("body", format!("is not valid JSON: {error}")))
}

/// Parses an optional body: empty or `null` is `{}`.
pub fn parse_optional_body(body: &[u8]) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    match parse_body(body)? {
        Value::Null => Ok(Value::Object(Map::new())),
        value => Ok(value),
    }
}

/// The body as an object, or an error naming `body`.
pub fn root(value: &Value) -> Result<Object<'_>, Error> {
    match value {
        Value::Object(map) => Ok(Object { map, path: "" }),
        _ => Err(Error::invalid("body", "is a JSON object")),
    }
}

/// One JSON object of the input and where it sits in the body.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

/// Joins a path and a field name.
pub fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

impl<'a> Object<'a> {
    /// `value` as an object at `path` (`""` for the body itself), or an error naming it.
    pub fn at(value: &'a Value, path: &'a str, errors: &mut FieldErrors) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self { map, path }),
            _ => {
                errors.add(
                    if path.is_empty() { "body" } else { path },
                    "is a JSON object",
                );
                None
            }
        }
    }

    pub fn path(&self, name: &str) -> String {
        join(self.path, name)
    }

    /// Names every field that is not one of `known`.
    pub fn only(&self, known: &[&str], errors: &mut FieldErrors) {
        for name in self.map.keys() {
            if !known.contains(&name.as_str()) {
                errors.add(
                    self.path(name),
                    format!("is not a field here; expected one of {}", known.join(", ")),
                );
            }
        }
    }

    /// Whether the field is present and not null.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether the field is present as `null` (a PATCH clearing it).
    pub fn is_null(&self, name: &str) -> bool {
        matches!(self.map.get(name), Some(Value::Null))
    }

    /// The field's value; absent and null are the same.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    /// A required, non-blank text of at most `chars_max` characters, trimmed.
    pub fn text(&self, name: &str, chars_max: usize, errors: &mut FieldErrors) -> Option<String> {
        match self.get(name) {
            None => {
                errors.add(self.path(name), "is required");
                None
            }
            Some(Value::String(text)) if text.trim().is_empty() => {
                errors.add(self.path(name), "must not be blank");
                None
            }
            Some(_) => self.optional_text(name, chars_max, errors),
        }
    }

    /// An optional text of at most `chars_max` characters, trimmed; blank counts as absent.
    pub fn optional_text(
        &self,
        name: &str,
        chars_max: usize,
        errors: &mut FieldErrors,
    ) -> Option<String> {
        match self.get(name)? {
            Value::String(text) => {
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    None
                } else if trimmed.chars().count() > chars_max {
                    errors.add(
                        self.path(name),
                        format!("has at most {chars_max} characters"),
                    );
                    None
                } else {
                    Some(trimmed.to_owned())
                }
            }
            _ => {
                errors.add(self.path(name), "is text");
                None
            }
        }
    }

    /// A required decimal (see [`decimal`]).
    pub fn decimal(&self, name: &str, errors: &mut FieldErrors) -> Option<Decimal> {
        if !self.has(name) {
            errors.add(self.path(name), "is required");
            return None;
        }
        self.optional_decimal(name, errors)
    }

    pub fn optional_decimal(&self, name: &str, errors: &mut FieldErrors) -> Option<Decimal> {
        let value = self.get(name)?;
        match decimal(value) {
            Ok(number) => Some(number),
            Err(message) => {
                errors.add(self.path(name), message);
                None
            }
        }
    }

    /// A decimal within `[min, max]`, naming the bounds when it is not.
    pub fn decimal_within(
        &self,
        name: &str,
        min: Decimal,
        max: Decimal,
        required: bool,
        errors: &mut FieldErrors,
    ) -> Option<Decimal> {
        let number = if required {
            self.decimal(name, errors)?
        } else {
            self.optional_decimal(name, errors)?
        };
        if number < min || number > max {
            errors.add(
                self.path(name),
                format!("is between {min} and {max}, not {}", number.normalize()),
            );
            return None;
        }
        Some(number)
    }

    pub fn optional_bool(&self, name: &str, errors: &mut FieldErrors) -> Option<bool> {
        match self.get(name)? {
            Value::Bool(flag) => Some(*flag),
            _ => {
                errors.add(self.path(name), "is true or false");
                None
            }
        }
    }

    pub fn integer(&self, name: &str, errors: &mut FieldErrors) -> Option<i64> {
        match self.get(name) {
            Some(Value::Number(number)) if number.is_i64() => number.as_i64(),
            Some(_) => {
                errors.add(self.path(name), "is a whole number");
                None
            }
            None => {
                errors.add(self.path(name), "is required");
                None
            }
        }
    }

    /// An optional list of at most `items_max` items.
    pub fn optional_array(
        &self,
        name: &str,
        items_max: usize,
        errors: &mut FieldErrors,
    ) -> Option<&'a Vec<Value>> {
        match self.get(name)? {
            Value::Array(items) if items.len() <= items_max => Some(items),
            Value::Array(_) => {
                errors.add(self.path(name), format!("has at most {items_max} items"));
                None
            }
            _ => {
                errors.add(self.path(name), "is a list");
                None
            }
        }
    }
}

/// A decimal as the API takes it: a decimal string ("12.50") or a JSON integer, with at most
/// [`INPUT_DECIMALS_MAX`] places. Fractional JSON numbers are refused: they are binary
/// floating point in most clients, and amounts must stay exact.
pub fn decimal(value: &Value) -> Result<Decimal, String> {
    let number = match value {
        Value::String(text) => text
            .trim()
            .parse::<Decimal>()
            .map_err(|_| format!("{text:?} is not a decimal number"))?,
        Value::Number(number) => match number.as_i64() {
            Some(whole) => Decimal::from(whole),
            None => {
                return Err(format!(
                    "write {number} as a decimal string (\"{number}\") to keep it exact"
                ));
            }
        },
        _ => return Err("is a decimal number as a string, e.g. \"12.50\"".to_owned()),
    };
    if number.normalize().scale() > INPUT_DECIMALS_MAX {
        return Err(format!("has at most {INPUT_DECIMALS_MAX} decimal places"));
    }
    Ok(number)
}

/// A code used in paths (SKU, price book code): 1 to `chars_max` letters, digits, `-`, `_`
/// and `.`, so it never needs escaping in a URL.
pub fn is_code(text: &str, chars_max: usize) -> bool {
    !text.is_empty()
        && text.len() <= chars_max
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(errors: FieldErrors) -> Vec<String> {
        match errors.finish() {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn decimals_are_strings_or_integers_never_floats() {
        assert_eq!(
            decimal(&json!("12.50")),
            Ok("12.50".parse().expect("a decimal"))
        );
        assert_eq!(decimal(&json!(3)), Ok(Decimal::from(3)));
        assert!(decimal(&json!(2.5)).is_err());
        assert!(decimal(&json!("1.1234567")).is_err());
        assert!(decimal(&json!("twelve")).is_err());
        assert!(decimal(&json!(true)).is_err());
    }

    #[test]
    fn every_mistake_is_named_by_its_path() {
        let body = json!({ "name": "  ", "price": 1.5, "extra": 1, "count": "x" });
        let mut errors = FieldErrors::new();
        let object = Object::at(&body, "lines[2]", &mut errors).expect("an object");
        object.only(&["name", "price", "count", "sku"], &mut errors);
        assert_eq!(object.text("sku", 10, &mut errors), None);
        assert_eq!(object.text("name", 10, &mut errors), None);
        assert_eq!(object.decimal("price", &mut errors), None);
        assert_eq!(object.integer("count", &mut errors), None);
        assert_eq!(
            fields(errors),
            [
                "lines[2].extra",
                "lines[2].sku",
                "lines[2].name",
                "lines[2].price",
                "lines[2].count"
            ]
        );
    }

    #[test]
    fn codes_are_path_safe() {
        assert!(is_code("LAPTOP-KIT_2.0", 64));
        assert!(!is_code("a/b", 64));
        assert!(!is_code("", 64));
        assert!(!is_code("with space", 64));
    }
}
