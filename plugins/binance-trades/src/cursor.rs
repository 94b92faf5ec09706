//! The cursor: per symbol, the highest trade id up to which every trade was emitted, as a
//! JSON object keyed by the uppercase raw symbol: `{"BTCUSDT":123,"ETHUSDT":456}`.

use anode_plugin_sdk::watermark::{self, CursorMarks};

/// Read a cursor ([`watermark::parse_cursor`]), keys uppercased. Anything but a JSON object
/// is an error (the caller starts afresh); entries whose value is not a whole number (or a
/// string of digits) are left out.
pub(crate) fn parse(text: &str) -> Result<CursorMarks, String> {
    let mut read = watermark::parse_cursor(text)
        .map_err(|_| "not a JSON object of trade ids per symbol".to_owned())?;
    for (symbol, _) in &mut read.marks {
        symbol.make_ascii_uppercase();
    }
    Ok(read)
}

/// The cursor text of the output being built.
///
/// `on_frame` runs once per frame and nothing runs at the end of a batch, so the cursor has
/// to be right after every frame that moves a watermark. Rendering the whole object each time
/// would cost every trade a pass over all symbols; instead the text is rendered once per
/// output, at the first change, and later changes overwrite just the digits of their symbol
/// in the same `String`.
#[derive(Debug, Default)]
pub(crate) struct CursorText {
    /// Per symbol index: where its number sits in the text, `None` if it is not in it.
    spans: Vec<Option<(usize, usize)>>,
    /// The length of the text the spans describe.
    len: usize,
}

impl CursorText {
    /// Set symbol `index`'s watermark to `value` in `slot` (an output's cursor). Returns
    /// `false`, changing nothing, unless `slot` holds the text last rendered or patched here
    /// (a new output's slot is empty) with that symbol in it: the caller renders it then.
    pub(crate) fn patch(&mut self, slot: &mut Option<String>, index: usize, value: u64) -> bool {
        let Some(text) = slot.as_mut().filter(|text| text.len() == self.len) else {
            return false;
        };
        let Some(Some((start, end))) = self.spans.get(index).copied() else {
            return false;
        };
        let mut buffer = [0u8; 20];
        let digits = digits(value, &mut buffer);
        text.replace_range(start..end, digits);
        let new_end = start + digits.len();
        if new_end != end {
            // A number gained (or lost) a digit: the ones after it moved.
            for span in self.spans[index + 1..].iter_mut().flatten() {
                span.0 = span.0 + new_end - end;
                span.1 = span.1 + new_end - end;
            }
            self.spans[index] = Some((start, new_end));
            self.len = text.len();
        }
        true
    }

    /// Write the whole cursor into `slot`, reusing its `String`. `marks` gives, in symbol
    /// index order, each symbol's JSON-quoted key and watermark (`None`: left out).
    pub(crate) fn render<'a>(
        &mut self,
        slot: &mut Option<String>,
        marks: impl ExactSizeIterator<Item = (&'a str, Option<u64>)>,
    ) {
        let text = slot.get_or_insert_with(|| String::with_capacity(16 + marks.len() * 24));
        text.clear();
        self.spans.clear();
        text.push('{');
        let mut buffer = [0u8; 20];
        for (key, mark) in marks {
            let Some(value) = mark else {
                self.spans.push(None);
                continue;
            };
            if text.len() > 1 {
                text.push(',');
            }
            text.push_str(key);
            text.push(':');
            let start = text.len();
            text.push_str(digits(value, &mut buffer));
            self.spans.push(Some((start, text.len())));
        }
        text.push('}');
        self.len = text.len();
    }
}

/// `value` in decimal, written into `buffer`.
fn digits(mut value: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_marks_and_refuses_what_is_not_an_object() {
        let mut read = parse(r#"{"btcusdt":12,"ETHUSDT":"34","X":-1,"Y":null}"#).unwrap();
        read.marks.sort();
        read.ignored.sort();
        assert_eq!(
            read.marks,
            [("BTCUSDT".to_owned(), 12), ("ETHUSDT".to_owned(), 34)]
        );
        assert_eq!(read.ignored, ["X", "Y"]);
        for bad in ["", "12", "[1]", "{", "null"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_once_then_patches_in_place() {
        let keys = [r#""A""#, r#""BB""#, r#""C""#];
        let marks = |values: [Option<u64>; 3]| keys.into_iter().zip(values);
        let mut cursor = CursorText::default();
        let mut slot = None;
        // A new output: nothing to patch.
        assert!(!cursor.patch(&mut slot, 0, 1));
        cursor.render(&mut slot, marks([Some(9), None, Some(5)]));
        assert_eq!(slot.as_deref(), Some(r#"{"A":9,"C":5}"#));
        // Not in the text yet: render again.
        assert!(!cursor.patch(&mut slot, 1, 1));
        assert!(cursor.patch(&mut slot, 0, 10));
        assert_eq!(slot.as_deref(), Some(r#"{"A":10,"C":5}"#));
        assert!(cursor.patch(&mut slot, 2, 6));
        assert!(cursor.patch(&mut slot, 0, 99));
        assert!(cursor.patch(&mut slot, 2, u64::MAX));
        assert!(cursor.patch(&mut slot, 0, 0));
        assert_eq!(slot.as_deref(), Some(r#"{"A":0,"C":18446744073709551615}"#));
        let text = slot.clone().unwrap();
        assert_eq!(parse(&text).unwrap().marks.len(), 2);
        // Another output's slot: starts empty, so it is rendered afresh.
        let mut next = None;
        assert!(!cursor.patch(&mut next, 0, 1));
        cursor.render(&mut next, marks([None, None, None]));
        assert_eq!(next.as_deref(), Some("{}"));
    }
}
