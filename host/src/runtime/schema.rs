//! The part of JSON Schema that extension points use to describe their input and output:
//! `type`, `properties`, `required`, `additionalProperties`, `items`, `enum`, `minimum`,
//! `maximum`, `minLength`, `maxLength`, `minItems` and `maxItems`, plus the annotations
//! `title`, `description`, `default`, `examples` and `$schema`. A schema using anything else
//! is refused at install, so a check never passes by ignoring a rule.

use serde_json::{Map, Value};

const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "title",
    "description",
    "default",
    "examples",
    "$schema",
];

const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Checks that `schema` uses only what [`validate`] enforces.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return match schema {
            Value::Bool(_) => Ok(()),
            _ => Err("a schema is a JSON object (or true / false)".to_owned()),
        };
    };
    for (keyword, value) in map {
        if !KEYWORDS.contains(&keyword.as_str()) {
            return Err(format!(
                "uses \"{keyword}\", which Keel does not check; supported are {}",
                KEYWORDS.join(", ")
            ));
        }
        match keyword.as_str() {
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(names) => names.iter().collect(),
                    other => vec![other],
                };
                if names
                    .iter()
                    .any(|n| !n.as_str().is_some_and(|n| TYPES.contains(&n)))
                {
                    return Err(format!("\"type\" is one of {}", TYPES.join(", ")));
                }
            }
            "properties" => {
                let Value::Object(properties) = value else {
                    return Err("\"properties\" is an object of schemas".to_owned());
                };
                for property in properties.values() {
                    check_schema(property)?;
                }
            }
            "items" | "additionalProperties" => check_schema(value)?,
            "required"
                if !value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string)) =>
            {
                return Err("\"required\" is a list of property names".to_owned());
            }
            "enum" if !value.is_array() => return Err("\"enum\" is a list".to_owned()),
            "minimum" | "maximum" if !value.is_number() => {
                return Err(format!("\"{keyword}\" is a number"));
            }
            "minLength" | "maxLength" | "minItems" | "maxItems" if !value.is_u64() => {
                return Err(format!("\"{keyword}\" is a whole number"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every way `value` breaks `schema`, as (JSON path, message); empty when it conforms.
pub fn validate(schema: &Value, value: &Value) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    check(schema, value, "", &mut errors);
    errors
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<(String, String)>) {
    let map = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => {
            errors.push((path.to_owned(), "is not allowed here".to_owned()));
            return;
        }
        Value::Object(map) => map,
        _ => return,
    };
    if let Some(wanted) = map.get("type") {
        let wanted: Vec<&str> = match wanted {
            Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        let actual = type_of(value);
        let fits = wanted
            .iter()
            .any(|w| *w == actual || (*w == "number" && actual == "integer"));
        if !fits {
            errors.push((
                path.to_owned(),
                format!("is {actual}, not {}", wanted.join(" or ")),
            ));
            return;
        }
    }
    if let Some(Value::Array(options)) = map.get("enum")
        && !options.contains(value)
    {
        errors.push((
            path.to_owned(),
            format!("is not one of {}", Value::Array(options.clone())),
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = map.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            errors.push((path.to_owned(), format!("is less than {min}")));
        }
        if let Some(max) = map.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            errors.push((path.to_owned(), format!("is more than {max}")));
        }
    }
    if let Value::String(text) = value {
        let chars = text.chars().count() as u64;
        bound(
            map,
            "minLength",
            "maxLength",
            chars,
            "characters",
            path,
            errors,
        );
    }
    match value {
        Value::Array(items) => {
            bound(
                map,
                "minItems",
                "maxItems",
                items.len() as u64,
                "items",
                path,
                errors,
            );
            if let Some(item_schema) = map.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(object) => check_object(map, object, path, errors),
        _ => {}
    }
}

fn bound(
    map: &Map<String, Value>,
    min_key: &str,
    max_key: &str,
    count: u64,
    unit: &str,
    path: &str,
    errors: &mut Vec<(String, String)>,
) {
    if let Some(min) = map.get(min_key).and_then(Value::as_u64)
        && count < min
    {
        errors.push((path.to_owned(), format!("has fewer than {min} {unit}")));
    }
    if let Some(max) = map.get(max_key).and_then(Value::as_u64)
        && count > max
    {
        errors.push((path.to_owned(), format!("has more than {max} {unit}")));
    }
}

fn check_object(
    map: &Map<String, Value>,
    object: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<(String, String)>,
) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    if let Some(Value::Array(required)) = map.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                errors.push((join(name), "is required".to_owned()));
            }
        }
    }
    let properties = map.get("properties").and_then(Value::as_object);
    for (key, item) in object {
        match properties.and_then(|p| p.get(key)) {
            Some(property) => check(property, item, &join(key), errors),
            None => {
                if let Some(extra) = map.get("additionalProperties") {
                    check(extra, item, &join(key), errors);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conforming_values_pass_and_breaches_are_named() {
        let schema = json!({
            "type": "object",
            "required": ["lines"],
            "additionalProperties": false,
            "properties": {
                "lines": { "type": "array", "maxItems": 2, "items": {
                    "type": "object", "required": ["price"],
                    "properties": { "price": { "type": "string", "minLength": 1 },
                                    "qty": { "type": "integer", "minimum": 1 } }
                }},
                "currency": { "enum": ["EUR", "USD"] }
            }
        });
        assert!(check_schema(&schema).is_ok());
        let good = json!({ "lines": [{ "price": "1.00", "qty": 2 }], "currency": "EUR" });
        assert!(validate(&schema, &good).is_empty());
        let bad = json!({ "lines": [{ "qty": 0 }, { "price": 5 }, { "price": "1" }], "x": 1, "currency": "GBP" });
        let errors = validate(&schema, &bad);
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert!(paths.contains(&"lines"), "{errors:?}");
        assert!(paths.contains(&"lines[0].price"), "{errors:?}");
        assert!(paths.contains(&"lines[0].qty"), "{errors:?}");
        assert!(paths.contains(&"lines[1].price"), "{errors:?}");
        assert!(paths.contains(&"x"), "{errors:?}");
        assert!(paths.contains(&"currency"), "{errors:?}");
    }

    #[test]
    fn unsupported_keywords_are_refused() {
        let error = check_schema(&json!({ "type": "string", "pattern": "^a" }))
            .expect_err("pattern is not supported");
        assert!(error.contains("pattern"));
        assert!(check_schema(&json!({ "type": "decimal" })).is_err());
        assert!(check_schema(&json!("string")).is_err());
    }
}
