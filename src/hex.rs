//! Lowercase hex: hashes for auditors, key identifiers as MDS writes them,
//! SPKI pins as `openssl` prints them.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The bytes of hex text (either case); `None` for an odd length or any
/// character that is not a hex digit (signs included).
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| char::from(c).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        assert_eq!(encode(&[0, 0xff, 0xa0]), "00ffa0");
        assert_eq!(decode("00fFa0"), Some(vec![0, 0xff, 0xa0]));
        assert_eq!(decode(""), Some(vec![]));
        for bad in ["abc", "zz", "+1", "-1", " 1"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
