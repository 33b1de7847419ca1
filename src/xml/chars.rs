//! Which characters and names XML 1.0 allows (XML 1.0 Fifth Edition §2.2 `Char`, §2.3
//! `NameStartChar` and `NameChar`; Namespaces in XML 1.0 §3 `NCName` and `QName`).
//!
//! quick-xml leaves both to its user: it passes control characters and U+FFFE through, resolves
//! `&#1;`, and takes whatever precedes the first space of a tag as its name. A recipient's parser
//! does check them, so anything that breaks these rules must neither get in nor go out.
//!
//! The byte scans work on UTF-8 without decoding it: the only characters outside `Char` that
//! UTF-8 can encode are the C0 controls other than tab, LF and CR (one byte each, below 0x20) and
//! U+FFFE and U+FFFF (`EF BF BE`, `EF BF BF`); surrogates are not valid UTF-8 at all.

use std::borrow::Cow;

/// XML 1.0 `Char`.
pub fn is_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// The offset of the first character outside `Char` in `bytes`. A U+FFFE or U+FFFF whose last
/// bytes are not in `bytes` yet is not found: a caller scanning a stream in pieces starts each
/// scan two bytes before the new ones.
pub fn find_non_char(bytes: &[u8]) -> Option<usize> {
    // Every stanza passes through here, and almost none has anything to find: one pass without
    // branches (which compiles to vector compares) decides, and only a hit is looked for byte
    // by byte.
    let suspect = |b: u8| (b < 0x20) & (b != b'\t') & (b != b'\n') & (b != b'\r') | (b == 0xEF);
    if !bytes.iter().fold(false, |any, &b| any | suspect(b)) {
        return None;
    }
    (0..bytes.len()).find(|&at| match bytes[at] {
        0xEF => bytes.get(at + 1) == Some(&0xBF) && matches!(bytes.get(at + 2), Some(0xBE | 0xBF)),
        b => suspect(b),
    })
}

/// `s` with every character outside `Char` replaced by U+FFFD; borrowed when there is none.
pub fn replace_non_chars(s: &str) -> Cow<'_, str> {
    match find_non_char(s.as_bytes()) {
        None => Cow::Borrowed(s),
        Some(at) => {
            let mut out = String::with_capacity(s.len() + 2);
            out.push_str(&s[..at]);
            out.extend(
                s[at..]
                    .chars()
                    .map(|c| if is_char(c) { c } else { '\u{FFFD}' }),
            );
            Cow::Owned(out)
        }
    }
}

/// XML 1.0 `NameStartChar` without `:`, which namespaces reserve as the prefix separator.
fn is_name_start_char(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 `NameChar` without `:`.
fn is_name_char(c: char) -> bool {
    is_name_start_char(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Namespaces in XML `NCName`: an XML `Name` without a colon.
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(is_name_start_char) && chars.all(is_name_char)
}

/// Namespaces in XML `QName`: `local` or `prefix:local`, both `NCName`s. Every element and
/// attribute name on an XMPP stream must be one.
pub fn is_qname(s: &str) -> bool {
    match s.split_once(':') {
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
        None => is_ncname(s),
    }
}

/// True if `b`, just after a `<` outside any element, can begin markup: a name, `/`, `?` or
/// `!`. A byte from 0xC2 to 0xF4 starts a multi-byte character, which the name check judges
/// once the whole tag is there.
pub fn can_follow_lt(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'_' | b'/' | b'?' | b'!' | 0xC2..=0xF4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars() {
        for c in [
            '\t', '\n', '\r', ' ', '\u{7F}', '\u{85}', '\u{D7FF}', '\u{E000}', '\u{FFFD}',
        ] {
            assert!(is_char(c), "{c:?}");
        }
        for c in [
            '\0', '\u{1}', '\u{B}', '\u{C}', '\u{1F}', '\u{FFFE}', '\u{FFFF}',
        ] {
            assert!(!is_char(c), "{c:?}");
        }
        assert!(is_char('\u{10000}') && is_char('\u{10FFFF}'));
        // The byte scan agrees with the character test on every character it can meet.
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let mut b = [0; 4];
            let found = find_non_char(c.encode_utf8(&mut b).as_bytes()).is_some();
            assert_eq!(found, !is_char(c), "{c:?}");
        }
    }

    #[test]
    fn scans() {
        assert_eq!(find_non_char(b"plain text\r\n\t"), None);
        assert_eq!(find_non_char(b"a\x01b"), Some(1));
        assert_eq!(find_non_char("ab\u{FFFF}".as_bytes()), Some(2));
        assert_eq!(find_non_char("\u{FFFD}\u{FEFF}\u{F000}".as_bytes()), None);
        // An incomplete U+FFFE at the end is left for the next scan.
        assert_eq!(find_non_char(b"ab\xEF\xBF"), None);
        assert!(matches!(replace_non_chars("fine"), Cow::Borrowed("fine")));
        assert_eq!(
            replace_non_chars("a\u{0}b\u{FFFE}c\u{1B}"),
            "a\u{FFFD}b\u{FFFD}c\u{FFFD}"
        );
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "message",
            "xml:lang",
            "_x",
            "a-b.c_1",
            "\u{E9}t\u{E9}",
            "p:a\u{B7}b",
        ] {
            assert!(is_qname(ok), "{ok}");
        }
        let bad = [
            "", "1a", "-a", ".a", ":a", "a:", "a:b:c", "a\"b", "a<b", "a'b", "a=b", "a/", "a b",
            "a&b", "a>b", "a\u{1}", "\u{B7}a", "a:1b",
        ];
        for bad in bad {
            assert!(!is_qname(bad), "{bad:?}");
        }
    }
}
