//! A component for the world `acme:gadgets/gadget`: it imports an interface Keel does not
//! offer and exports none of a plugin's functions.

#![allow(
    unsafe_code,
    reason = "the generated canonical-ABI glue is unsafe by nature"
)]

wit_bindgen::generate!({ world: "gadget", path: "wit" });

struct Gadget;

impl Guest for Gadget {
    fn hello() -> String {
        format!("spun {} times", acme::gadgets::widgets::spin(3))
    }
}

export!(Gadget);
