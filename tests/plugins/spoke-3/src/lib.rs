//! Spoke 3 of the fabric tests (see `tests/plugins/spoke/spoke.rs`).

const NAME: &str = "spoke-3";
const ORDER: i32 = 30;

include!("../../spoke/spoke.rs");
