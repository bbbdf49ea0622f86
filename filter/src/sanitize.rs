//! Name normalization: look-alike detection and stat-safe name segments.
//!
//! Why: the allowlist matches names exactly, so `Add`, `add ` or `аdd` (Cyrillic `а`) are refused
//! anyway. But a request for a name that merely *looks like* an allowed one is a signal worth
//! telling apart from a plain typo or a probe: it is refused with the distinct reason
//! [`crate::stats::Reason::Lookalike`]. [`skeleton`] folds a name to a canonical form in which
//! case, whitespace, invisible characters, common homoglyphs (Cyrillic, Greek, fullwidth,
//! mathematical alphanumerics, Latin-1 accented letters, `0/O`, `1/l/I`) and Unicode dashes
//! collapse; two names with the same skeleton look alike. The table is built in (no Unicode
//! data crate, to keep the wasm module small); it covers the confusables that matter for the
//! ASCII-only names MCP allows, not all of Unicode TS #39.
//!
//! [`stat_segment`] makes a name safe for an Envoy stat name segment: the `stats_tags` regexes
//! split on `.`, so every character outside `[A-Za-z0-9_-]` becomes `_`.

/// Fold `s` to its look-alike skeleton (see the module docs).
pub fn skeleton(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_invisible(c) || c.is_whitespace() {
            continue;
        }
        let folded = fold(c);
        for l in folded.to_lowercase() {
            out.push(l);
        }
    }
    out
}

/// Characters that render as nothing (zero-width, format controls, combining marks).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}' | '\u{E0000}'..='\u{E007F}')
        || c.is_control()
}

/// Map one character to its ASCII look-alike (unchanged if it has none in the table).
fn fold(c: char) -> char {
    let cp = c as u32;
    // Fullwidth ASCII.
    if (0xFF01..=0xFF5E).contains(&cp) {
        return char::from_u32(cp - 0xFEE0).map_or(c, fold_ascii);
    }
    // Mathematical alphanumeric symbols: 13 alphabets of 52 letters, then digits.
    if (0x1D400..=0x1D6A3).contains(&cp) {
        let i = (cp - 0x1D400) % 52;
        let base = if i < 26 {
            b'A' as u32 + i
        } else {
            b'a' as u32 + i - 26
        };
        return char::from_u32(base).map_or(c, fold_ascii);
    }
    if (0x1D7CE..=0x1D7FF).contains(&cp) {
        return char::from_u32(b'0' as u32 + (cp - 0x1D7CE) % 10).map_or(c, fold_ascii);
    }
    let mapped = match c {
        // Cyrillic.
        'а' | 'А' => 'a',
        'в' | 'В' | 'Ь' | 'ь' => 'b',
        'е' | 'Е' | 'ё' | 'Ё' | 'є' | 'Є' => 'e',
        'і' | 'І' | 'ї' | 'Ї' => 'i',
        'ј' | 'Ј' => 'j',
        'к' | 'К' => 'k',
        'м' | 'М' => 'm',
        'н' | 'Н' | 'һ' | 'Һ' => 'h',
        'о' | 'О' => 'o',
        'р' | 'Р' => 'p',
        'с' | 'С' => 'c',
        'т' | 'Т' => 't',
        'у' | 'У' | 'ү' | 'Ү' => 'y',
        'х' | 'Х' => 'x',
        'ѕ' | 'Ѕ' => 's',
        'ԁ' => 'd',
        'ԛ' | 'Ԛ' => 'q',
        'ԝ' | 'Ԝ' => 'w',
        'ӏ' | 'Ӏ' => 'l',
        'ɡ' => 'g',
        // Greek.
        'α' | 'Α' => 'a',
        'Β' | 'β' => 'b',
        'ε' | 'Ε' => 'e',
        'Ζ' => 'z',
        'Η' => 'h',
        'ι' => 'i',
        'Ι' => 'l',
        'κ' | 'Κ' => 'k',
        'Μ' => 'm',
        'ν' | 'Ν' => 'v',
        'ο' | 'Ο' | 'σ' => 'o',
        'ρ' | 'Ρ' => 'p',
        'τ' | 'Τ' => 't',
        'υ' | 'Υ' => 'y',
        'χ' | 'Χ' => 'x',
        // Latin extras and letterlike symbols.
        'ı' | 'ℹ' | 'ⅰ' => 'i',
        'ℓ' | 'ǀ' | '∣' | 'Ɩ' => 'l',
        'ℎ' => 'h',
        'ℯ' | 'ℰ' => 'e',
        'ℊ' => 'g',
        'ℴ' => 'o',
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'a',
        'ç' | 'Ç' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
        'ñ' | 'Ñ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
        'ý' | 'ÿ' | 'Ý' => 'y',
        // Dashes, underscores and dots that look like ASCII ones.
        '‐' | '‑' | '‒' | '–' | '—' | '―' | '−' | '﹣' | '⁃' => '-',
        '＿' | '‗' => '_',
        '․' | '·' | '•' | '∙' => '.',
        '⁄' | '∕' | '／' => '/',
        _ => c,
    };
    fold_ascii(mapped)
}

/// The ASCII confusables: `0`/`O` look like `o`, `1`/`I`/`|` look like `l`.
fn fold_ascii(c: char) -> char {
    match c {
        '0' | 'O' => 'o',
        '1' | 'I' | '|' => 'l',
        _ => c,
    }
}

/// Make `s` safe as one segment of an Envoy stat name (the wire contract's rule, shared with
/// the control plane).
pub use toolmesh_proto::stat_segment;

/// Decode an MCP header value (protocol 2026-07-28): values that would not survive an HTTP
/// field are sent as `=?base64?<canonical base64 of UTF-8>?=`; anything else is verbatim.
///
/// Returns `None` for a malformed sentinel, so a corrupt header never matches a body value
/// (the same rule as the official Python SDK's `decode_header_value`).
pub fn decode_mcp_header(value: &str) -> Option<String> {
    let Some(payload) = value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    else {
        return Some(value.to_owned());
    };
    let bytes = base64_decode(payload)?;
    String::from_utf8(bytes).ok()
}

/// Strict, canonical standard base64 (with padding) decoding.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    let chunks = b.len() / 4;
    for (n, chunk) in b.chunks(4).enumerate() {
        let last = n + 1 == chunks;
        let [c0, c1, c2, c3] = [chunk.first(), chunk.get(1), chunk.get(2), chunk.get(3)]
            .map(|c| c.copied().unwrap_or(b'='));
        let pad = match (c2, c3) {
            (b'=', b'=') if last => 2,
            (_, b'=') if last && c2 != b'=' => 1,
            _ => 0,
        };
        let v0 = val(c0)?;
        let v1 = val(c1)?;
        let v2 = if pad == 2 { 0 } else { val(c2)? };
        let v3 = if pad >= 1 { 0 } else { val(c3)? };
        let triple = (v0 << 18) | (v1 << 12) | (v2 << 6) | v3;
        // Canonical form: the bits dropped by padding must be zero.
        if (pad == 2 && v1 & 0x0F != 0) || (pad == 1 && v2 & 0x03 != 0) {
            return None;
        }
        out.push((triple >> 16) as u8);
        if pad < 2 {
            out.push((triple >> 8) as u8);
        }
        if pad < 1 {
            out.push(triple as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookalikes_share_a_skeleton() {
        let cases = [
            ("add", "add"),
            ("add", "ADD"),
            ("add", "Add"),
            ("add", " add "),
            ("add", "a d d"),
            ("add", "add\t"),
            ("add", "a\u{200B}dd"),
            ("add", "add\u{FEFF}"),
            ("add", "\u{0430}dd"),               // Cyrillic a
            ("add", "\u{FF41}\u{FF44}\u{FF44}"), // fullwidth
            ("add", "a\u{0501}d"),               // Cyrillic komi de
            ("add", "\u{1D41A}dd"),              // mathematical bold a
            ("add", "ädd"),
            ("add", "a\u{0308}dd"), // combining diaeresis
            ("get_weather", "get_weather"),
            ("get_weather", "GET_WEATHER"),
            ("get_weather", "get_weаther"),
            ("tool", "t00l"),
            ("tool", "tooI"),
            ("tool", "too1"),
            ("echo", "еcho"),
            ("echo", "ech\u{03BF}"), // Greek omicron
            ("a-b", "a\u{2010}b"),
            ("a-b", "a\u{2212}b"),
            ("x/y", "x\u{2215}y"),
            ("scope", "ѕсоре"),
        ];
        for (allowed, probe) in cases {
            assert_eq!(
                skeleton(allowed),
                skeleton(probe),
                "{allowed:?} vs {probe:?}"
            );
        }
    }

    #[test]
    fn different_names_have_different_skeletons() {
        let cases = [
            ("add", "sub"),
            ("add", "adder"),
            ("add", "ad"),
            ("a-b", "a_b"),
            ("a-b", "a.b"),
            ("get_weather", "get_whether"),
            ("echo", "ecko"),
        ];
        for (a, b) in cases {
            assert_ne!(skeleton(a), skeleton(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn stat_segments() {
        let cases = [
            ("add", "add"),
            ("get-weather_2", "get-weather_2"),
            ("ns.tool", "ns_tool"),
            ("ns/tool", "ns_tool"),
            ("a b", "a_b"),
            ("é", "_"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(stat_segment(input), want, "{input:?}");
        }
    }

    #[test]
    fn mcp_header_values() {
        let cases: [(&str, Option<&str>); 9] = [
            ("add", Some("add")),
            ("", Some("")),
            ("=?base64?YWRk?=", Some("add")),
            ("=?base64?w6k=?=", Some("é")),
            ("=?base64?YQ==?=", Some("a")),
            ("=?base64?YR==?=", None), // non-canonical trailing bits
            ("=?base64?Y?=", None),    // bad length
            ("=?base64?!!!!?=", None), // bad alphabet
            ("=?base64?/w==?=", None), // not UTF-8
        ];
        for (input, want) in cases {
            assert_eq!(decode_mcp_header(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn base64_roundtrip_lengths() {
        let cases = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
        ];
        for (enc, dec) in cases {
            assert_eq!(
                base64_decode(enc).as_deref(),
                Some(dec.as_bytes()),
                "{enc:?}"
            );
        }
        assert_eq!(base64_decode("Zm=v"), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
    }
}
