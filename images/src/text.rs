//! Text from outside the process (tar names, registry replies, container output) made safe
//! for a terminal, a log line or the status document: control characters escaped, length
//! bounded. Every place where such text reaches a person goes through these functions (the
//! agent re-uses them for `/v1/status` and its log).
//!
//! - [`escape`]: C0/C1 controls, DEL and the invisible Unicode format characters that
//!   reorder or hide text (bidi overrides and isolates, zero-width characters, BOM) become
//!   Rust escapes (`\u{1b}`, `\n`, `\u{202e}`); everything else is kept as it is.
//! - [`clip`]: at most `max` bytes, cut at a character boundary, `…` marking the cut.
//! - [`one_line`]: a message for one line: its lines joined with `; `, escaped, clipped.
//! - [`name`]: a name given as bytes (a tar path), lossy UTF-8, escaped, clipped to
//!   [`NAME_SHOWN`].

use std::borrow::Cow;

/// The most bytes of a name (tar path, link target, xattr) quoted in a message.
pub const NAME_SHOWN: usize = 120;
/// The most bytes of a message in `/v1/status`, a log line or an error on the terminal.
pub const MESSAGE_MAX: usize = 1024;

/// Whether `c` must not reach a terminal as it is.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}'                  // arabic letter mark
            | '\u{200b}'..='\u{200f}'   // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}'   // line/paragraph separators, bidi embeddings and overrides
            | '\u{2060}'..='\u{206f}'   // word joiner, invisible operators, bidi isolates
            | '\u{feff}'                // BOM / zero-width no-break space
            | '\u{fff9}'..='\u{fffb}') // interlinear annotations
}

/// `s` with control and invisible format characters escaped (`\u{1b}`, `\n`, `\t`).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `max` bytes of `s` (at least one character's worth), cut at a character
/// boundary; a cut is marked with `…`.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max.saturating_sub('…'.len_utf8()).max(1).min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// A message as one line: its lines trimmed and joined with `; ` (empty ones dropped), then
/// escaped and clipped to `max` bytes.
pub fn one_line(s: &str, max: usize) -> String {
    // Only the first part can show: never walk (or copy) more of a huge message than that.
    let head = clip(s, max.saturating_mul(2).max(16));
    let joined = if head.contains(['\n', '\r']) {
        Cow::Owned(head.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; "))
    } else {
        head
    };
    clip(&escape(&joined), max).into_owned()
}

/// A name given as bytes (a tar path), for a message: lossy UTF-8, escaped, at most
/// [`NAME_SHOWN`] bytes.
pub fn name(raw: &[u8]) -> String {
    // A few bytes past the limit are enough to see whether it is cut.
    let head = &raw[..raw.len().min(NAME_SHOWN + 8)];
    let lossy = String::from_utf8_lossy(head);
    let escaped = escape(&lossy);
    if raw.len() > head.len() {
        // Cut anyway: the name goes on past what was looked at.
        let cut = clip(&escaped, NAME_SHOWN.min(escaped.len().saturating_sub(1)));
        return if cut.ends_with('…') { cut.into_owned() } else { format!("{cut}…") };
    }
    clip(&escaped, NAME_SHOWN).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_invisible_characters() {
        assert_eq!(escape("plain / ünïcode \"q\" \\"), "plain / ünïcode \"q\" \\");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\u{1b}[31mred\u{7}"), "a\\u{1b}[31mred\\u{7}");
        assert_eq!(escape("l1\nl2\r\tx"), "l1\\nl2\\r\\tx");
        assert_eq!(escape("\u{9b}2J"), "\\u{9b}2J");
        assert_eq!(escape("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(escape("x\u{2066}y\u{feff}"), "x\\u{2066}y\\u{feff}");
        assert_eq!(escape("\u{7f}"), "\\u{7f}");
    }

    #[test]
    fn clips_at_character_boundaries() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdefghij", 8), "abcde…");
        let s = "é".repeat(10);
        let c = clip(&s, 8);
        assert!(c.len() <= 8 && c.ends_with('…'), "{c}");
        assert_eq!(clip("abc", 0), "a…");
    }

    #[test]
    fn one_line_messages() {
        assert_eq!(one_line("a\n\n  b  \nc", 100), "a; b; c");
        assert_eq!(one_line("bell\u{7} esc\u{1b}[2J", 100), "bell\\u{7} esc\\u{1b}[2J");
        let huge = "x".repeat(10 << 20);
        let l = one_line(&huge, MESSAGE_MAX);
        assert!(l.len() <= MESSAGE_MAX && l.ends_with('…'));
        let escapes = "\u{1b}".repeat(1000);
        assert!(one_line(&escapes, 64).len() <= 64);
    }

    #[test]
    fn names() {
        assert_eq!(name(b"etc/passwd"), "etc/passwd");
        assert_eq!(name(b"a\nb\xff"), "a\\nb\u{fffd}");
        let long = vec![b'a'; 3 << 20];
        let n = name(&long);
        assert!(n.len() <= NAME_SHOWN && n.ends_with('…'), "{} bytes", n.len());
        let n = name(&[b'\x1b'; 5000]);
        assert!(n.len() <= NAME_SHOWN && !n.contains('\u{1b}') && n.ends_with('…'), "{n}");
        let exact = vec![b'b'; NAME_SHOWN];
        assert_eq!(name(&exact), "b".repeat(NAME_SHOWN));
    }
}
