//! `regex`'s API as far as skiff's dependencies use it, on regex-lite.
pub use regex_lite::{escape, Captures, Error, Match, Regex, RegexBuilder};
