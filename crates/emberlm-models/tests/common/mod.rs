//! Helpers shared by the test crates (each uses some of them).
#![allow(dead_code)]

pub mod schemas;
pub mod tools;
