//! A strict bencode codec.
//!
//! Why not `serde_bencode`: a `.torrent` is untrusted input, and the info-hash
//! is the SHA-256 of the exact bytes of the `info` dict. This decoder bounds
//! nesting depth (a `llll…` bomb cannot overflow the stack), refuses
//! non-canonical input (unsorted or duplicate keys, `i-0e`, `i03e`, `03:abc`)
//! and trailing bytes, and keeps the raw bytes of every dict so the info-hash
//! is taken over what the file says, not over a re-encoding. Values borrow
//! from the input; nothing is copied.

use std::collections::BTreeMap;
use std::fmt;

/// Deepest nesting accepted. A v2 file tree nests one dict per path
/// component plus two, so this allows paths of about 60 components.
pub const MAX_DEPTH: usize = 64;

/// A decoded (or to-be-encoded) bencode value borrowing its bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Int(i64),
    Bytes(&'a [u8]),
    List(Vec<Value<'a>>),
    Dict(Dict<'a>),
}

/// A dict: keys in canonical (bytewise) order, plus the raw bytes it was
/// decoded from (empty for a dict built in memory).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Dict<'a> {
    pub entries: BTreeMap<&'a [u8], Value<'a>>,
    pub raw: &'a [u8],
}

impl<'a> Dict<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: &'a [u8], value: Value<'a>) -> &mut Self {
        self.entries.insert(key, value);
        self
    }

    pub fn get(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.entries.get(key)
    }
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) if b.len() <= 64 => write!(f, "{s:?}"),
                _ => write!(f, "<{} bytes>", b.len()),
            },
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => d.fmt(f),
        }
    }
}

impl fmt::Debug for Dict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), v)),
            )
            .finish()
    }
}

/// Where and why decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid bencode at byte {offset}: {reason}")]
pub struct DecodeError {
    pub offset: usize,
    pub reason: &'static str,
}

/// Decodes exactly one value spanning all of `input`.
pub fn decode(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    whole(Decoder {
        input,
        pos: 0,
        sorted: true,
    })
}

/// Like [`decode`], but dict keys may come in any order (never twice):
/// what real `.torrent` files and trackers send. Every dict keeps its raw
/// bytes, so an info-hash is still taken over exactly what was sent.
pub fn decode_lenient(input: &[u8]) -> Result<Value<'_>, DecodeError> {
    whole(Decoder {
        input,
        pos: 0,
        sorted: false,
    })
}

/// Decodes one value at the start of `input` (keys in any order) and
/// says how many bytes it took: a `ut_metadata` message is a dict
/// followed by raw data.
pub fn decode_prefix(input: &[u8]) -> Result<(Value<'_>, usize), DecodeError> {
    let mut d = Decoder {
        input,
        pos: 0,
        sorted: false,
    };
    let value = d.value(0)?;
    Ok((value, d.pos))
}

fn whole(mut d: Decoder<'_>) -> Result<Value<'_>, DecodeError> {
    let value = d.value(0)?;
    if d.pos != d.input.len() {
        return Err(d.err("trailing bytes after the value"));
    }
    Ok(value)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    /// Refuse dict keys out of order (canonical bencode).
    sorted: bool,
}

impl<'a> Decoder<'a> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err("unexpected end of input"))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let i = self.int(b'e')?;
                Ok(Value::Int(i))
            }
            b'0'..=b'9' => self.bytes().map(Value::Bytes),
            b'l' => {
                self.pos += 1;
                let mut items = Vec::new();
                while self.peek()? != b'e' {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            b'd' => {
                let start = self.pos;
                self.pos += 1;
                let mut entries = BTreeMap::new();
                let mut last: Option<&[u8]> = None;
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.err("dict key is not a byte string"));
                    }
                    let key_at = self.pos;
                    let key = self.bytes()?;
                    if self.sorted && last.is_some_and(|l| l >= key) {
                        return Err(DecodeError {
                            offset: key_at,
                            reason: "dict keys are not in sorted order or repeat",
                        });
                    }
                    last = Some(key);
                    let value = self.value(depth + 1)?;
                    if entries.insert(key, value).is_some() {
                        return Err(DecodeError {
                            offset: key_at,
                            reason: "dict key repeats",
                        });
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(Dict {
                    entries,
                    raw: &self.input[start..self.pos],
                }))
            }
            _ => Err(self.err("expected i, l, d or a digit")),
        }
    }

    /// Parses a canonical decimal integer up to `end`, consuming `end`.
    fn int(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_at = self.pos;
        let mut value: i64 = 0;
        loop {
            let c = self.peek()?;
            if c == end {
                break;
            }
            if !c.is_ascii_digit() {
                return Err(self.err("expected a digit"));
            }
            let digit = i64::from(c - b'0');
            value = value
                .checked_mul(10)
                .and_then(|v| {
                    if negative {
                        v.checked_sub(digit)
                    } else {
                        v.checked_add(digit)
                    }
                })
                .ok_or_else(|| self.err("integer out of range"))?;
            self.pos += 1;
        }
        let digits = &self.input[digits_at..self.pos];
        if digits.is_empty() {
            return Err(DecodeError {
                offset: start,
                reason: "empty integer",
            });
        }
        if digits.len() > 1 && digits[0] == b'0' {
            return Err(DecodeError {
                offset: start,
                reason: "integer has a leading zero",
            });
        }
        if negative && digits == b"0" {
            return Err(DecodeError {
                offset: start,
                reason: "negative zero",
            });
        }
        self.pos += 1;
        Ok(value)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        if self.peek()? == b'-' {
            return Err(self.err("negative string length"));
        }
        let len = self.int(b':')?;
        let len = usize::try_from(len).map_err(|_| DecodeError {
            offset: at,
            reason: "bad length",
        })?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.input.len())
            .ok_or(DecodeError {
                offset: at,
                reason: "string runs past the end of input",
            })?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

/// Encodes `value` canonically (dict keys in bytewise order).
pub fn encode(value: &Value<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

pub fn encode_into(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => {
            out.extend_from_slice(b.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(b);
        }
        Value::List(items) => {
            out.push(b'l');
            for item in items {
                encode_into(item, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, v) in &d.entries {
                encode_into(&Value::Bytes(k), out);
                encode_into(v, out);
            }
            out.push(b'e');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unsorted keys: refused by `decode`, taken by `decode_lenient` with
    /// the dict's raw bytes as sent; a repeated key is refused by both.
    #[test]
    fn lenient_decoding_takes_unsorted_keys_and_keeps_raw_bytes() {
        let input = b"d1:bi1e1:ad1:zi0e1:yi0eee";
        assert!(decode(input).is_err());
        let Value::Dict(d) = decode_lenient(input).unwrap() else {
            panic!("not a dict")
        };
        assert_eq!(d.raw, input);
        assert_eq!(d.get(b"b"), Some(&Value::Int(1)));
        let Some(Value::Dict(inner)) = d.get(b"a") else {
            panic!("no inner dict")
        };
        assert_eq!(inner.raw, b"d1:zi0e1:yi0ee");
        for bad in [&b"d1:ai1e1:ai2ee"[..], b"d1:bi1e1:bi1ee"] {
            assert!(decode_lenient(bad).is_err(), "{bad:?}");
        }
        let (v, used) = decode_prefix(b"d1:ai1eeRAWDATA").unwrap();
        assert_eq!(used, 8);
        assert!(matches!(v, Value::Dict(_)));
    }

    #[test]
    fn round_trips_canonical_input() {
        let input = b"d1:ai-42e1:bl3:xyzi0ee1:cd0:0:ee";
        let v = decode(input).unwrap();
        assert_eq!(encode(&v), input);
        let Value::Dict(d) = &v else {
            panic!("not a dict")
        };
        assert_eq!(d.raw, input);
        let Some(Value::Dict(inner)) = d.get(b"c") else {
            panic!("no inner dict")
        };
        assert_eq!(inner.raw, b"d0:0:e");
    }

    #[test]
    fn refuses_non_canonical_and_broken_input() {
        for bad in [
            &b""[..],
            b"i-0e",
            b"i03e",
            b"ie",
            b"i-e",
            b"03:abc",
            b"-1:a",
            b"4:abc",
            b"i1ei2e",
            b"d1:b0:1:a0:e",
            b"d1:a0:1:a0:e",
            b"di1e0:e",
            b"l",
            b"d1:a",
            b"x",
            b"i9223372036854775808e",
            b"99999999999999999999:",
        ] {
            assert!(
                decode(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
    }

    #[test]
    fn bounds_nesting_depth() {
        let deep = [vec![b'l'; 100_000], vec![b'e'; 100_000]].concat();
        assert_eq!(decode(&deep).unwrap_err().reason, "nested too deeply");
        let ok = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let input = b"d4:infod4:name3:abc12:piece lengthi16384eee";
        assert!(decode(input).is_ok());
        for cut in 0..input.len() {
            assert!(decode(&input[..cut]).is_err(), "accepted a cut at {cut}");
        }
    }
}
