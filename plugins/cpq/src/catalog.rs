//! The product catalog: products, and bundles of products with quantity bounds per component
//! and configuration rules ("SSD-2TB requires DOCK", "X excludes Z"). The checks of a bundle
//! definition and of a configured quote line are pure, so they are tested natively.

use std::collections::{BTreeSet, HashMap};

use keel_sdk::router::Params;
use keel_sdk::storage::Collection;
use keel_sdk::{Error, FieldErrors, Request, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::amount;
use crate::input::{self, Object};

pub const PRODUCTS: Collection<Product> = Collection::new("products");

/// Longest SKU; SKUs appear in paths, so they are letters, digits, `-`, `_` and `.`.
pub const SKU_CHARS_MAX: usize = 64;
pub const NAME_CHARS_MAX: usize = 200;
pub const UNIT_CHARS_MAX: usize = 20;
pub const DESCRIPTION_CHARS_MAX: usize = 4_000;
/// Most components in one bundle: a configurable kit, not a bill of materials.
pub const COMPONENTS_MAX: usize = 50;
/// Most configuration rules of one bundle.
pub const RULES_MAX: usize = 100;
/// Largest quantity of one component per bundle; with `amount::QUANTITY_MAX` lines it keeps
/// component totals within exact decimal range.
pub const COMPONENT_QUANTITY_MAX: i64 = 1_000;
/// The unit of a product that names none.
const DEFAULT_UNIT: &str = "each";
/// Products listed per page, by default and at most.
const LIST_ITEMS_DEFAULT: usize = 100;
const LIST_ITEMS_MAX: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Product,
    Bundle,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub kind: Kind,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Percent, e.g. 19.
    #[serde(with = "amount::canonical")]
    pub tax_rate: Decimal,
    pub active: bool,
    /// A bundle's components, in the order quotes show them; empty for a product.
    #[serde(default)]
    pub components: Vec<Component>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A product inside a bundle. Quantities are per bundle: a line of 3 kits with 2 of a
/// component holds 6 of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub sku: String,
    /// Every configuration includes it.
    pub required: bool,
    /// The least quantity when chosen.
    #[serde(with = "amount::canonical")]
    pub min_quantity: Decimal,
    #[serde(with = "amount::canonical")]
    pub max_quantity: Decimal,
    /// What a line without explicit components gets; 0 leaves an optional component out.
    #[serde(with = "amount::canonical")]
    pub default_quantity: Decimal,
}

/// A configuration rule between two components of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rule {
    Requires {
        if_sku: String,
        requires_sku: String,
    },
    Excludes {
        if_sku: String,
        excludes_sku: String,
    },
}

impl Rule {
    fn skus(&self) -> (&str, &str) {
        match self {
            Self::Requires {
                if_sku,
                requires_sku,
            } => (if_sku, requires_sku),
            Self::Excludes {
                if_sku,
                excludes_sku,
            } => (if_sku, excludes_sku),
        }
    }
}

/// A component as a quote line chooses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub sku: String,
    pub quantity: Decimal,
}

/// Checks a configured bundle line: every chosen component belongs to the bundle, at most
/// once, within its bounds; required ones are there; the rules hold. Without `chosen`, the
/// bundle's default configuration is used. Problems are added under `path` (the line's path);
/// returns the valid choices in the bundle's order.
pub fn configure(
    bundle: &Product,
    chosen: Option<&[Chosen]>,
    path: &str,
    errors: &mut FieldErrors,
) -> Vec<Chosen> {
    let defaults: Vec<Chosen>;
    let chosen = match chosen {
        Some(chosen) => chosen,
        None => {
            defaults = bundle
                .components
                .iter()
                .filter(|c| !c.default_quantity.is_zero())
                .map(|c| Chosen {
                    sku: c.sku.clone(),
                    quantity: c.default_quantity,
                })
                .collect();
            &defaults
        }
    };
    let mut valid: HashMap<&str, Decimal> = HashMap::new();
    let mut seen = BTreeSet::new();
    for (j, choice) in chosen.iter().enumerate() {
        let at = format!("{path}.components[{j}]");
        let Some(component) = bundle.components.iter().find(|c| c.sku == choice.sku) else {
            errors.add(
                format!("{at}.sku"),
                format!("{} is not a component of bundle {}", choice.sku, bundle.sku),
            );
            continue;
        };
        if !seen.insert(choice.sku.as_str()) {
            errors.add(
                format!("{at}.sku"),
                format!("{} is chosen twice", choice.sku),
            );
            continue;
        }
        if choice.quantity <= Decimal::ZERO {
            errors.add(format!("{at}.quantity"), "is greater than zero");
        } else if choice.quantity > component.max_quantity {
            errors.add(
                format!("{at}.quantity"),
                format!(
                    "component {} allows at most {} per bundle",
                    component.sku,
                    amount::text(component.max_quantity)
                ),
            );
        } else if choice.quantity < component.min_quantity {
            errors.add(
                format!("{at}.quantity"),
                format!(
                    "component {} needs at least {} per bundle",
                    component.sku,
                    amount::text(component.min_quantity)
                ),
            );
        } else {
            valid.insert(component.sku.as_str(), choice.quantity);
        }
    }
    let components_path = format!("{path}.components");
    for component in bundle.components.iter().filter(|c| c.required) {
        if !seen.contains(component.sku.as_str()) {
            errors.add(
                components_path.clone(),
                format!("component {} is required", component.sku),
            );
        }
    }
    for rule in &bundle.rules {
        match rule {
            Rule::Requires {
                if_sku,
                requires_sku,
            } if seen.contains(if_sku.as_str()) && !seen.contains(requires_sku.as_str()) => {
                errors.add(
                    components_path.clone(),
                    format!(
                        "bundle {} requires {requires_sku} when {if_sku} is chosen",
                        bundle.sku
                    ),
                );
            }
            Rule::Excludes {
                if_sku,
                excludes_sku,
            } if seen.contains(if_sku.as_str()) && seen.contains(excludes_sku.as_str()) => {
                errors.add(
                    components_path.clone(),
                    format!("{if_sku} and {excludes_sku} exclude each other"),
                );
            }
            _ => {}
        }
    }
    bundle
        .components
        .iter()
        .filter_map(|c| {
            valid.get(c.sku.as_str()).map(|quantity| Chosen {
                sku: c.sku.clone(),
                quantity: *quantity,
            })
        })
        .collect()
}

/// Checks a product's bundle structure against the catalog (`kind_of` answers the kind of an
/// existing SKU): components exist, are plain products, appear once, have sensible bounds;
/// rules name components; the default configuration obeys the rules.
pub fn check_structure(
    product: &Product,
    kind_of: &dyn Fn(&str) -> Option<Kind>,
    errors: &mut FieldErrors,
) {
    if product.kind == Kind::Product {
        if !product.components.is_empty() {
            errors.add("components", "only a bundle has components");
        }
        if !product.rules.is_empty() {
            errors.add("rules", "only a bundle has configuration rules");
        }
        return;
    }
    if product.components.is_empty() {
        errors.add("components", "a bundle has at least one component");
    }
    let mut seen = BTreeSet::new();
    for (j, component) in product.components.iter().enumerate() {
        let at = format!("components[{j}]");
        if component.sku == product.sku {
            errors.add(format!("{at}.sku"), "a bundle does not contain itself");
        } else if !seen.insert(component.sku.as_str()) {
            errors.add(
                format!("{at}.sku"),
                format!("{} is listed twice", component.sku),
            );
        } else {
            match kind_of(&component.sku) {
                None => errors.add(
                    format!("{at}.sku"),
                    format!("there is no product {} in the catalog", component.sku),
                ),
                Some(Kind::Bundle) => errors.add(
                    format!("{at}.sku"),
                    format!("{} is a bundle; bundles do not nest", component.sku),
                ),
                Some(Kind::Product) => {}
            }
        }
        if component.min_quantity <= Decimal::ZERO {
            errors.add(format!("{at}.min_quantity"), "is greater than zero");
        }
        if component.max_quantity < component.min_quantity {
            errors.add(
                format!("{at}.max_quantity"),
                format!(
                    "is at least min_quantity ({})",
                    amount::text(component.min_quantity)
                ),
            );
        }
        let default = component.default_quantity;
        if component.required && default < component.min_quantity {
            errors.add(
                format!("{at}.default_quantity"),
                "a required component is included by default: at least min_quantity",
            );
        } else if !default.is_zero()
            && (default < component.min_quantity || default > component.max_quantity)
        {
            errors.add(
                format!("{at}.default_quantity"),
                "is 0 (left out) or between min_quantity and max_quantity",
            );
        }
    }
    for (j, rule) in product.rules.iter().enumerate() {
        let (first, second) = rule.skus();
        for (name, sku) in [("if_sku", first), (rule_field(rule), second)] {
            if !product.components.iter().any(|c| c.sku == sku) {
                errors.add(
                    format!("rules[{j}].{name}"),
                    format!("{sku} is not a component of bundle {}", product.sku),
                );
            }
        }
        if first == second {
            errors.add(
                format!("rules[{j}]"),
                "a rule relates two different components",
            );
        }
    }
    if errors.is_empty() {
        let mut broken = FieldErrors::new();
        configure(product, None, "default", &mut broken);
        if let Err(Error::Invalid(list)) = broken.finish() {
            for problem in list {
                errors.add(
                    "components",
                    format!("the default configuration fails: {}", problem.message),
                );
            }
        }
    }
}

fn rule_field(rule: &Rule) -> &'static str {
    match rule {
        Rule::Requires { .. } => "requires_sku",
        Rule::Excludes { .. } => "excludes_sku",
    }
}

const PRODUCT_FIELDS: &[&str] = &[
    "sku",
    "name",
    "kind",
    "unit",
    "description",
    "tax_rate",
    "active",
    "components",
    "rules",
];

/// Reads a new product from a `POST /products` body; the structure is checked separately.
pub fn read_new(body: &Value) -> Result<Product, Error> {
    let object = input::root(body)?;
    let mut errors = FieldErrors::new();
    object.only(PRODUCT_FIELDS, &mut errors);
    let sku = object.text("sku", SKU_CHARS_MAX, &mut errors);
    if let Some(sku) = &sku
        && !input::is_code(sku, SKU_CHARS_MAX)
    {
        errors.add(
            "sku",
            "is letters, digits, '-', '_' and '.', without spaces",
        );
    }
    let kind = match object
        .optional_text("kind", NAME_CHARS_MAX, &mut errors)
        .as_deref()
    {
        None | Some("product") => Kind::Product,
        Some("bundle") => Kind::Bundle,
        Some(other) => {
            errors.add("kind", format!("is product or bundle, not {other:?}"));
            Kind::Product
        }
    };
    let name = object.text("name", NAME_CHARS_MAX, &mut errors);
    let tax_rate = object.decimal_within(
        "tax_rate",
        Decimal::ZERO,
        Decimal::ONE_HUNDRED,
        true,
        &mut errors,
    );
    let mut product = Product {
        sku: sku.unwrap_or_default(),
        name: name.unwrap_or_default(),
        kind,
        unit: DEFAULT_UNIT.to_owned(),
        description: None,
        tax_rate: tax_rate.unwrap_or_default(),
        active: true,
        components: Vec::new(),
        rules: Vec::new(),
    };
    read_changes(object, &mut product, &mut errors);
    errors.finish()?;
    Ok(product)
}

/// Applies a `PATCH /products/{sku}` body to a product; SKU and kind never change.
pub fn apply_patch(body: &Value, product: &mut Product) -> Result<(), Error> {
    let object = input::root(body)?;
    let mut errors = FieldErrors::new();
    object.only(PRODUCT_FIELDS, &mut errors);
    for fixed in ["sku", "kind"] {
        if object.has(fixed) {
            errors.add(fixed, "cannot be changed; create another product");
        }
    }
    if object.has("name")
        && let Some(name) = object.text("name", NAME_CHARS_MAX, &mut errors)
    {
        product.name = name;
    }
    if object.has("tax_rate")
        && let Some(rate) = object.decimal_within(
            "tax_rate",
            Decimal::ZERO,
            Decimal::ONE_HUNDRED,
            true,
            &mut errors,
        )
    {
        product.tax_rate = rate;
    }
    if object.is_null("description") {
        product.description = None;
    }
    read_changes(object, product, &mut errors);
    errors.finish()
}

/// The fields a new product and a patch share.
fn read_changes(object: Object<'_>, product: &mut Product, errors: &mut FieldErrors) {
    if let Some(unit) = object.optional_text("unit", UNIT_CHARS_MAX, errors) {
        product.unit = unit;
    }
    if let Some(description) = object.optional_text("description", DESCRIPTION_CHARS_MAX, errors) {
        product.description = Some(description);
    }
    if let Some(active) = object.optional_bool("active", errors) {
        product.active = active;
    }
    if let Some(items) = object.optional_array("components", COMPONENTS_MAX, errors) {
        product.components = items
            .iter()
            .enumerate()
            .filter_map(|(j, item)| read_component(item, &format!("components[{j}]"), errors))
            .collect();
    }
    if let Some(items) = object.optional_array("rules", RULES_MAX, errors) {
        product.rules = items
            .iter()
            .enumerate()
            .filter_map(|(j, item)| read_rule(item, &format!("rules[{j}]"), errors))
            .collect();
    }
}

fn read_component(value: &Value, path: &str, errors: &mut FieldErrors) -> Option<Component> {
    let object = Object::at(value, path, errors)?;
    object.only(
        &[
            "sku",
            "required",
            "min_quantity",
            "max_quantity",
            "default_quantity",
        ],
        errors,
    );
    let sku = object.text("sku", SKU_CHARS_MAX, errors);
    let required = object.optional_bool("required", errors).unwrap_or(false);
    let bound = Decimal::from(COMPONENT_QUANTITY_MAX);
    let quantity = |name: &str, errors: &mut FieldErrors| {
        object.decimal_within(name, Decimal::ZERO, bound, false, errors)
    };
    let min_quantity = quantity("min_quantity", errors).unwrap_or(Decimal::ONE);
    let max_quantity = quantity("max_quantity", errors).unwrap_or(min_quantity);
    let default_quantity = quantity("default_quantity", errors).unwrap_or(if required {
        min_quantity
    } else {
        Decimal::ZERO
    });
    Some(Component {
        sku: sku?,
        required,
        min_quantity,
        max_quantity,
        default_quantity,
    })
}

fn read_rule(value: &Value, path: &str, errors: &mut FieldErrors) -> Option<Rule> {
    let object = Object::at(value, path, errors)?;
    object.only(&["if_sku", "requires_sku", "excludes_sku"], errors);
    let if_sku = object.text("if_sku", SKU_CHARS_MAX, errors);
    match (object.has("requires_sku"), object.has("excludes_sku")) {
        (true, false) => Some(Rule::Requires {
            if_sku: if_sku?,
            requires_sku: object.text("requires_sku", SKU_CHARS_MAX, errors)?,
        }),
        (false, true) => Some(Rule::Excludes {
            if_sku: if_sku?,
            excludes_sku: object.text("excludes_sku", SKU_CHARS_MAX, errors)?,
        }),
        _ => {
            errors.add(path, "has exactly one of requires_sku and excludes_sku");
            None
        }
    }
}

/// The product with this SKU, or a 404.
pub fn load(sku: &str) -> Result<Product, Error> {
    PRODUCTS
        .get(sku)?
        .ok_or_else(|| Error::NotFound(format!("there is no product {sku}")))
}

fn check_against_catalog(product: &Product) -> Result<(), Error> {
    let mut kinds = HashMap::new();
    for component in &product.components {
        if let Some(found) = PRODUCTS.get(&component.sku)? {
            kinds.insert(component.sku.clone(), found.kind);
        }
    }
    let mut errors = FieldErrors::new();
    check_structure(product, &|sku| kinds.get(sku).copied(), &mut errors);
    errors.finish()
}

pub fn create(request: &Request, _: &Params) -> Result<Response, Error> {
    crate::require(crate::CATALOG_WRITE, "changing the catalog")?;
    let product = read_new(&input::parse_body(&request.body)?)?;
    if PRODUCTS.get(&product.sku)?.is_some() {
        return Err(Error::Conflict(format!(
            "product {} exists already",
            product.sku
        )));
    }
    check_against_catalog(&product)?;
    PRODUCTS.put(&product.sku, &product)?;
    Ok(Response::json(201, &product))
}

pub fn update(request: &Request, params: &Params) -> Result<Response, Error> {
    crate::require(crate::CATALOG_WRITE, "changing the catalog")?;
    let mut product = load(params.get("sku")?)?;
    apply_patch(&input::parse_body(&request.body)?, &mut product)?;
    check_against_catalog(&product)?;
    PRODUCTS.put(&product.sku, &product)?;
    Ok(Response::json(200, &product))
}

pub fn show(_: &Request, params: &Params) -> Result<Response, Error> {
    crate::require_catalog_read()?;
    Ok(Response::json(200, &load(params.get("sku")?)?))
}

/// `GET /products?kind=&active=&after=&limit=`, in SKU order.
pub fn list(request: &Request, _: &Params) -> Result<Response, Error> {
    crate::require_catalog_read()?;
    let mut errors = FieldErrors::new();
    let kind = match request.query_param("kind").as_deref() {
        None | Some("") => None,
        Some("product") => Some(Kind::Product),
        Some("bundle") => Some(Kind::Bundle),
        Some(_) => {
            errors.add("kind", "is product or bundle");
            None
        }
    };
    let active = match request.query_param("active").as_deref() {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            errors.add("active", "is true or false");
            None
        }
    };
    let limit = crate::page_limit(request, LIST_ITEMS_DEFAULT, LIST_ITEMS_MAX, &mut errors);
    errors.finish()?;
    let after = request.query_param("after");
    let mut products: Vec<Product> = PRODUCTS
        .all()?
        .into_iter()
        .map(|(_, product)| product)
        .filter(|p| after.as_deref().is_none_or(|after| p.sku.as_str() > after))
        .filter(|p| kind.is_none_or(|kind| p.kind == kind))
        .filter(|p| active.is_none_or(|active| p.active == active))
        .collect();
    let next = (products.len() > limit).then(|| products[limit - 1].sku.clone());
    products.truncate(limit);
    Ok(Response::json(
        200,
        &json!({ "products": products, "next": next }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect("a decimal")
    }

    fn component(sku: &str, required: bool, min: &str, max: &str, default: &str) -> Component {
        Component {
            sku: sku.to_owned(),
            required,
            min_quantity: d(min),
            max_quantity: d(max),
            default_quantity: d(default),
        }
    }

    fn laptop_kit() -> Product {
        Product {
            sku: "LAPTOP-KIT".to_owned(),
            name: "Laptop kit".to_owned(),
            kind: Kind::Bundle,
            unit: "each".to_owned(),
            description: None,
            tax_rate: d("19"),
            active: true,
            components: vec![
                component("LAPTOP", true, "1", "1", "1"),
                component("SSD-2TB", false, "1", "1", "0"),
                component("DOCK", false, "1", "1", "0"),
                component("RAM-16", false, "1", "4", "0"),
                component("BAG", false, "1", "1", "0"),
                component("SLEEVE", false, "1", "1", "0"),
            ],
            rules: vec![
                Rule::Requires {
                    if_sku: "SSD-2TB".to_owned(),
                    requires_sku: "DOCK".to_owned(),
                },
                Rule::Excludes {
                    if_sku: "BAG".to_owned(),
                    excludes_sku: "SLEEVE".to_owned(),
                },
            ],
        }
    }

    fn chosen(list: &[(&str, &str)]) -> Vec<Chosen> {
        list.iter()
            .map(|(sku, quantity)| Chosen {
                sku: (*sku).to_owned(),
                quantity: d(quantity),
            })
            .collect()
    }

    fn problems(bundle: &Product, choice: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut errors = FieldErrors::new();
        configure(bundle, Some(&chosen(choice)), "lines[0]", &mut errors);
        match errors.finish() {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| (e.field, e.message)).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_valid_configuration_comes_back_in_bundle_order() {
        let mut errors = FieldErrors::new();
        let configured = configure(
            &laptop_kit(),
            Some(&chosen(&[("DOCK", "1"), ("LAPTOP", "1"), ("SSD-2TB", "1")])),
            "lines[0]",
            &mut errors,
        );
        assert!(errors.is_empty());
        let skus: Vec<&str> = configured.iter().map(|c| c.sku.as_str()).collect();
        assert_eq!(skus, ["LAPTOP", "SSD-2TB", "DOCK"]);
    }

    #[test]
    fn without_components_a_line_gets_the_default_configuration() {
        let mut errors = FieldErrors::new();
        let configured = configure(&laptop_kit(), None, "lines[0]", &mut errors);
        assert!(errors.is_empty());
        assert_eq!(configured, chosen(&[("LAPTOP", "1")]));
    }

    #[test]
    fn each_rule_is_explained() {
        let kit = laptop_kit();
        assert_eq!(
            problems(&kit, &[("LAPTOP", "1"), ("SSD-2TB", "1")]),
            [(
                "lines[0].components".to_owned(),
                "bundle LAPTOP-KIT requires DOCK when SSD-2TB is chosen".to_owned()
            )]
        );
        assert_eq!(
            problems(&kit, &[("LAPTOP", "1"), ("RAM-16", "5")]),
            [(
                "lines[0].components[1].quantity".to_owned(),
                "component RAM-16 allows at most 4 per bundle".to_owned()
            )]
        );
        assert_eq!(
            problems(&kit, &[("DOCK", "1")]),
            [(
                "lines[0].components".to_owned(),
                "component LAPTOP is required".to_owned()
            )]
        );
        assert_eq!(
            problems(&kit, &[("LAPTOP", "1"), ("BAG", "1"), ("SLEEVE", "1")]),
            [(
                "lines[0].components".to_owned(),
                "BAG and SLEEVE exclude each other".to_owned()
            )]
        );
        assert_eq!(
            problems(&kit, &[("LAPTOP", "1"), ("UNKNOWN", "1")]),
            [(
                "lines[0].components[1].sku".to_owned(),
                "UNKNOWN is not a component of bundle LAPTOP-KIT".to_owned()
            )]
        );
        assert_eq!(
            problems(&kit, &[("LAPTOP", "1"), ("LAPTOP", "1")]),
            [(
                "lines[0].components[1].sku".to_owned(),
                "LAPTOP is chosen twice".to_owned()
            )]
        );
        assert_eq!(
            problems(&kit, &[("LAPTOP", "0")]),
            [(
                "lines[0].components[0].quantity".to_owned(),
                "is greater than zero".to_owned()
            )]
        );
    }

    #[test]
    fn a_bundle_definition_is_checked_against_the_catalog() {
        let kinds = |sku: &str| match sku {
            "LAPTOP" | "SSD-2TB" | "DOCK" | "RAM-16" | "BAG" | "SLEEVE" => Some(Kind::Product),
            "OTHER-KIT" => Some(Kind::Bundle),
            _ => None,
        };
        let mut errors = FieldErrors::new();
        check_structure(&laptop_kit(), &kinds, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        let mut broken = laptop_kit();
        broken
            .components
            .push(component("OTHER-KIT", false, "1", "1", "0"));
        broken
            .components
            .push(component("GHOST", false, "2", "1", "0"));
        broken.rules.push(Rule::Requires {
            if_sku: "LAPTOP".to_owned(),
            requires_sku: "MOUSE".to_owned(),
        });
        let mut errors = FieldErrors::new();
        check_structure(&broken, &kinds, &mut errors);
        let fields: Vec<String> = match errors.finish() {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        };
        assert_eq!(
            fields,
            [
                "components[6].sku",
                "components[7].sku",
                "components[7].max_quantity",
                "rules[2].requires_sku"
            ]
        );
    }

    #[test]
    fn a_default_configuration_that_breaks_a_rule_is_refused() {
        let mut kit = laptop_kit();
        kit.components[1].default_quantity = d("1");
        let mut errors = FieldErrors::new();
        check_structure(&kit, &|_| Some(Kind::Product), &mut errors);
        match errors.finish() {
            Err(Error::Invalid(list)) => {
                assert_eq!(list[0].field, "components");
                assert!(list[0].message.contains("requires DOCK"), "{list:?}");
            }
            other => panic!("expected a refusal: {other:?}"),
        }
    }

    #[test]
    fn products_are_read_with_defaults_and_precise_errors() {
        let product = read_new(&json!({ "sku": "DOCK", "name": "Dock", "tax_rate": "19" }))
            .expect("a product");
        assert_eq!(product.kind, Kind::Product);
        assert_eq!(product.unit, "each");
        assert!(product.active);
        let refused = read_new(&json!({ "sku": "a b", "kind": "service", "tax_rate": 120 }));
        let fields: Vec<String> = match refused {
            Err(Error::Invalid(list)) => list.into_iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        };
        assert_eq!(fields, ["sku", "kind", "name", "tax_rate"]);
    }
}
