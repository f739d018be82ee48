//! Quoting untrusted text in messages.
//!
//! Image strings and policy values come from whoever can create a Pod or a
//! policy; a 64 KiB image name must not become a 64 KiB log line or reason.
//! Messages quote at most [`QUOTE_MAX`] bytes of such a value and say how
//! long it was; the value itself travels whole in the fields that carry it
//! (the finding's `image`), so nothing is lost.

use std::borrow::Cow;

/// Bytes of an untrusted value quoted in a message.
pub const QUOTE_MAX: usize = 256;

/// `s` cut to at most `max` bytes on a character boundary, with
/// `…(N bytes)` appended when cut; unchanged otherwise.
pub fn clip(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…({} bytes)", &s[..end], s.len()))
}

/// [`clip`] at [`QUOTE_MAX`], for `{:?}`/`{}` in messages.
pub fn quote(s: &str) -> Cow<'_, str> {
    clip(s, QUOTE_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_untouched() {
        assert!(matches!(
            clip("nginx:1.27", 256),
            Cow::Borrowed("nginx:1.27")
        ));
        assert_eq!(clip(&"a".repeat(256), 256).len(), 256);
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary_and_say_their_length() {
        let long = "é".repeat(200); // 400 bytes, 2 per char
        let c = clip(&long, 257);
        assert!(c.starts_with(&"é".repeat(128)));
        assert!(c.ends_with("…(400 bytes)"), "{c}");
        assert_eq!(c.chars().filter(|&ch| ch == 'é').count(), 128);
        let huge = "A".repeat(65_536);
        assert_eq!(quote(&huge), format!("{}…(65536 bytes)", "A".repeat(256)));
    }
}
