//! The one door untrusted text leaves by.
//!
//! Text that came from a plugin (its output, logs, panic messages), from a
//! wasm file (names in parser errors and traps) or from a cache record that
//! another user may have written is passed through [`escape`] before sifr
//! keeps it, so every printer, human or `--json`, gets text that cannot
//! drive a terminal.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Make untrusted text safe to print, and at most about `max` bytes long.
///
/// - Control characters (category Cc: ESC, CR, BEL, ...) are escaped as
///   `\u{1b}`, so no terminal sequence survives.
/// - Format characters (category Cf) are escaped too. `char::is_control`
///   misses them, and among them are the bidi controls (U+202A–U+202E,
///   U+2066–U+2069, U+200E/F) that make a path or a reason read backwards,
///   and zero-width characters that hide text.
/// - Line and paragraph separators (Zl, Zp) are escaped, so one string is
///   one line.
/// - The text is cut on a character boundary, with `…` when cut.
pub fn escape(text: &str, max: usize) -> String {
    // Printable ASCII needs nothing: the common case (notes, log lines)
    // costs a scan, not a Unicode table lookup a character.
    if text.len() <= max && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len().min(max) + 3);
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if needs_escape(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `c` could change how the terminal shows what follows it.
pub fn needs_escape(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_passes_as_it_is_and_is_still_cut() {
        assert_eq!(
            escape("docker.io is not mirrored", 100),
            "docker.io is not mirrored"
        );
        assert_eq!(escape("abcdef", 3), "abc…");
        assert_eq!(escape("a\x7fb", 100), "a\\u{7f}b");
    }

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(escape("a\u{1b}[2Jb", 100), "a\\u{1b}[2Jb");
        assert_eq!(escape("a\rb\n", 100), "a\\u{d}b\\u{a}");
        assert_eq!(escape("\u{7f}\u{9b}", 100), "\\u{7f}\\u{9b}");
    }

    #[test]
    fn bidi_and_other_format_characters_are_escaped() {
        for c in [
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200e}',
            '\u{200f}',
            '\u{200b}',
            '\u{feff}',
            '\u{2028}',
            '\u{2029}',
            '\u{e0041}',
        ] {
            let shown = escape(&format!("x{c}y"), 100);
            assert!(!shown.contains(c), "{c:?} got through: {shown}");
            assert!(shown.starts_with("x\\u{"), "{shown}");
        }
    }

    #[test]
    fn ordinary_text_is_kept() {
        let text = "ubuntu:22.04 — Grüße, 日本語, emoji 🦀, tab-free";
        assert_eq!(escape(text, 1000), text);
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(escape(&"x".repeat(10), 4), "xxxx…");
        let cut = escape(&"é".repeat(10), 5);
        assert_eq!(cut, "ééé…");
        let cut = escape(&"🦀".repeat(4), 2);
        assert_eq!(cut, "🦀…");
    }
}
