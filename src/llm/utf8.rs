//! Incremental UTF-8 decoding of token pieces.
//!
//! A token's bytes may end in the middle of a multi-byte character (byte-fallback vocabularies
//! split emoji and CJK across tokens), so pieces are buffered until they form whole characters.
//! Bytes that can never become valid UTF-8 are replaced with U+FFFD instead of being dropped, so
//! the client sees that something was there.
//!
//! Model output is also cleaned of C0 control characters other than tab, line feed and carriage
//! return before anyone sees it: a model that emits U+0000 (byte-fallback vocabularies can) would
//! otherwise be stored in the chat, and a NUL in history cannot be passed to llama.cpp's template
//! renderer (a C string), which broke every later turn of that chat.

/// Holds at most 3 pending bytes of an unfinished character between pushes.
#[derive(Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes, returns the text that is complete so far (possibly empty).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    push_clean(&mut out, text);
                    rest = &[];
                    break;
                }
                Err(err) => {
                    let (valid, tail) = rest.split_at(err.valid_up_to());
                    // The prefix was just validated, so this cannot fail.
                    push_clean(&mut out, std::str::from_utf8(valid).unwrap_or_default());
                    match err.error_len() {
                        // Incomplete character at the end: keep it for the next piece.
                        None => {
                            rest = tail;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &tail[bad..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        self.pending.clear();
        char::REPLACEMENT_CHARACTER.to_string()
    }
}

/// Whether generated text keeps `c`: everything but the C0 controls other than `\t \n \r`
/// (NUL, bell, escape, backspace… are never meaningful in a reply and NUL breaks rendering).
fn keep(c: char) -> bool {
    c >= ' ' || matches!(c, '\t' | '\n' | '\r')
}

fn push_clean(out: &mut String, text: &str) {
    if text.chars().all(keep) {
        out.push_str(text);
    } else {
        out.extend(text.chars().filter(|&c| keep(c)));
    }
}

/// Text as the chat template may receive it: without NUL, the one character a C string cannot
/// carry. Applied to every message rendered, so history stored before output was cleaned (or
/// any other stored text) can never make a chat unrenderable.
pub(crate) fn renderable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', ""))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_multibyte_characters_across_pushes() {
        let text = "añ😀中";
        let bytes = text.as_bytes();
        // Every possible split point, one byte at a time.
        let mut stream = Utf8Stream::default();
        let mut out = String::new();
        for b in bytes {
            let piece = stream.push(&[*b]);
            assert!(!piece.contains(char::REPLACEMENT_CHARACTER));
            out.push_str(&piece);
        }
        out.push_str(&stream.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(stream.push(b"\xe4\xb8"), "");
        assert_eq!(stream.finish(), "\u{fffd}");
        assert_eq!(stream.push(b"ok"), "ok");
    }

    #[test]
    fn control_characters_other_than_whitespace_are_dropped() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(b"a\0b\x07c\td\ne\rf\x1b[0m"), "abc\td\ne\rf[0m");
        // A NUL that arrives alone (one byte-fallback token) yields nothing.
        assert_eq!(stream.push(b"\0"), "");
        // Also after an invalid byte and around a split character.
        assert_eq!(stream.push(b"\xff\0\xe4"), "\u{fffd}");
        assert_eq!(stream.push(b"\xb8\xad\0"), "中");
    }

    #[test]
    fn renderable_text_has_no_nul() {
        assert_eq!(renderable("a\0b\0"), "ab");
        assert!(matches!(
            renderable("plain"),
            std::borrow::Cow::Borrowed("plain")
        ));
    }
}
