//! A spanned YAML tree: every node and every mapping key keeps its line and column.
//!
//! Parsing goes through serde-saphyr with a [`Budget`](serde_saphyr::Budget) (depth, size,
//! node and alias limits), so hostile input fails fast with a located error.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// 1-based line and column (0:0 when unknown), in file `file`: 0 is the manifest itself,
/// others index the files it brought in (`include:`, `extends: {file:}`), see [`Node::set_file`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub file: u16,
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub fn at(line: u32, column: u32) -> Pos {
        Pos { file: 0, line, column }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// What a node is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar as text (strings, numbers, booleans), as compose reads `KEY: 1` or `KEY: true`.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Marks every position of the tree as being in file `file`.
    pub fn set_file(&mut self, file: u16) {
        self.pos.file = file;
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.set_file(file)),
            Value::Map(m) => m.iter_mut().for_each(|(k, v)| {
                k.set_file(file);
                v.set_file(file);
            }),
            _ => {}
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Str(v.to_string())))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Str(v.to_string())))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Str(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            out.push(n);
        }
        Ok(Value::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<Node>()? {
            let v = map.next_value::<Node>()?;
            out.push((k, v));
        }
        Ok(Value::Map(out))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        Ok(Node { value: s.value, pos: Pos::at(s.referenced.line() as u32, s.referenced.column() as u32) })
    }
}

/// The parse limits: a compose file is small and shallow.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest manifest file, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of mappings and lists.
    pub max_depth: usize,
    /// Most YAML nodes (after alias expansion).
    pub max_nodes: usize,
    /// Most aliases (`*name`) and anchors.
    pub max_aliases: usize,
    /// Most events replayed by alias expansion in total (the billion-laughs guard).
    pub max_replayed_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 32,
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_replayed_events: 20_000,
        }
    }
}

/// A YAML error: where and why.
#[derive(Clone, Debug)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document into a spanned tree within `limits`.
pub fn parse(src: &str, limits: &Limits) -> Result<Node, YamlError> {
    if src.len() > limits.max_bytes {
        return Err(YamlError {
            pos: Pos::at(1, 1),
            message: format!("the manifest is {} bytes, more than the limit of {} bytes", src.len(), limits.max_bytes),
        });
    }
    let budget = serde_saphyr::budget! {
        max_reader_input_bytes: Some(limits.max_bytes),
        max_events: limits.max_nodes * 2,
        max_aliases: limits.max_aliases,
        max_anchors: limits.max_aliases,
        max_recorded_anchor_events: limits.max_replayed_events,
        max_recorded_anchor_bytes: limits.max_bytes * 4,
        max_depth: limits.max_depth,
        max_documents: 1,
        max_nodes: limits.max_nodes,
        max_total_scalar_bytes: limits.max_bytes * 4,
        max_merge_keys: limits.max_aliases,
        flow_nesting_limit: limits.max_depth,
    };
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = limits.max_replayed_events;
    alias_limits.max_replay_stack_depth = 16;
    alias_limits.max_alias_expansions_per_anchor = limits.max_aliases;
    let options = serde_saphyr::options! {
        budget: budget,
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
        alias_limits: alias_limits,
        strict_booleans: true,
    };
    match serde_saphyr::from_str_with_options::<Option<Node>>(src, options) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Ok(Node { value: Value::Null, pos: Pos::at(1, 1) }),
        Err(e) => {
            let pos = e.location().map(|l| Pos::at(l.line() as u32, l.column() as u32)).unwrap_or_default();
            let message = friendly(error_message(&e), limits);
            if message.contains("tab") {
                if let Some(pos) = tab_near(src, pos) {
                    return Err(YamlError { pos, message: format!("{message} (YAML indents with spaces only)") });
                }
            }
            Err(YamlError { pos, message })
        }
    }
}

fn error_message(e: &serde_saphyr::Error) -> String {
    let s = e.to_string();
    // serde-saphyr may append a source snippet; keep the first line, without a trailing location.
    let mut m = s.lines().next().unwrap_or("invalid YAML").trim();
    m = m.strip_prefix("error: ").unwrap_or(m);
    if let Some(rest) = m.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(": ") {
            m = after;
        }
    }
    m = m.split(", set DuplicateKeyPolicy").next().unwrap_or(m);
    m.to_string()
}

/// Says which limit a hostile (or broken) file hit, in words.
fn friendly(m: String, limits: &Limits) -> String {
    let Some(what) = m.strip_prefix("budget breached: ") else {
        if m.contains("recursion limit") {
            return format!("nesting too deep (more than {} levels)", limits.max_depth);
        }
        return m;
    };
    let kind = what.split([' ', '{']).next().unwrap_or(what);
    match kind {
        "Depth" => format!("nesting too deep (more than {} levels)", limits.max_depth),
        "RecordedAnchorEvents" | "RecordedAnchorBytes" | "Aliases" | "Anchors" | "AliasAnchorRatio" => format!(
            "aliases expand to too much data (a YAML alias bomb?): the limits are {} anchors/aliases and {} expanded nodes",
            limits.max_aliases, limits.max_replayed_events
        ),
        "Nodes" | "Events" => format!("too many YAML nodes (more than {})", limits.max_nodes),
        "Documents" => "only one YAML document is allowed (remove the `---` separators)".to_string(),
        _ => format!("the manifest exceeds a parse limit ({what})"),
    }
}

/// Where the tab a tab error is about really is: the parser reports the start of the scalar it
/// was scanning (`web:` three lines up) or the column after the tab. The tab is the one just
/// before the reported position, else the first one from there on.
fn tab_near(src: &str, at: Pos) -> Option<Pos> {
    let line_no = at.line.checked_sub(1)? as usize;
    let mut offset = src.split_inclusive('\n').take(line_no).map(str::len).sum::<usize>();
    let line = src[offset..].split_inclusive('\n').next()?;
    // The reported column counts characters from 1.
    let col = (at.column as usize).max(1) - 1;
    let chars: Vec<char> = line.chars().collect();
    if col >= 1 && chars.get(col - 1) == Some(&'\t') {
        return Some(Pos::at(at.line, col as u32));
    }
    offset += chars.iter().take(col).map(|c| c.len_utf8()).sum::<usize>();
    let tab = offset + src.get(offset..)?.find('\t')?;
    let before = &src[..tab];
    let line = before.matches('\n').count() as u32 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
    Some(Pos::at(line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_at(src: &str) -> (Pos, String) {
        let e = parse(src, &Limits::default()).expect_err("a tab error");
        (e.pos, e.message)
    }

    #[test]
    fn a_tab_is_reported_where_it_is() {
        // The scanner reports the scalar before (`busybox`, 3:12); the tab is at 4:1.
        let (pos, msg) = error_at("services:\n  web:\n    image: busybox\n\tports: []\n");
        assert_eq!(pos, Pos::at(4, 1), "{msg}");
        assert!(msg.contains("tab") && msg.contains("spaces"), "{msg}");
        // Indentation by a tab: reported one column after it.
        let (pos, _) = error_at("services:\n  web:\n\timage: busybox\n");
        assert_eq!(pos, Pos::at(3, 1));
        // In a list, after multi-byte text.
        let (pos, _) = error_at("a:\n  - é\n  - x\n \t- y\n");
        assert_eq!(pos, Pos::at(4, 2));
    }
}
