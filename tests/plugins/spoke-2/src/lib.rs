//! Spoke 2 of the fabric tests (see `tests/plugins/spoke/spoke.rs`).

const NAME: &str = "spoke-2";
const ORDER: i32 = 20;

include!("../../spoke/spoke.rs");
