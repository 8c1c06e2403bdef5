//! Spoke 1 of the fabric tests (see `tests/plugins/spoke/spoke.rs`).

const NAME: &str = "spoke-1";
const ORDER: i32 = 10;

include!("../../spoke/spoke.rs");
