//! Masking of single column values, per PostgreSQL type and wire format.
//!
//! [`mask_value`] takes one non-NULL value as the server sent it (text or
//! binary format), and returns the masked value in the same type and format,
//! or `None` for SQL NULL. The caller keeps NULLs as they are and never calls
//! this for them.
//!
//! How it works: the value is decoded into a small typed form (a binary value
//! through `postgres_protocol::types`, numeric by hand; a text value by parsing
//! the canonical PostgreSQL output). The function is applied to that form, or,
//! for the functions that work on text (partial, email, replace, fixed), to the
//! text form, whose result is then parsed back as the column's type. The
//! result is encoded in the input's format. Whenever a step fails, the answer
//! is NULL: a value is never passed through because it could not be masked.
//!
//! Fixed outputs of [`MaskFn::Redact`]:
//!
//! | type | redacted value |
//! | --- | --- |
//! | text, varchar, name, unknown types (text format) | `****` |
//! | bpchar | one `*` per character (the width is fixed by the type anyway) |
//! | bool | `f` |
//! | bytea | empty (`\x`) |
//! | int2, int4, int8, float4, float8, numeric | `0` |
//! | json, jsonb | `"****"` (a JSON string) |
//! | date | `1970-01-01` |
//! | time | `00:00:00` |
//! | timestamp | `1970-01-01 00:00:00` |
//! | timestamptz | `1970-01-01 00:00:00+00` |
//! | uuid | `00000000-0000-0000-0000-000000000000` |
//! | inet | `0.0.0.0`, or `::` for IPv6, with the value's prefix length |
//!
//! Choices and limits:
//!
//! - Output in text format is the canonical text of the result, so a fixed
//!   `yes` for a bool comes out as `t`, and floats print as PostgreSQL does
//!   (`1e-07`, `1.5e+20`). Bytea always comes out in hex format.
//! - Email splits at the last `@`, so quoted local parts are masked whole.
//! - Text is assumed to be UTF-8 (client_encoding UTF8). A text value that is
//!   not valid UTF-8 can only be redacted, set to a fixed value or nulled.
//! - Dates and times are parsed in the ISO DateStyle only (the output of
//!   `DateStyle = ISO`, also with `T` between date and time). A value in
//!   another style does not parse, so every function that needs the value
//!   returns NULL for it.
//! - Binary timestamptz values are in UTC, so they are truncated in UTC; text
//!   timestamptz values are truncated in the offset they carry, which is kept.
//! - Character functions count Unicode scalar values, not grapheme clusters:
//!   an emoji made of several code points is masked as several characters.
//! - Length limits of `varchar(n)`, `bpchar(n)` and `name` are not re-checked.
//!   The client cannot know the limit from the wire format and does not check
//!   it. Hash gives 64 hex characters (63 for `name`). Partial and email keep
//!   the length of the input.
//! - [`MaskFn::Hash`]: text made only of ASCII digits and the separators
//!   space, `-`, `.`, `/`, `(`, `)`, `+`, with at least one digit, gives the
//!   same shape with other digits: separators stay in place, so phone and card
//!   numbers keep their format. Other text gives 64 lowercase hex characters,
//!   json a JSON string of them. Integers give a non-negative integer of the
//!   same type; int2, int4 and int8 of equal value hash alike modulo the type's
//!   range. A uuid gives an RFC 9562 version 8 uuid made from the digest,
//!   bytea the 32 digest bytes. The output never equals the input (digits are
//!   bumped if they would) and never contains a text input of 4 characters or
//!   more. Other types give NULL.
//! - Round follows `round(numeric, n)`: half away from zero, and a numeric
//!   result has exactly `n` decimals when `n >= 0` (capped at 1000). Floats
//!   are rounded through their decimal form; integers only change for `n < 0`.
//!   A result outside the type's range is NULL.
//! - Bucket is exact on integers, numeric and numeric text (decimal digit
//!   arithmetic, width taken from its shortest decimal form), in `f64` on
//!   floats. A width that is not positive and finite, or of 1e36 or more,
//!   gives NULL. A numeric result keeps the larger of the value's and the
//!   width's decimals; an integer result is rounded down to an integer.
//! - Truncate works on date, timestamp and timestamptz, and on text columns
//!   whose value parses as one of them. Infinity stays infinity.
//! - json and jsonb: partial and email act on the content of a JSON string
//!   value and re-encode it; on other JSON values, and for replace and fixed,
//!   on the JSON text, and a result that is not valid JSON becomes a JSON
//!   string of that text.

use std::fmt;
use std::net::IpAddr;

use bytes::BytesMut;
use postgres_protocol::types as pgt;
use ring::hmac;

/// PostgreSQL type OIDs handled here.
pub mod oid {
    /// `bool`
    pub const BOOL: u32 = 16;
    /// `bytea`
    pub const BYTEA: u32 = 17;
    /// `name`
    pub const NAME: u32 = 19;
    /// `int8`
    pub const INT8: u32 = 20;
    /// `int2`
    pub const INT2: u32 = 21;
    /// `int4`
    pub const INT4: u32 = 23;
    /// `text`
    pub const TEXT: u32 = 25;
    /// `json`
    pub const JSON: u32 = 114;
    /// `float4`
    pub const FLOAT4: u32 = 700;
    /// `float8`
    pub const FLOAT8: u32 = 701;
    /// `inet`
    pub const INET: u32 = 869;
    /// `bpchar` (`char(n)`)
    pub const BPCHAR: u32 = 1042;
    /// `varchar`
    pub const VARCHAR: u32 = 1043;
    /// `date`
    pub const DATE: u32 = 1082;
    /// `time`
    pub const TIME: u32 = 1083;
    /// `timestamp`
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `numeric`
    pub const NUMERIC: u32 = 1700;
    /// `uuid`
    pub const UUID: u32 = 2950;
    /// `jsonb`
    pub const JSONB: u32 = 3802;
}

/// Wire format of a value (the format code of the column in Bind / RowDescription).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Format code 0.
    Text,
    /// Format code 1.
    Binary,
}

/// Part of a date to keep when truncating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatePart {
    /// Keep the year: the first of January.
    Year,
    /// Keep year and month: the first of the month.
    Month,
    /// Keep the date, drop the time of day.
    Day,
}

/// A masking function. Each keeps the column's type.
#[derive(Clone)]
pub enum MaskFn {
    /// A fixed replacement per type (see the table in the module header).
    Redact,
    /// SQL NULL.
    Null,
    /// Keep the first `first` and the last `last` characters, replace each
    /// other character with `mask`. If `first + last` reaches the length,
    /// everything is masked, so the whole value is never shown.
    Partial {
        /// Characters kept at the start.
        first: usize,
        /// Characters kept at the end.
        last: usize,
        /// Replacement for each hidden character.
        mask: char,
    },
    /// Keep the domain of an email, one `*` per character of the local part:
    /// `alice@example.com` gives `*****@example.com`. A value without `@` is
    /// masked entirely, one `*` per character.
    Email,
    /// HMAC-SHA-256 with `key`; deterministic, so joins and GROUP BY on masked
    /// values still work. Outputs per type are in the module header.
    Hash {
        /// The HMAC key; never printed.
        key: HashKey,
    },
    /// A fixed value, given as text and parsed as the column's type; NULL if it
    /// does not parse.
    Fixed(String),
    /// Regex replacement on the text form (`$1` syntax of the regex crate);
    /// NULL if the result is not a valid value of the type.
    Replace {
        /// What to replace.
        pattern: regex::Regex,
        /// The replacement, with `$name` / `$1` references.
        replacement: String,
    },
    /// Truncate dates and timestamps to the year, month or day.
    Truncate(DatePart),
    /// Round numbers to `digits` decimal places (negative: tens, hundreds...).
    Round {
        /// Decimal places to keep.
        digits: i32,
    },
    /// Round numbers down to a multiple of `width`.
    Bucket {
        /// Bucket width, positive.
        width: f64,
    },
}

impl fmt::Debug for MaskFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskFn::Redact => f.write_str("Redact"),
            MaskFn::Null => f.write_str("Null"),
            MaskFn::Partial { first, last, mask } => f
                .debug_struct("Partial")
                .field("first", first)
                .field("last", last)
                .field("mask", mask)
                .finish(),
            MaskFn::Email => f.write_str("Email"),
            MaskFn::Hash { .. } => f.debug_struct("Hash").finish_non_exhaustive(),
            MaskFn::Fixed(v) => f.debug_tuple("Fixed").field(v).finish(),
            MaskFn::Replace {
                pattern,
                replacement,
            } => f
                .debug_struct("Replace")
                .field("pattern", &pattern.as_str())
                .field("replacement", replacement)
                .finish(),
            MaskFn::Truncate(p) => f.debug_tuple("Truncate").field(p).finish(),
            MaskFn::Round { digits } => f.debug_struct("Round").field("digits", digits).finish(),
            MaskFn::Bucket { width } => f.debug_struct("Bucket").field("width", width).finish(),
        }
    }
}

/// Whether the type has an encoder here (so binary values of it can be
/// masked); a binary value of an unsupported type must become NULL when
/// masked.
pub fn supports_binary(type_oid: u32) -> bool {
    Kind::of(type_oid).is_some()
}

/// Masks one non-NULL value of type `type_oid` in `format`. Returns the bytes
/// of the masked value, or `None` for SQL NULL. Never returns the input
/// unchanged unless the function's output really equals it (e.g. Round of an
/// already round number).
pub fn mask_value(f: &MaskFn, type_oid: u32, format: Format, value: &[u8]) -> Option<Vec<u8>> {
    let known = Kind::of(type_oid);
    let kind = match (known, format) {
        (Some(k), _) => k,
        (None, Format::Text) => Kind::Text,
        (None, Format::Binary) => return None,
    };
    // Decoded only by the functions that read the value: Redact and Fixed
    // still work on a value in an unexpected style.
    let decode = || -> Option<(Val, String)> {
        match format {
            Format::Text => {
                let s = std::str::from_utf8(value).ok()?;
                Some((parse_text(kind, s)?, s.to_owned()))
            }
            Format::Binary => {
                let v = decode_binary(kind, value)?;
                let s = render_text(&v);
                Some((v, s))
            }
        }
    };
    // Numbers and dates have no meaning for a type this module does not know.
    let typed = || known.is_some().then(decode).flatten();
    let out = match f {
        MaskFn::Null => return None,
        MaskFn::Redact => redact(kind, value),
        MaskFn::Fixed(text) => coerce_output(kind, text.clone())?,
        MaskFn::Partial { first, last, mask } => {
            let (_, text) = decode()?;
            text_op(kind, &text, |s| partial(s, *first, *last, *mask))?
        }
        MaskFn::Email => text_op(kind, &decode()?.1, email)?,
        MaskFn::Replace {
            pattern,
            replacement,
        } => {
            let (_, text) = decode()?;
            let out = pattern
                .replace_all(&text, replacement.as_str())
                .into_owned();
            coerce_output(kind, out)?
        }
        MaskFn::Hash { key } => hash(kind, key, decode()?.0)?,
        MaskFn::Truncate(part) => truncate(kind, typed()?.0, *part)?,
        MaskFn::Round { digits } => round(kind, typed()?.0, *digits)?,
        MaskFn::Bucket { width } => bucket(kind, typed()?.0, *width)?,
    };
    match format {
        Format::Text => Some(render_text(&out).into_bytes()),
        Format::Binary => encode_binary(kind, &out),
    }
}

/// The types this module knows, by OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Bytea,
    Text,
    Name,
    Bpchar,
    Varchar,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Json,
    Jsonb,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Uuid,
    Inet,
}

impl Kind {
    fn of(type_oid: u32) -> Option<Kind> {
        Some(match type_oid {
            oid::BOOL => Kind::Bool,
            oid::BYTEA => Kind::Bytea,
            oid::NAME => Kind::Name,
            oid::INT8 => Kind::Int8,
            oid::INT2 => Kind::Int2,
            oid::INT4 => Kind::Int4,
            oid::TEXT => Kind::Text,
            oid::JSON => Kind::Json,
            oid::FLOAT4 => Kind::Float4,
            oid::FLOAT8 => Kind::Float8,
            oid::INET => Kind::Inet,
            oid::BPCHAR => Kind::Bpchar,
            oid::VARCHAR => Kind::Varchar,
            oid::DATE => Kind::Date,
            oid::TIME => Kind::Time,
            oid::TIMESTAMP => Kind::Timestamp,
            oid::TIMESTAMPTZ => Kind::TimestampTz,
            oid::NUMERIC => Kind::Numeric,
            oid::UUID => Kind::Uuid,
            oid::JSONB => Kind::Jsonb,
            _ => return None,
        })
    }

    fn is_text(self) -> bool {
        matches!(self, Kind::Text | Kind::Name | Kind::Bpchar | Kind::Varchar)
    }

    fn is_json(self) -> bool {
        matches!(self, Kind::Json | Kind::Jsonb)
    }

    /// Inclusive range of an integer type.
    fn int_range(self) -> Option<(i64, i64)> {
        match self {
            Kind::Int2 => Some((i16::MIN.into(), i16::MAX.into())),
            Kind::Int4 => Some((i32::MIN.into(), i32::MAX.into())),
            Kind::Int8 => Some((i64::MIN, i64::MAX)),
            _ => None,
        }
    }
}

/// A date, timestamp or time offset that may be infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    Fin(i64),
    PosInf,
    NegInf,
}

/// The offset of a text timestamptz, kept as written so that output shows it
/// the way the server did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Offset {
    secs: i64,
    text: String,
}

/// A decoded value. Dates count days and timestamps microseconds from
/// 2000-01-01, as PostgreSQL does.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Bool(bool),
    Bytes(Vec<u8>),
    Str(String),
    Json(String),
    Int(i64),
    Float4(f32),
    Float(f64),
    Num(Num),
    Date(Ext),
    Time(i64),
    Ts(Ext),
    /// Local wall-clock microseconds and the offset; no offset means UTC.
    TsTz(Ext, Option<Offset>),
    Uuid([u8; 16]),
    Inet(IpAddr, u8),
}

// ---------------------------------------------------------------------------
// Text-level functions

fn partial(s: &str, first: usize, last: usize, mask: char) -> String {
    let n = s.chars().count();
    if first.saturating_add(last) >= n {
        return std::iter::repeat_n(mask, n).collect();
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < first || i >= n - last { c } else { mask })
        .collect()
}

fn email(s: &str) -> String {
    match s.rfind('@') {
        Some(at) => {
            let (local, domain) = s.split_at(at);
            let mut out: String = local.chars().map(|_| '*').collect();
            out.push_str(domain);
            out
        }
        None => s.chars().map(|_| '*').collect(),
    }
}

/// Applies a character-level function; for a JSON string it acts on the
/// string's content so that the result stays a JSON string.
fn text_op(kind: Kind, text: &str, op: impl Fn(&str) -> String) -> Option<Val> {
    if kind.is_json() {
        if let Ok(inner) = serde_json::from_str::<String>(text) {
            return serde_json::to_string(&op(&inner)).ok().map(Val::Json);
        }
    }
    coerce_output(kind, op(text))
}

/// Turns the text a function produced into a value of the column's type. JSON
/// that does not parse is wrapped as a JSON string; other types fail.
fn coerce_output(kind: Kind, text: String) -> Option<Val> {
    if kind.is_json() {
        if is_json(&text) {
            return Some(Val::Json(text));
        }
        return serde_json::to_string(&text).ok().map(Val::Json);
    }
    if kind.is_text() {
        return Some(Val::Str(text));
    }
    parse_text(kind, &text)
}

fn is_json(s: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok()
}

// ---------------------------------------------------------------------------
// Redact

fn redact(kind: Kind, input: &[u8]) -> Val {
    match kind {
        Kind::Bool => Val::Bool(false),
        Kind::Bytea => Val::Bytes(Vec::new()),
        Kind::Bpchar => {
            let n = match std::str::from_utf8(input) {
                Ok(s) => s.chars().count(),
                Err(_) => input.len(),
            };
            Val::Str("*".repeat(n))
        }
        Kind::Text | Kind::Name | Kind::Varchar => Val::Str("****".to_owned()),
        Kind::Int2 | Kind::Int4 | Kind::Int8 => Val::Int(0),
        Kind::Float4 => Val::Float4(0.0),
        Kind::Float8 => Val::Float(0.0),
        Kind::Numeric => Val::Num(Num::Fin(Dec::zero())),
        Kind::Json | Kind::Jsonb => Val::Json("\"****\"".to_owned()),
        Kind::Date => Val::Date(Ext::Fin(UNIX_EPOCH_DAYS)),
        Kind::Time => Val::Time(0),
        Kind::Timestamp => Val::Ts(Ext::Fin(UNIX_EPOCH_DAYS * USECS_PER_DAY)),
        Kind::TimestampTz => Val::TsTz(Ext::Fin(UNIX_EPOCH_DAYS * USECS_PER_DAY), None),
        Kind::Uuid => Val::Uuid([0; 16]),
        Kind::Inet => {
            let (v6, bits) = inet_shape(input);
            match v6 {
                true => Val::Inet(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), bits),
                false => Val::Inet(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), bits),
            }
        }
    }
}

/// The address family (IPv6 or not) and prefix length of an inet value in
/// either format. Redaction keeps both, so that clients that map them to
/// types (Python's `ipaddress` has addresses and interfaces of each family)
/// still get the type they expect. A binary value starts with its family
/// byte (2 or 3) and its prefix length; a text value never starts so.
fn inet_shape(input: &[u8]) -> (bool, u8) {
    let (v6, bits) = match input {
        [2, bits, ..] => (false, Some(*bits)),
        [3, bits, ..] => (true, Some(*bits)),
        _ => {
            let text = std::str::from_utf8(input).unwrap_or("");
            let (addr, bits) = text.split_once('/').unwrap_or((text, ""));
            (addr.contains(':'), bits.trim().parse::<u8>().ok())
        }
    };
    let max = if v6 { 128 } else { 32 };
    (v6, bits.filter(|b| *b <= max).unwrap_or(max))
}

// ---------------------------------------------------------------------------
// Hash

const HASH_TRIES: u32 = 8;

fn hmac_digest(key: &hmac::Key, tag: &str, counter: u32, data: &[u8]) -> [u8; 32] {
    // The tag and counter separate the uses of one key, so that a text and a
    // uuid with the same bytes do not hash alike.
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(tag.as_bytes());
    ctx.update(&[0]);
    ctx.update(&counter.to_be_bytes());
    ctx.update(data);
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    let bytes = tag.as_ref();
    let n = bytes.len().min(32);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// An HMAC-SHA-256 key, prepared once when the rule loads (preparing it
/// per value would cost more than the hash itself).
#[derive(Clone)]
pub struct HashKey(hmac::Key);

impl HashKey {
    /// Prepares `bytes` as a key.
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }
}

fn hash(kind: Kind, key: &HashKey, v: Val) -> Option<Val> {
    let key = &key.0;
    match v {
        Val::Str(s) => {
            if let Some(d) = hash_digits(key, &s) {
                return Some(Val::Str(d));
            }
            let len = if kind == Kind::Name { 63 } else { 64 };
            hash_hex(key, "text", &s, len).map(Val::Str)
        }
        Val::Json(s) => {
            let hex = hash_hex(key, "json", &s, 64)?;
            serde_json::to_string(&hex).ok().map(Val::Json)
        }
        Val::Int(i) => {
            let (_, max) = kind.int_range()?;
            // max + 1 is a power of two for every integer type.
            let modulus = (max as u64).wrapping_add(1);
            let d = hmac_digest(key, "int", 0, i.to_string().as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&d[..8]);
            let mut h = (u64::from_be_bytes(first) % modulus) as i64;
            if h == i {
                h = ((h as u64 + 1) % modulus) as i64;
            }
            Some(Val::Int(h))
        }
        Val::Uuid(u) => {
            let d = hmac_digest(key, "uuid", 0, &u);
            let mut out = [0u8; 16];
            out.copy_from_slice(&d[..16]);
            out[6] = (out[6] & 0x0f) | 0x80;
            out[8] = (out[8] & 0x3f) | 0x80;
            Some(Val::Uuid(out))
        }
        Val::Bytes(b) => Some(Val::Bytes(hmac_digest(key, "bytea", 0, &b).to_vec())),
        _ => None,
    }
}

fn is_digit_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '/' | '(' | ')' | '+')
}

/// Digits of the same shape, or `None` when the text is not digit-shaped.
fn hash_digits(key: &hmac::Key, s: &str) -> Option<String> {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0
        || !s
            .chars()
            .all(|c| c.is_ascii_digit() || is_digit_separator(c))
    {
        return None;
    }
    // Rejection sampling keeps the digits uniform; bytes >= 250 are skipped.
    let mut fresh = Vec::with_capacity(digits);
    let mut counter = 0u32;
    while fresh.len() < digits {
        let block = hmac_digest(key, "digits", counter, s.as_bytes());
        fresh.extend(block.iter().filter(|b| **b < 250).map(|b| b'0' + b % 10));
        counter = counter.wrapping_add(1);
    }
    fresh.truncate(digits);
    let mut fresh = fresh.into_iter();
    let mut out: Vec<u8> = s
        .bytes()
        .map(|b| {
            if b.is_ascii_digit() {
                fresh.next().unwrap_or(b'0')
            } else {
                b
            }
        })
        .collect();
    if out == s.as_bytes() {
        // Same length means containment is equality; bump the last digit so
        // the value never shows through.
        if let Some(last) = out.iter_mut().rev().find(|b| b.is_ascii_digit()) {
            *last = if *last == b'9' { b'0' } else { *last + 1 };
        }
    }
    String::from_utf8(out).ok()
}

fn hash_hex(key: &hmac::Key, tag: &str, s: &str, len: usize) -> Option<String> {
    for counter in 0..HASH_TRIES {
        let d = hmac_digest(key, tag, counter, s.as_bytes());
        let mut hex = to_hex(&d);
        hex.truncate(len);
        if s.chars().count() < 4 || !hex.contains(s) {
            return Some(hex);
        }
    }
    None
}

pub(crate) fn to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push(char::from(HEX[usize::from(x >> 4)]));
        out.push(char::from(HEX[usize::from(x & 15)]));
    }
    out
}

// ---------------------------------------------------------------------------
// Truncate, Round, Bucket

fn truncate(kind: Kind, v: Val, part: DatePart) -> Option<Val> {
    match v {
        Val::Date(d) => Some(Val::Date(trunc_days(d, part))),
        Val::Ts(t) => Some(Val::Ts(trunc_usecs(t, part))),
        Val::TsTz(t, off) => Some(Val::TsTz(trunc_usecs(t, part), off)),
        Val::Str(s) if kind.is_text() => {
            let parsed = parse_date(&s)
                .map(Val::Date)
                .or_else(|| parse_timestamp(&s, false).map(|(t, _)| Val::Ts(t)))
                .or_else(|| parse_timestamp(&s, true).map(|(t, o)| Val::TsTz(t, o)))?;
            let out = truncate(Kind::Date, parsed, part)?;
            Some(Val::Str(render_text(&out)))
        }
        _ => None,
    }
}

fn trunc_days(d: Ext, part: DatePart) -> Ext {
    match d {
        Ext::Fin(days) => {
            let (y, m, dd) = civil_from_days(days);
            Ext::Fin(match part {
                DatePart::Year => days_from_civil(y, 1, 1),
                DatePart::Month => days_from_civil(y, m, 1),
                DatePart::Day => days_from_civil(y, m, dd),
            })
        }
        other => other,
    }
}

fn trunc_usecs(t: Ext, part: DatePart) -> Ext {
    match t {
        Ext::Fin(us) => match trunc_days(Ext::Fin(us.div_euclid(USECS_PER_DAY)), part) {
            Ext::Fin(days) => Ext::Fin(days * USECS_PER_DAY),
            other => other,
        },
        other => other,
    }
}

/// Decimal places the numeric functions accept, as in PostgreSQL's display
/// limit.
const MAX_SCALE: i32 = 1000;

fn round(kind: Kind, v: Val, digits: i32) -> Option<Val> {
    let digits = digits.clamp(-MAX_SCALE * 200, MAX_SCALE);
    match v {
        Val::Int(i) => {
            if digits >= 0 {
                return Some(Val::Int(i));
            }
            let r = Dec::from_i64(i).round(digits);
            int_in_range(kind, r.to_i64()?)
        }
        Val::Float(x) => round_float(x, digits).map(Val::Float),
        Val::Float4(x) => {
            let r = round_float(x.into(), digits)? as f32;
            r.is_finite().then_some(Val::Float4(r))
        }
        Val::Num(n) => Some(Val::Num(n.round(digits))),
        Val::Str(s) if kind.is_text() => {
            let n = Num::parse(&s)?;
            Some(Val::Str(n.round(digits).render()))
        }
        _ => None,
    }
}

fn round_float(x: f64, digits: i32) -> Option<f64> {
    if !x.is_finite() {
        return Some(x);
    }
    let r = if digits >= 0 {
        // Formatting rounds the exact binary value, which avoids the error of
        // multiplying by a power of ten.
        let places = usize::try_from(digits.min(340)).ok()?;
        format!("{x:.places$}").parse::<f64>().ok()?
    } else {
        let p = 10f64.powi(digits.saturating_neg());
        if !p.is_finite() {
            0.0
        } else {
            (x / p).round() * p
        }
    };
    r.is_finite().then_some(r)
}

fn bucket(kind: Kind, v: Val, width: f64) -> Option<Val> {
    if !(width.is_finite() && width > 0.0) {
        return None;
    }
    match v {
        Val::Int(i) => {
            let b = Dec::from_i64(i).bucket(width)?.floor_int();
            int_in_range(kind, b.to_i64()?)
        }
        Val::Float(x) => bucket_float(x, width).map(Val::Float),
        Val::Float4(x) => {
            let r = bucket_float(x.into(), width)? as f32;
            r.is_finite().then_some(Val::Float4(r))
        }
        Val::Num(Num::Fin(d)) => Some(Val::Num(Num::Fin(d.bucket(width)?))),
        Val::Num(special) => Some(Val::Num(special)),
        Val::Str(s) if kind.is_text() => match Num::parse(&s)? {
            Num::Fin(d) => Some(Val::Str(Num::Fin(d.bucket(width)?).render())),
            special => Some(Val::Str(special.render())),
        },
        _ => None,
    }
}

fn bucket_float(x: f64, width: f64) -> Option<f64> {
    if !x.is_finite() {
        return Some(x);
    }
    let r = (x / width).floor() * width;
    r.is_finite().then_some(r)
}

fn int_in_range(kind: Kind, i: i64) -> Option<Val> {
    let (lo, hi) = kind.int_range()?;
    (lo..=hi).contains(&i).then_some(Val::Int(i))
}

// ---------------------------------------------------------------------------
// Numeric: decimal digits, with PostgreSQL's special values.

/// A numeric value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Num {
    Fin(Dec),
    NaN,
    PosInf,
    NegInf,
}

/// A finite decimal: `int` has no leading zeros (empty for zero), `frac` holds
/// exactly the displayed decimals. Digits are 0..=9.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dec {
    neg: bool,
    int: Vec<u8>,
    frac: Vec<u8>,
}

/// Longest text accepted for a number, to bound work on hostile input.
const MAX_NUM_DIGITS: usize = 200_000;

impl Num {
    fn parse(s: &str) -> Option<Num> {
        let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
        match t.to_ascii_lowercase().as_str() {
            "nan" => return Some(Num::NaN),
            "infinity" | "+infinity" | "inf" | "+inf" => return Some(Num::PosInf),
            "-infinity" | "-inf" => return Some(Num::NegInf),
            _ => {}
        }
        Dec::parse(t).map(Num::Fin)
    }

    fn render(&self) -> String {
        match self {
            Num::Fin(d) => d.render(),
            Num::NaN => "NaN".to_owned(),
            Num::PosInf => "Infinity".to_owned(),
            Num::NegInf => "-Infinity".to_owned(),
        }
    }

    fn round(self, digits: i32) -> Num {
        match self {
            Num::Fin(d) => Num::Fin(d.round(digits)),
            other => other,
        }
    }
}

impl Dec {
    fn zero() -> Dec {
        Dec {
            neg: false,
            int: Vec::new(),
            frac: Vec::new(),
        }
    }

    fn from_i64(i: i64) -> Dec {
        let int = i
            .unsigned_abs()
            .to_string()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        Dec {
            neg: i < 0,
            int,
            frac: Vec::new(),
        }
        .normalized()
    }

    /// Strips leading zeros and the sign of zero.
    fn normalized(mut self) -> Dec {
        let lead = self.int.iter().take_while(|d| **d == 0).count();
        self.int.drain(..lead);
        if self.int.is_empty() && self.frac.iter().all(|d| *d == 0) {
            self.neg = false;
        }
        self
    }

    /// Parses `[+-]digits[.digits][e[+-]digits]`, at least one digit.
    fn parse(t: &str) -> Option<Dec> {
        let b = t.as_bytes();
        if b.len() > MAX_NUM_DIGITS {
            return None;
        }
        let mut i = 0;
        let mut neg = false;
        if let Some(&c) = b.first() {
            if c == b'+' || c == b'-' {
                neg = c == b'-';
                i = 1;
            }
        }
        let mut int = Vec::new();
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            int.push(c - b'0');
            i += 1;
        }
        let mut frac = Vec::new();
        if b.get(i) == Some(&b'.') {
            i += 1;
            while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
                frac.push(c - b'0');
                i += 1;
            }
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if matches!(b.get(i), Some(b'e') | Some(b'E')) {
            i += 1;
            let mut eneg = false;
            if let Some(&c) = b.get(i) {
                if c == b'+' || c == b'-' {
                    eneg = c == b'-';
                    i += 1;
                }
            }
            let start = i;
            while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
                exp = exp.saturating_mul(10).saturating_add(i64::from(c - b'0'));
                i += 1;
            }
            if i == start || exp > i64::from(MAX_SCALE) {
                return None;
            }
            if eneg {
                exp = -exp;
            }
        }
        if i != b.len() {
            return None;
        }
        // Move the decimal point by the exponent.
        let shift = usize::try_from(exp.unsigned_abs()).ok()?;
        if exp > 0 {
            let take = shift.min(frac.len());
            int.extend(frac.drain(..take));
            int.resize(int.len() + (shift - take), 0);
        } else if exp < 0 {
            let take = shift.min(int.len());
            let moved = int.split_off(int.len() - take);
            let mut f = vec![0; shift - take];
            f.extend(moved);
            f.extend(frac);
            frac = f;
        }
        let d = Dec { neg, int, frac };
        Some(d.normalized())
    }

    fn render(&self) -> String {
        let mut s = String::with_capacity(self.int.len() + self.frac.len() + 3);
        if self.neg {
            s.push('-');
        }
        if self.int.is_empty() {
            s.push('0');
        }
        s.extend(self.int.iter().map(|d| char::from(b'0' + d)));
        if !self.frac.is_empty() {
            s.push('.');
            s.extend(self.frac.iter().map(|d| char::from(b'0' + d)));
        }
        s
    }

    /// Rounds half away from zero, as `round(numeric, n)` does.
    fn round(mut self, digits: i32) -> Dec {
        if digits >= 0 {
            let keep = usize::try_from(digits).unwrap_or(0);
            if keep >= self.frac.len() {
                self.frac.resize(keep, 0);
                return self;
            }
            let up = self.frac.get(keep).is_some_and(|d| *d >= 5);
            self.frac.truncate(keep);
            if up {
                let mut all = std::mem::take(&mut self.int);
                all.extend_from_slice(&self.frac);
                increment(&mut all);
                let split = all.len() - keep;
                self.frac = all.split_off(split);
                self.int = all;
            }
            return self.normalized();
        }
        let k = usize::try_from(digits.unsigned_abs()).unwrap_or(usize::MAX);
        self.frac.clear();
        if k > self.int.len() {
            return Dec::zero();
        }
        let pos = self.int.len() - k;
        let up = self.int.get(pos).is_some_and(|d| *d >= 5);
        let mut head = self.int[..pos].to_vec();
        if up {
            increment(&mut head);
        }
        head.resize(head.len() + k, 0);
        self.int = head;
        self.normalized()
    }

    /// Largest multiple of `width` not above the value, exact in decimal.
    fn bucket(&self, width: f64) -> Option<Dec> {
        // The shortest decimal form of the width is what a rule author wrote.
        let w = Dec::parse(&format!("{width}"))?;
        let k = w.frac.len();
        let mut wdigits = w.int.clone();
        wdigits.extend_from_slice(&w.frac);
        let wint = digits_to_u128(&wdigits)?;
        if wint == 0 {
            return None;
        }
        // y = self * 10^k; floor(y / W) = floor(floor(y) / W) for integer W.
        let mut mag = self.int.clone();
        let mut rest_nonzero = false;
        for i in 0..k {
            mag.push(self.frac.get(i).copied().unwrap_or(0));
        }
        if self.frac.len() > k {
            rest_nonzero = self.frac[k..].iter().any(|d| *d != 0);
        }
        if self.neg && rest_nonzero {
            increment(&mut mag);
        }
        let (mut q, rem) = div_u128(&mag, wint);
        if self.neg && rem != 0 {
            increment(&mut q);
        }
        let mut r = mul_u128(&q, wint);
        let scale = k.max(self.frac.len());
        // r is scaled by 10^k; split off k decimals and pad to the scale.
        if r.len() < k {
            let mut padded = vec![0; k - r.len()];
            padded.extend_from_slice(&r);
            r = padded;
        }
        let mut frac = r.split_off(r.len() - k);
        frac.resize(scale, 0);
        Some(
            Dec {
                neg: self.neg,
                int: r,
                frac,
            }
            .normalized(),
        )
    }

    /// Rounds toward negative infinity to an integer.
    fn floor_int(mut self) -> Dec {
        let has_frac = self.frac.iter().any(|d| *d != 0);
        self.frac.clear();
        if self.neg && has_frac {
            increment(&mut self.int);
        }
        self.normalized()
    }

    fn to_i64(&self) -> Option<i64> {
        if self.frac.iter().any(|d| *d != 0) {
            return None;
        }
        let mut v: i128 = 0;
        for d in &self.int {
            v = v.checked_mul(10)?.checked_add(i128::from(*d))?;
            if v > i128::from(u64::MAX) {
                return None;
            }
        }
        if self.neg {
            v = -v;
        }
        i64::try_from(v).ok()
    }
}

/// Adds one to a big-endian decimal digit string, growing it on carry.
fn increment(digits: &mut Vec<u8>) {
    for d in digits.iter_mut().rev() {
        if *d == 9 {
            *d = 0;
        } else {
            *d += 1;
            return;
        }
    }
    digits.insert(0, 1);
}

/// Up to 36 digits, so that digit arithmetic below cannot overflow.
fn digits_to_u128(digits: &[u8]) -> Option<u128> {
    let lead = digits.iter().take_while(|d| **d == 0).count();
    let digits = &digits[lead..];
    if digits.len() > 36 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u128, |acc, d| acc * 10 + u128::from(*d)),
    )
}

fn div_u128(digits: &[u8], w: u128) -> (Vec<u8>, u128) {
    let mut q = Vec::with_capacity(digits.len());
    let mut rem: u128 = 0;
    for d in digits {
        // rem < w <= 10^36, so rem * 10 + 9 fits.
        let cur = rem * 10 + u128::from(*d);
        q.push((cur / w) as u8);
        rem = cur % w;
    }
    let lead = q.iter().take_while(|d| **d == 0).count();
    q.drain(..lead);
    (q, rem)
}

fn mul_u128(digits: &[u8], w: u128) -> Vec<u8> {
    let mut out = Vec::with_capacity(digits.len() + 40);
    let mut carry: u128 = 0;
    for d in digits.iter().rev() {
        // d * w + carry < 10 * w <= 10^37.
        let cur = u128::from(*d) * w + carry;
        out.push((cur % 10) as u8);
        carry = cur / 10;
    }
    while carry > 0 {
        out.push((carry % 10) as u8);
        carry /= 10;
    }
    out.reverse();
    let lead = out.iter().take_while(|d| **d == 0).count();
    out.drain(..lead);
    out
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_DSCALE_MAX: u16 = 0x3FFF;

fn numeric_from_binary(buf: &[u8]) -> Option<Num> {
    let word = |i: usize| -> Option<u16> {
        let hi = *buf.get(i * 2)?;
        let lo = *buf.get(i * 2 + 1)?;
        Some(u16::from_be_bytes([hi, lo]))
    };
    let ndigits = usize::try_from(word(0)? as i16).ok()?;
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = word(3)?;
    if buf.len() != 8 + ndigits * 2 {
        return None;
    }
    match sign {
        NUMERIC_NAN => return Some(Num::NaN),
        NUMERIC_PINF => return Some(Num::PosInf),
        NUMERIC_NINF => return Some(Num::NegInf),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return None,
    }
    if dscale > NUMERIC_DSCALE_MAX {
        return None;
    }
    let mut groups = Vec::with_capacity(ndigits);
    for i in 0..ndigits {
        let g = word(4 + i)?;
        if g > 9999 {
            return None;
        }
        groups.push(g);
    }
    // Group j stands for 10000^(weight - j).
    let group_at = |p: i64| -> u16 {
        let j = weight - p;
        usize::try_from(j)
            .ok()
            .and_then(|j| groups.get(j).copied())
            .unwrap_or(0)
    };
    let mut int = Vec::new();
    let mut p = weight;
    while p >= 0 {
        push_group(&mut int, group_at(p));
        p -= 1;
    }
    let scale = usize::from(dscale);
    let mut frac = Vec::with_capacity(scale + 4);
    let mut p = -1;
    while frac.len() < scale {
        push_group(&mut frac, group_at(p));
        p -= 1;
    }
    frac.truncate(scale);
    Some(Num::Fin(
        Dec {
            neg: sign == NUMERIC_NEG,
            int,
            frac,
        }
        .normalized(),
    ))
}

fn push_group(out: &mut Vec<u8>, g: u16) {
    let g = g.min(9999);
    out.extend_from_slice(&[
        (g / 1000) as u8,
        (g / 100 % 10) as u8,
        (g / 10 % 10) as u8,
        (g % 10) as u8,
    ]);
}

fn numeric_to_binary(n: &Num) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(16);
    let header = |out: &mut Vec<u8>, nd: i16, w: i16, sign: u16, dscale: u16| {
        out.extend_from_slice(&nd.to_be_bytes());
        out.extend_from_slice(&w.to_be_bytes());
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&dscale.to_be_bytes());
    };
    let d = match n {
        Num::NaN => {
            header(&mut out, 0, 0, NUMERIC_NAN, 0);
            return Some(out);
        }
        Num::PosInf => {
            header(&mut out, 0, 0, NUMERIC_PINF, 0);
            return Some(out);
        }
        Num::NegInf => {
            header(&mut out, 0, 0, NUMERIC_NINF, 0);
            return Some(out);
        }
        Num::Fin(d) => d,
    };
    let dscale = u16::try_from(d.frac.len())
        .ok()
        .filter(|s| *s <= NUMERIC_DSCALE_MAX)?;
    // Align the digits on the decimal point in groups of four.
    let int_pad = (4 - d.int.len() % 4) % 4;
    let mut all = vec![0u8; int_pad];
    all.extend_from_slice(&d.int);
    let int_groups = all.len() / 4;
    all.extend_from_slice(&d.frac);
    all.resize(all.len().div_ceil(4) * 4, 0);
    let mut groups: Vec<u16> = all
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |acc, x| acc * 10 + u16::from(*x)))
        .collect();
    let mut weight = i64::try_from(int_groups).ok()? - 1;
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= i64::try_from(lead).ok()?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        header(&mut out, 0, 0, NUMERIC_POS, dscale);
        return Some(out);
    }
    let nd = i16::try_from(groups.len()).ok()?;
    let w = i16::try_from(weight).ok()?;
    let sign = if d.neg { NUMERIC_NEG } else { NUMERIC_POS };
    header(&mut out, nd, w, sign, dscale);
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Dates and times

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// 1970-01-01 in days from 2000-01-01.
const UNIX_EPOCH_DAYS: i64 = -10_957;
/// Year range accepted in text; PostgreSQL's own range is 4713 BC to 294276
/// AD for timestamps and 5874897 AD for dates.
const MIN_YEAR: i64 = -4713;
const MAX_DATE_YEAR: i64 = 5_874_897;
const MAX_TS_YEAR: i64 = 294_276;

/// Days from 2000-01-01 of a proleptic Gregorian date (year 0 is 1 BC).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Count from 0000-03-01 so that the leap day ends each 400-year era.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 730_425
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 730_425;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// A cursor over ASCII text for the date and time parsers.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str) -> Self {
        Cur {
            b: s.as_bytes(),
            i: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Between `min` and `max` digits; returns the value and the count.
    fn num(&mut self, min: usize, max: usize) -> Option<(i64, usize)> {
        let start = self.i;
        let mut v: i64 = 0;
        while self.i - start < max {
            match self.peek() {
                Some(c) if c.is_ascii_digit() => {
                    v = v * 10 + i64::from(c - b'0');
                    self.i += 1;
                }
                _ => break,
            }
        }
        let n = self.i - start;
        (n >= min).then_some((v, n))
    }

    fn rest(&self) -> &'a [u8] {
        self.b.get(self.i..).unwrap_or(&[])
    }

    fn done(&self) -> bool {
        self.i >= self.b.len()
    }
}

/// `YYYY-MM-DD` without the era; returns the year as written.
fn parse_ymd(c: &mut Cur<'_>) -> Option<(i64, u32, u32)> {
    let (y, _) = c.num(1, 7)?;
    if !c.eat(b'-') {
        return None;
    }
    let (m, mn) = c.num(1, 2)?;
    if !c.eat(b'-') {
        return None;
    }
    let (d, dn) = c.num(1, 2)?;
    if mn != 2 || dn != 2 {
        return None;
    }
    let m = u32::try_from(m).ok()?;
    let d = u32::try_from(d).ok()?;
    Some((y, m, d))
}

/// Checks a written date and returns its days; `bc` years count back.
fn ymd_days(y: i64, m: u32, d: u32, bc: bool, max_year: i64) -> Option<i64> {
    if y == 0 {
        return None;
    }
    let y = if bc { 1 - y } else { y };
    if !(MIN_YEAR..=max_year).contains(&y) || !(1..=12).contains(&m) {
        return None;
    }
    if d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

fn eat_bc(c: &mut Cur<'_>) -> bool {
    if c.rest() == b" BC" {
        c.i += 3;
        true
    } else {
        false
    }
}

fn parse_infinity(s: &str) -> Option<Ext> {
    match s {
        "infinity" | "+infinity" => Some(Ext::PosInf),
        "-infinity" => Some(Ext::NegInf),
        _ => None,
    }
}

fn parse_date(s: &str) -> Option<Ext> {
    if let Some(e) = parse_infinity(s) {
        return Some(e);
    }
    let mut c = Cur::new(s);
    let (y, m, d) = parse_ymd(&mut c)?;
    let bc = eat_bc(&mut c);
    if !c.done() {
        return None;
    }
    ymd_days(y, m, d, bc, MAX_DATE_YEAR).map(Ext::Fin)
}

/// `HH:MM[:SS[.ffffff]]` as microseconds since midnight, up to 24:00:00.
fn parse_tod(c: &mut Cur<'_>) -> Option<i64> {
    let (h, hn) = c.num(1, 2)?;
    if !c.eat(b':') {
        return None;
    }
    let (mi, mn) = c.num(2, 2)?;
    let mut sec = 0;
    let mut frac = 0;
    if c.eat(b':') {
        let (s, _) = c.num(2, 2)?;
        sec = s;
        if c.eat(b'.') {
            let (f, fn_) = c.num(1, 6)?;
            frac = f * 10i64.pow(6 - u32::try_from(fn_).ok()?);
        }
    }
    if hn == 0 || mn != 2 || h > 24 || mi > 59 || sec > 59 {
        return None;
    }
    let us = ((h * 60 + mi) * 60 + sec) * USECS_PER_SEC + frac;
    (us <= USECS_PER_DAY).then_some(us)
}

fn parse_time(s: &str) -> Option<i64> {
    let mut c = Cur::new(s);
    let us = parse_tod(&mut c)?;
    c.done().then_some(us)
}

/// A timestamp, with an offset when `tz`; the offset is required then.
fn parse_timestamp(s: &str, tz: bool) -> Option<(Ext, Option<Offset>)> {
    if let Some(e) = parse_infinity(s) {
        return Some((e, None));
    }
    let mut c = Cur::new(s);
    let (y, m, d) = parse_ymd(&mut c)?;
    if !(c.eat(b' ') || c.eat(b'T')) {
        return None;
    }
    let tod = parse_tod(&mut c)?;
    let offset = if tz {
        let start = c.i;
        let secs = if c.eat(b'Z') {
            0
        } else {
            let neg = match c.peek() {
                Some(b'+') => false,
                Some(b'-') => true,
                _ => return None,
            };
            c.i += 1;
            let (h, _) = c.num(2, 2)?;
            let mut secs = h * 3600;
            if c.eat(b':') {
                let (mi, _) = c.num(2, 2)?;
                secs += mi * 60;
                if c.eat(b':') {
                    let (se, _) = c.num(2, 2)?;
                    secs += se;
                }
            }
            if secs > 16 * 3600 {
                return None;
            }
            if neg {
                -secs
            } else {
                secs
            }
        };
        let text = std::str::from_utf8(c.b.get(start..c.i)?).ok()?.to_owned();
        Some(Offset { secs, text })
    } else {
        None
    };
    let bc = eat_bc(&mut c);
    if !c.done() {
        return None;
    }
    let days = ymd_days(y, m, d, bc, MAX_TS_YEAR)?;
    Some((Ext::Fin(days * USECS_PER_DAY + tod), offset))
}

fn render_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn render_tod(us: i64) -> String {
    let secs = us / USECS_PER_SEC;
    let frac = us % USECS_PER_SEC;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let f = format!(".{frac:06}");
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

fn render_timestamp(t: Ext, offset: Option<&str>) -> String {
    match t {
        Ext::PosInf => "infinity".to_owned(),
        Ext::NegInf => "-infinity".to_owned(),
        Ext::Fin(us) => {
            let days = us.div_euclid(USECS_PER_DAY);
            let tod = us.rem_euclid(USECS_PER_DAY);
            let (y, m, d) = civil_from_days(days);
            let (year, bc) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
            format!(
                "{year:04}-{m:02}-{d:02} {}{}{bc}",
                render_tod(tod),
                offset.unwrap_or("")
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Text form

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Hex (`\x...`) or escape format bytea text.
fn parse_bytea(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if let Some(hex) = b.strip_prefix(b"\\x") {
        let digits: Vec<u8> = hex
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        return digits
            .chunks(2)
            .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
            .collect();
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
            continue;
        }
        let oct = b.get(i + 1..i + 4)?;
        if !oct.iter().all(|c| (b'0'..=b'7').contains(c)) || oct[0] > b'3' {
            return None;
        }
        out.push((oct[0] - b'0') << 6 | (oct[1] - b'0') << 3 | (oct[2] - b'0'));
        i += 4;
    }
    Some(out)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return None;
    }
    let hex: Vec<u8> = s.bytes().filter(|c| *c != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, p) in out.iter_mut().zip(hex.chunks(2)) {
        *o = hex_val(p[0])? << 4 | hex_val(p[1])?;
    }
    Some(out)
}

fn parse_inet(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, mask) = match s.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let mask = match mask {
        Some(m) if !m.is_empty() && m.bytes().all(|c| c.is_ascii_digit()) => m.parse().ok()?,
        Some(_) => return None,
        None => max,
    };
    (mask <= max).then_some((addr, mask))
}

/// PostgreSQL's spellings of the special float values.
fn float_special(t: &str) -> Option<f64> {
    match t.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Rust's float parser accepts words PostgreSQL does not; only plain numbers
/// go to it.
fn plain_number(t: &str) -> bool {
    t.bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
}

fn parse_float8(s: &str) -> Option<f64> {
    let t = s.trim();
    if let Some(v) = float_special(t) {
        return Some(v);
    }
    let v = t.parse::<f64>().ok().filter(|_| plain_number(t))?;
    v.is_finite().then_some(v)
}

fn parse_float4(s: &str) -> Option<f32> {
    let t = s.trim();
    if let Some(v) = float_special(t) {
        return Some(v as f32);
    }
    let v = t.parse::<f32>().ok().filter(|_| plain_number(t))?;
    v.is_finite().then_some(v)
}

/// Parses the text form of a value of `kind`.
fn parse_text(kind: Kind, s: &str) -> Option<Val> {
    Some(match kind {
        Kind::Text | Kind::Name | Kind::Bpchar | Kind::Varchar => Val::Str(s.to_owned()),
        Kind::Json | Kind::Jsonb => Val::Json(s.to_owned()),
        Kind::Bool => Val::Bool(parse_bool(s)?),
        Kind::Bytea => Val::Bytes(parse_bytea(s)?),
        Kind::Int2 => Val::Int(s.trim().parse::<i16>().ok()?.into()),
        Kind::Int4 => Val::Int(s.trim().parse::<i32>().ok()?.into()),
        Kind::Int8 => Val::Int(s.trim().parse::<i64>().ok()?),
        Kind::Float4 => Val::Float4(parse_float4(s)?),
        Kind::Float8 => Val::Float(parse_float8(s)?),
        Kind::Numeric => Val::Num(Num::parse(s)?),
        Kind::Date => Val::Date(parse_date(s)?),
        Kind::Time => Val::Time(parse_time(s)?),
        Kind::Timestamp => Val::Ts(parse_timestamp(s, false)?.0),
        Kind::TimestampTz => {
            let (t, o) = parse_timestamp(s, true)?;
            Val::TsTz(t, o)
        }
        Kind::Uuid => Val::Uuid(parse_uuid(s)?),
        Kind::Inet => {
            let (a, m) = parse_inet(s)?;
            Val::Inet(a, m)
        }
    })
}

/// PostgreSQL's float output: shortest exact digits, in exponent form below
/// 1e-4 and from 10^`digits` up (15 for float8, 6 for float4).
fn render_float(x: f64, plain: String, exp: String, digits: i32) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    let Some((mantissa, e)) = exp.split_once('e') else {
        return plain;
    };
    let Ok(e) = e.parse::<i32>() else {
        return plain;
    };
    if x == 0.0 || (-4..digits).contains(&e) {
        return plain;
    }
    let sign = if e < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", e.unsigned_abs())
}

fn render_uuid(u: &[u8; 16]) -> String {
    let h = to_hex(u);
    let part = |r: std::ops::Range<usize>| h.get(r).unwrap_or("");
    format!(
        "{}-{}-{}-{}-{}",
        part(0..8),
        part(8..12),
        part(12..16),
        part(16..20),
        part(20..32)
    )
}

/// The canonical text form (what PostgreSQL prints with DateStyle ISO).
fn render_text(v: &Val) -> String {
    match v {
        Val::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Val::Bytes(b) => format!("\\x{}", to_hex(b)),
        Val::Str(s) | Val::Json(s) => s.clone(),
        Val::Int(i) => i.to_string(),
        Val::Float(x) => render_float(*x, format!("{x}"), format!("{x:e}"), 15),
        Val::Float4(x) => render_float(f64::from(*x), format!("{x}"), format!("{x:e}"), 6),
        Val::Num(n) => n.render(),
        Val::Date(Ext::Fin(d)) => render_date(*d),
        Val::Date(Ext::PosInf) => "infinity".to_owned(),
        Val::Date(Ext::NegInf) => "-infinity".to_owned(),
        Val::Time(us) => render_tod(*us),
        Val::Ts(t) => render_timestamp(*t, None),
        Val::TsTz(t, off) => {
            let off = off.as_ref().map_or("+00", |o| o.text.as_str());
            render_timestamp(*t, Some(off))
        }
        Val::Uuid(u) => render_uuid(u),
        Val::Inet(a, m) => {
            let max = if a.is_ipv4() { 32 } else { 128 };
            if *m == max {
                a.to_string()
            } else {
                format!("{a}/{m}")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Binary form

fn decode_ext(v: i64, pos: i64, neg: i64) -> Ext {
    if v == pos {
        Ext::PosInf
    } else if v == neg {
        Ext::NegInf
    } else {
        Ext::Fin(v)
    }
}

fn decode_binary(kind: Kind, b: &[u8]) -> Option<Val> {
    Some(match kind {
        Kind::Bool => Val::Bool(pgt::bool_from_sql(b).ok()?),
        Kind::Bytea => Val::Bytes(pgt::bytea_from_sql(b).to_vec()),
        Kind::Text | Kind::Name | Kind::Bpchar | Kind::Varchar => {
            Val::Str(pgt::text_from_sql(b).ok()?.to_owned())
        }
        Kind::Json => Val::Json(pgt::text_from_sql(b).ok()?.to_owned()),
        Kind::Jsonb => match b.split_first() {
            Some((1, rest)) => Val::Json(pgt::text_from_sql(rest).ok()?.to_owned()),
            _ => return None,
        },
        Kind::Int2 => Val::Int(pgt::int2_from_sql(b).ok()?.into()),
        Kind::Int4 => Val::Int(pgt::int4_from_sql(b).ok()?.into()),
        Kind::Int8 => Val::Int(pgt::int8_from_sql(b).ok()?),
        Kind::Float4 => Val::Float4(pgt::float4_from_sql(b).ok()?),
        Kind::Float8 => Val::Float(pgt::float8_from_sql(b).ok()?),
        Kind::Numeric => Val::Num(numeric_from_binary(b)?),
        Kind::Date => {
            let d = i64::from(pgt::date_from_sql(b).ok()?);
            Val::Date(decode_ext(d, i32::MAX.into(), i32::MIN.into()))
        }
        Kind::Time => {
            let t = pgt::time_from_sql(b).ok()?;
            if !(0..=USECS_PER_DAY).contains(&t) {
                return None;
            }
            Val::Time(t)
        }
        Kind::Timestamp | Kind::TimestampTz => {
            let t = pgt::timestamp_from_sql(b).ok()?;
            let e = decode_ext(t, i64::MAX, i64::MIN);
            if let Ext::Fin(us) = e {
                // Keep day arithmetic far from overflow.
                if us.unsigned_abs() > (1u64 << 62) {
                    return None;
                }
            }
            if kind == Kind::Timestamp {
                Val::Ts(e)
            } else {
                Val::TsTz(e, None)
            }
        }
        Kind::Uuid => Val::Uuid(pgt::uuid_from_sql(b).ok()?),
        Kind::Inet => {
            let inet = pgt::inet_from_sql(b).ok()?;
            Val::Inet(inet.addr(), inet.netmask())
        }
    })
}

fn encode_ext(e: Ext, pos: i64, neg: i64) -> Option<i64> {
    match e {
        Ext::PosInf => Some(pos),
        Ext::NegInf => Some(neg),
        Ext::Fin(v) => (v > neg && v < pos).then_some(v),
    }
}

/// Encodes `v` as a binary value of `kind`; `None` when it does not fit.
fn encode_binary(kind: Kind, v: &Val) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    match (kind, v) {
        (Kind::Bool, Val::Bool(b)) => pgt::bool_to_sql(*b, &mut buf),
        (Kind::Bytea, Val::Bytes(b)) => pgt::bytea_to_sql(b, &mut buf),
        (Kind::Text | Kind::Name | Kind::Bpchar | Kind::Varchar, Val::Str(s)) => {
            pgt::text_to_sql(s, &mut buf)
        }
        (Kind::Json, Val::Json(s)) => pgt::text_to_sql(s, &mut buf),
        (Kind::Jsonb, Val::Json(s)) => {
            buf.extend_from_slice(&[1]);
            pgt::text_to_sql(s, &mut buf);
        }
        (Kind::Int2, Val::Int(i)) => pgt::int2_to_sql(i16::try_from(*i).ok()?, &mut buf),
        (Kind::Int4, Val::Int(i)) => pgt::int4_to_sql(i32::try_from(*i).ok()?, &mut buf),
        (Kind::Int8, Val::Int(i)) => pgt::int8_to_sql(*i, &mut buf),
        (Kind::Float4, Val::Float4(x)) => pgt::float4_to_sql(*x, &mut buf),
        (Kind::Float8, Val::Float(x)) => pgt::float8_to_sql(*x, &mut buf),
        (Kind::Numeric, Val::Num(n)) => return numeric_to_binary(n),
        (Kind::Date, Val::Date(d)) => {
            let d = encode_ext(*d, i32::MAX.into(), i32::MIN.into())?;
            pgt::date_to_sql(i32::try_from(d).ok()?, &mut buf)
        }
        (Kind::Time, Val::Time(t)) => pgt::time_to_sql(*t, &mut buf),
        (Kind::Timestamp, Val::Ts(t)) => {
            pgt::timestamp_to_sql(encode_ext(*t, i64::MAX, i64::MIN)?, &mut buf)
        }
        (Kind::TimestampTz, Val::TsTz(t, off)) => {
            // Binary timestamptz is UTC: undo the offset a text value carried.
            let utc = match (t, off) {
                (Ext::Fin(us), Some(o)) => {
                    Ext::Fin(us.checked_sub(o.secs.checked_mul(USECS_PER_SEC)?)?)
                }
                (other, _) => *other,
            };
            pgt::timestamp_to_sql(encode_ext(utc, i64::MAX, i64::MIN)?, &mut buf)
        }
        (Kind::Uuid, Val::Uuid(u)) => pgt::uuid_to_sql(*u, &mut buf),
        (Kind::Inet, Val::Inet(a, m)) => pgt::inet_to_sql(*a, *m, &mut buf),
        _ => return None,
    }
    Some(buf.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(k: &str) -> MaskFn {
        MaskFn::Hash {
            key: HashKey::new(k.as_bytes()),
        }
    }

    fn txt(f: &MaskFn, ty: u32, v: &str) -> Option<String> {
        mask_value(f, ty, Format::Text, v.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    fn bin(f: &MaskFn, ty: u32, v: &[u8]) -> Option<Vec<u8>> {
        mask_value(f, ty, Format::Binary, v)
    }

    /// Binary value of the text form, through Fixed (parse and encode).
    fn enc(ty: u32, text: &str) -> Vec<u8> {
        bin(&MaskFn::Fixed(text.into()), ty, b"").unwrap()
    }

    /// Text form of a binary value, through the binary decoder.
    fn dec(ty: u32, b: &[u8]) -> String {
        let kind = Kind::of(ty).unwrap();
        render_text(&decode_binary(kind, b).unwrap())
    }

    fn num_bin(nd: i16, w: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&nd.to_be_bytes());
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    const ALL_OIDS: [u32; 20] = [
        oid::BOOL,
        oid::BYTEA,
        oid::NAME,
        oid::INT8,
        oid::INT2,
        oid::INT4,
        oid::TEXT,
        oid::JSON,
        oid::FLOAT4,
        oid::FLOAT8,
        oid::INET,
        oid::BPCHAR,
        oid::VARCHAR,
        oid::DATE,
        oid::TIME,
        oid::TIMESTAMP,
        oid::TIMESTAMPTZ,
        oid::NUMERIC,
        oid::UUID,
        oid::JSONB,
    ];

    /// One sample text value per type.
    fn sample(ty: u32) -> &'static str {
        match ty {
            oid::BOOL => "t",
            oid::BYTEA => "\\x0102ff",
            oid::INT2 => "-123",
            oid::INT4 => "42",
            oid::INT8 => "9000000000",
            oid::FLOAT4 => "1.5",
            oid::FLOAT8 => "-2.25",
            oid::NUMERIC => "12.5",
            oid::JSON => "{\"a\": 1}",
            oid::JSONB => "{\"a\": 1}",
            oid::DATE => "2024-03-05",
            oid::TIME => "14:07:09.5",
            oid::TIMESTAMP => "2024-03-05 14:07:09.123",
            oid::TIMESTAMPTZ => "2024-03-05 14:07:09.123+01",
            oid::UUID => "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            oid::INET => "192.168.0.1",
            _ => "Zoë Ångström",
        }
    }

    #[test]
    fn known_binary_encodings() {
        assert_eq!(enc(oid::INT4, "42"), [0, 0, 0, 42]);
        assert_eq!(enc(oid::INT2, "-1"), [0xff, 0xff]);
        assert_eq!(enc(oid::INT8, "1"), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(enc(oid::BOOL, "t"), [1]);
        assert_eq!(enc(oid::BOOL, "false"), [0]);
        assert_eq!(enc(oid::DATE, "2000-01-02"), 1i32.to_be_bytes());
        assert_eq!(enc(oid::DATE, "1970-01-01"), (-10957i32).to_be_bytes());
        assert_eq!(enc(oid::DATE, "infinity"), i32::MAX.to_be_bytes());
        assert_eq!(enc(oid::DATE, "-infinity"), i32::MIN.to_be_bytes());
        assert_eq!(
            enc(oid::TIMESTAMP, "2000-01-01 00:00:01"),
            1_000_000i64.to_be_bytes()
        );
        assert_eq!(
            enc(oid::TIMESTAMPTZ, "2000-01-01 01:00:00+01"),
            0i64.to_be_bytes()
        );
        assert_eq!(
            enc(oid::TIMESTAMPTZ, "2000-01-01 05:30:00+05:30"),
            0i64.to_be_bytes()
        );
        assert_eq!(enc(oid::TIME, "00:00:01.5"), 1_500_000i64.to_be_bytes());
        assert_eq!(enc(oid::FLOAT8, "1.5"), 1.5f64.to_be_bytes());
        assert_eq!(enc(oid::FLOAT4, "1.5"), 1.5f32.to_be_bytes());
        assert_eq!(enc(oid::INET, "192.168.0.1"), [2, 32, 0, 4, 192, 168, 0, 1]);
        assert_eq!(enc(oid::INET, "10.0.0.0/8"), [2, 8, 0, 4, 10, 0, 0, 0]);
        assert_eq!(enc(oid::JSONB, "{}"), [1, b'{', b'}']);
        assert_eq!(enc(oid::JSON, "{}"), b"{}");
        assert_eq!(enc(oid::BYTEA, "\\x01ff"), [1, 0xff]);
        assert_eq!(enc(oid::TEXT, "Zoë"), "Zoë".as_bytes());
        let u = enc(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(u[..4], [0xa0, 0xee, 0xbc, 0x99]);
        assert_eq!(u.len(), 16);
        assert_eq!(enc(oid::NUMERIC, "12.5"), num_bin(2, 0, 0, 1, &[12, 5000]));
    }

    #[test]
    fn known_binary_decodings() {
        assert_eq!(dec(oid::INT4, &[0, 0, 0, 42]), "42");
        assert_eq!(dec(oid::DATE, &1i32.to_be_bytes()), "2000-01-02");
        assert_eq!(dec(oid::DATE, &(-730_119i32).to_be_bytes()), "0001-01-01");
        assert_eq!(
            dec(oid::DATE, &(-730_120i32).to_be_bytes()),
            "0001-12-31 BC"
        );
        assert_eq!(
            dec(oid::TIMESTAMP, &(-1i64).to_be_bytes()),
            "1999-12-31 23:59:59.999999"
        );
        assert_eq!(
            dec(oid::TIMESTAMPTZ, &0i64.to_be_bytes()),
            "2000-01-01 00:00:00+00"
        );
        assert_eq!(dec(oid::TIME, &86_400_000_000i64.to_be_bytes()), "24:00:00");
        assert_eq!(
            dec(
                oid::INET,
                &[3, 128, 0, 16, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
            ),
            "2001:db8::1"
        );
        assert_eq!(dec(oid::BOOL, &[1]), "t");
        assert_eq!(dec(oid::JSONB, b"\x01[1]"), "[1]");
        assert_eq!(dec(oid::BYTEA, &[0xde, 0xad]), "\\xdead");
        assert_eq!(dec(oid::FLOAT4, &0.1f32.to_be_bytes()), "0.1");
    }

    #[test]
    fn numeric_binary_forms() {
        let cases: &[(&str, Vec<u8>)] = &[
            ("0", num_bin(0, 0, 0, 0, &[])),
            ("0.00", num_bin(0, 0, 0, 2, &[])),
            ("0.0001", num_bin(1, -1, 0, 4, &[1])),
            ("0.00001", num_bin(1, -2, 0, 5, &[1000])),
            ("10000", num_bin(1, 1, 0, 0, &[1])),
            (
                "-12345678.90",
                num_bin(3, 1, 0x4000, 2, &[1234, 5678, 9000]),
            ),
            ("12345678.90", num_bin(3, 1, 0, 2, &[1234, 5678, 9000])),
            ("-1", num_bin(1, 0, 0x4000, 0, &[1])),
            ("NaN", num_bin(0, 0, 0xC000, 0, &[])),
            ("Infinity", num_bin(0, 0, 0xD000, 0, &[])),
            ("-Infinity", num_bin(0, 0, 0xF000, 0, &[])),
        ];
        for (text, bytes) in cases {
            assert_eq!(&enc(oid::NUMERIC, text), bytes, "{text}");
            assert_eq!(dec(oid::NUMERIC, bytes), *text, "{text}");
        }
        // A huge value and long fractions survive the round trip.
        let huge = format!("{}.{}", "9".repeat(300), "0".repeat(20) + "1");
        assert_eq!(dec(oid::NUMERIC, &enc(oid::NUMERIC, &huge)), huge);
        assert_eq!(
            dec(oid::NUMERIC, &enc(oid::NUMERIC, "1e30")),
            format!("1{}", "0".repeat(30))
        );
        assert_eq!(dec(oid::NUMERIC, &enc(oid::NUMERIC, "-1.5E-3")), "-0.0015");
        // Malformed: short, digit out of range, bad sign, length mismatch.
        let bad: [&[u8]; 4] = [
            &[0, 1, 0],
            &num_bin(1, 0, 0, 0, &[10000]),
            &num_bin(0, 0, 0x1234, 0, &[]),
            &num_bin(2, 0, 0, 0, &[1]),
        ];
        for b in bad {
            assert_eq!(bin(&MaskFn::Round { digits: 0 }, oid::NUMERIC, b), None);
        }
    }

    #[test]
    fn text_binary_round_trips() {
        let values: &[(u32, &[&str])] = &[
            (oid::BOOL, &["t", "f"]),
            (oid::BYTEA, &["\\x", "\\x00ff10"]),
            (oid::INT2, &["-32768", "32767", "0"]),
            (oid::INT4, &["-2147483648", "2147483647"]),
            (oid::INT8, &["-9223372036854775808", "9223372036854775807"]),
            (
                oid::FLOAT4,
                &["1.5", "-0.1", "NaN", "Infinity", "-Infinity"],
            ),
            (
                oid::FLOAT8,
                &[
                    "0.30000000000000004",
                    "1e-07",
                    "1.5e+20",
                    "123456789012345",
                    "-Infinity",
                ],
            ),
            (oid::FLOAT4, &["1e+06", "123456", "0.0001", "1.5e-05"]),
            (oid::NUMERIC, &["3.14159", "-0.5", "100"]),
            (
                oid::DATE,
                &[
                    "2024-02-29",
                    "0044-03-15 BC",
                    "infinity",
                    "-infinity",
                    "5874897-12-31",
                ],
            ),
            (oid::TIME, &["00:00:00", "23:59:59.999999", "12:00:00.5"]),
            (
                oid::TIMESTAMP,
                &[
                    "2024-03-05 14:07:09.123",
                    "0044-03-15 12:00:00 BC",
                    "infinity",
                ],
            ),
            (
                oid::TIMESTAMPTZ,
                &["2024-03-05 14:07:09.123+00", "-infinity"],
            ),
            (oid::UUID, &["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
            (
                oid::INET,
                &[
                    "10.1.2.3",
                    "10.0.0.0/8",
                    "::1",
                    "2001:db8::/32",
                    "::ffff:1.2.3.4",
                ],
            ),
            (oid::JSON, &["{\"a\": [1, 2]}", "\"x\"", "null"]),
            (oid::JSONB, &["{\"a\": [1, 2]}"]),
            (oid::TEXT, &["", "Zoë Ångström", "🙂👍🏽"]),
            (oid::VARCHAR, &["abc"]),
            (oid::BPCHAR, &["ab  "]),
            (oid::NAME, &["pg_class"]),
        ];
        for (ty, texts) in values {
            for text in *texts {
                assert_eq!(dec(*ty, &enc(*ty, text)), *text, "oid {ty}");
            }
        }
        // Non-canonical input is accepted and re-rendered canonically.
        assert_eq!(dec(oid::BOOL, &enc(oid::BOOL, "yes")), "t");
        assert_eq!(
            dec(
                oid::UUID,
                &enc(oid::UUID, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}")
            ),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert_eq!(
            dec(oid::BYTEA, &enc(oid::BYTEA, "ab\\000\\\\")),
            "\\x6162005c"
        );
        assert_eq!(
            dec(oid::TIMESTAMP, &enc(oid::TIMESTAMP, "2024-03-05T14:07")),
            "2024-03-05 14:07:00"
        );
    }

    #[test]
    fn invalid_text_values_do_not_parse() {
        let bad: &[(u32, &str)] = &[
            (oid::INT2, "32768"),
            (oid::INT4, "4x"),
            (oid::FLOAT8, "1e999"),
            (oid::FLOAT8, "infinityx"),
            (oid::FLOAT4, "1e40"),
            (oid::NUMERIC, "1.2.3"),
            (oid::NUMERIC, "."),
            (oid::DATE, "2023-02-29"),
            (oid::DATE, "2024-13-01"),
            (oid::DATE, "03/05/2024"),
            (oid::DATE, "0000-01-01"),
            (oid::TIME, "24:00:01"),
            (oid::TIME, "12:60:00"),
            (oid::TIMESTAMP, "2024-03-05 14:07:09.1234567"),
            (oid::TIMESTAMPTZ, "2024-03-05 14:07:09"),
            (oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"),
            (oid::UUID, "-a0eebc999c0b4ef8bb6d6bb9bd380a11"),
            (oid::INET, "10.0.0.0/33"),
            (oid::INET, "10.0.0"),
            (oid::BYTEA, "\\x123"),
            (oid::BYTEA, "\\400"),
            (oid::BOOL, "maybe"),
        ];
        for (ty, v) in bad {
            assert_eq!(txt(&MaskFn::Fixed((*v).into()), *ty, "x"), None, "{ty} {v}");
            assert_eq!(bin(&MaskFn::Fixed((*v).into()), *ty, b""), None, "{ty} {v}");
        }
    }

    #[test]
    fn redact_per_type() {
        let expect: &[(u32, &str)] = &[
            (oid::BOOL, "f"),
            (oid::BYTEA, "\\x"),
            (oid::NAME, "****"),
            (oid::INT8, "0"),
            (oid::INT2, "0"),
            (oid::INT4, "0"),
            (oid::TEXT, "****"),
            (oid::JSON, "\"****\""),
            (oid::FLOAT4, "0"),
            (oid::FLOAT8, "0"),
            (oid::INET, "0.0.0.0"),
            (oid::BPCHAR, "************"),
            (oid::VARCHAR, "****"),
            (oid::DATE, "1970-01-01"),
            (oid::TIME, "00:00:00"),
            (oid::TIMESTAMP, "1970-01-01 00:00:00"),
            (oid::TIMESTAMPTZ, "1970-01-01 00:00:00+00"),
            (oid::NUMERIC, "0"),
            (oid::UUID, "00000000-0000-0000-0000-000000000000"),
            (oid::JSONB, "\"****\""),
        ];
        assert_eq!(
            txt(&MaskFn::Redact, oid::INET, "2001:db8::1").as_deref(),
            Some("::"),
            "redaction keeps the address family"
        );
        assert_eq!(
            txt(&MaskFn::Redact, oid::INET, "10.1.2.3/24").as_deref(),
            Some("0.0.0.0/24"),
            "and the prefix length"
        );
        for (ty, want) in expect {
            let v = sample(*ty);
            assert_eq!(
                txt(&MaskFn::Redact, *ty, v).as_deref(),
                Some(*want),
                "oid {ty}"
            );
            let b = bin(&MaskFn::Redact, *ty, &enc(*ty, v)).unwrap();
            assert_eq!(dec(*ty, &b), *want, "oid {ty}");
        }
        assert_eq!(txt(&MaskFn::Redact, 790, "$1.00").as_deref(), Some("****"));
        assert_eq!(txt(&MaskFn::Redact, oid::TEXT, "").as_deref(), Some("****"));
        assert_eq!(
            bin(&MaskFn::Redact, oid::INT4, &[0, 0, 0, 42]),
            Some(vec![0, 0, 0, 0])
        );
        assert_eq!(
            bin(&MaskFn::Redact, oid::DATE, &[0; 4]),
            Some((-10957i32).to_be_bytes().to_vec())
        );
        // Non-UTF-8 text can still be redacted, but not read.
        assert_eq!(
            mask_value(&MaskFn::Redact, oid::TEXT, Format::Text, &[0xff, 0xfe]),
            Some(b"****".to_vec())
        );
        assert_eq!(
            mask_value(&MaskFn::Email, oid::TEXT, Format::Text, &[0xff, 0xfe]),
            None
        );
    }

    #[test]
    fn null_and_unsupported_binary() {
        for ty in ALL_OIDS {
            assert_eq!(txt(&MaskFn::Null, ty, sample(ty)), None);
            assert_eq!(bin(&MaskFn::Null, ty, &enc(ty, sample(ty))), None);
            assert!(supports_binary(ty));
        }
        assert!(!supports_binary(790));
        assert!(!supports_binary(0));
        let fns = [
            MaskFn::Redact,
            MaskFn::Fixed("1".into()),
            MaskFn::Partial {
                first: 0,
                last: 0,
                mask: '*',
            },
            MaskFn::Email,
            key("k"),
            MaskFn::Round { digits: 0 },
        ];
        for f in &fns {
            assert_eq!(bin(f, 790, b"\x00\x00\x00\x01"), None, "{f:?}");
        }
        // Unknown types in text format are text for the text functions.
        assert_eq!(
            txt(&MaskFn::Fixed("x".into()), 790, "$1.00").as_deref(),
            Some("x")
        );
        assert_eq!(
            txt(
                &MaskFn::Partial {
                    first: 1,
                    last: 0,
                    mask: '#'
                },
                790,
                "$1.00"
            )
            .as_deref(),
            Some("$####")
        );
        assert_eq!(txt(&MaskFn::Round { digits: 0 }, 790, "1.5"), None);
        assert_eq!(
            txt(&MaskFn::Truncate(DatePart::Year), 790, "2024-03-05"),
            None
        );
        assert!(txt(&key("k"), 790, "$1.00").is_some());
    }

    #[test]
    fn malformed_binary_is_null() {
        let f = MaskFn::Partial {
            first: 0,
            last: 0,
            mask: '0',
        };
        let bad: &[(u32, &[u8])] = &[
            (oid::INT4, &[0, 0, 42]),
            (oid::INT2, &[0, 0, 0]),
            (oid::INT8, &[]),
            (oid::BOOL, &[]),
            (oid::FLOAT8, &[0; 4]),
            (oid::DATE, &[0; 5]),
            (oid::TIME, &(-1i64).to_be_bytes()),
            (oid::UUID, &[0; 15]),
            (oid::INET, &[9, 32, 0, 4, 1, 2, 3, 4]),
            (oid::JSONB, b"\x02{}"),
            (oid::TEXT, &[0xc3]),
        ];
        for (ty, b) in bad {
            assert_eq!(bin(&f, *ty, b), None, "oid {ty}");
            assert_eq!(bin(&key("k"), *ty, b), None, "oid {ty}");
        }
    }

    #[test]
    fn partial_counts_characters() {
        let p = |first, last| MaskFn::Partial {
            first,
            last,
            mask: '*',
        };
        assert_eq!(
            txt(&p(2, 2), oid::TEXT, "Zoë Ångström").as_deref(),
            Some("Zo********öm")
        );
        assert_eq!(
            txt(&p(1, 1), oid::VARCHAR, "🙂👍x🙂").as_deref(),
            Some("🙂**🙂")
        );
        assert_eq!(
            txt(&p(0, 4), oid::TEXT, "4111111111111111").as_deref(),
            Some("************1111")
        );
        assert_eq!(
            txt(&p(3, 3), oid::TEXT, "abcdef").as_deref(),
            Some("******")
        );
        assert_eq!(txt(&p(9, 0), oid::TEXT, "abc").as_deref(), Some("***"));
        assert_eq!(
            txt(&p(usize::MAX, usize::MAX), oid::TEXT, "abc").as_deref(),
            Some("***")
        );
        assert_eq!(txt(&p(1, 1), oid::TEXT, "").as_deref(), Some(""));
        let b = bin(&p(1, 0), oid::TEXT, "Ångström".as_bytes()).unwrap();
        assert_eq!(String::from_utf8(b).unwrap(), "Å*******");
        assert_eq!(txt(&p(1, 0), oid::BPCHAR, "ab  ").as_deref(), Some("a***"));
        // Other types: the result must parse as the type.
        let zero = MaskFn::Partial {
            first: 1,
            last: 1,
            mask: '0',
        };
        assert_eq!(txt(&zero, oid::INT4, "12345").as_deref(), Some("10005"));
        assert_eq!(
            bin(&zero, oid::INT4, &12345i32.to_be_bytes()),
            Some(10005i32.to_be_bytes().to_vec())
        );
        assert_eq!(txt(&p(1, 1), oid::INT4, "12345"), None);
        assert_eq!(bin(&p(1, 1), oid::DATE, &[0; 4]), None);
        assert_eq!(
            txt(&zero, oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            None
        );
        let z = MaskFn::Partial {
            first: 4,
            last: 4,
            mask: '0',
        };
        assert_eq!(
            txt(&z, oid::UUID, "a0eebc999c0b4ef8bb6d6bb9bd380a11").as_deref(),
            Some("a0ee0000-0000-0000-0000-000000000a11")
        );
        // JSON strings are masked inside; other JSON stays valid.
        assert_eq!(
            txt(&p(1, 1), oid::JSON, "\"alice\"").as_deref(),
            Some("\"a***e\"")
        );
        let obj = txt(&p(1, 1), oid::JSONB, "{\"a\": 1}").unwrap();
        assert_eq!(obj, "\"{******}\"");
        assert!(is_json(&obj));
        let b = bin(&p(1, 1), oid::JSONB, b"\x01\"alice\"").unwrap();
        assert_eq!(b, b"\x01\"a***e\"");
    }

    #[test]
    fn email_keeps_domain() {
        assert_eq!(
            txt(&MaskFn::Email, oid::TEXT, "alice@example.com").as_deref(),
            Some("*****@example.com")
        );
        assert_eq!(
            txt(&MaskFn::Email, oid::VARCHAR, "zoë@exämple.org").as_deref(),
            Some("***@exämple.org")
        );
        assert_eq!(
            txt(&MaskFn::Email, oid::TEXT, "\"a@b\"@example.com").as_deref(),
            Some("*****@example.com")
        );
        assert_eq!(
            txt(&MaskFn::Email, oid::TEXT, "no-at-sign").as_deref(),
            Some("**********")
        );
        assert_eq!(txt(&MaskFn::Email, oid::TEXT, "").as_deref(), Some(""));
        assert_eq!(
            txt(&MaskFn::Email, oid::JSON, "\"bob@x.io\"").as_deref(),
            Some("\"***@x.io\"")
        );
        assert_eq!(
            bin(&MaskFn::Email, oid::TEXT, b"bob@x.io"),
            Some(b"***@x.io".to_vec())
        );
        assert_eq!(txt(&MaskFn::Email, oid::INT4, "42"), None);
    }

    #[test]
    fn hash_is_deterministic_and_keyed() {
        let k1 = key("key one");
        let k2 = key("key two");
        let a = txt(&k1, oid::TEXT, "alice@example.com").unwrap();
        assert_eq!(a, txt(&k1, oid::TEXT, "alice@example.com").unwrap());
        assert_ne!(a, txt(&k2, oid::TEXT, "alice@example.com").unwrap());
        assert_ne!(a, txt(&k1, oid::TEXT, "bob@example.com").unwrap());
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // Binary text hashes like text format.
        assert_eq!(
            bin(&k1, oid::VARCHAR, b"alice@example.com"),
            Some(a.clone().into_bytes())
        );
        assert_eq!(txt(&k1, oid::NAME, "alice").unwrap().len(), 63);
        // Digits keep their length and their separators.
        for v in [
            "4111111111111111",
            "0",
            "007",
            "+1 (415) 555-2671",
            "4111-1111-1111-1111",
        ] {
            let h = txt(&k1, oid::TEXT, v).unwrap();
            assert_eq!(h.len(), v.len());
            assert_ne!(h, v);
            for (x, y) in h.chars().zip(v.chars()) {
                assert_eq!(x.is_ascii_digit(), y.is_ascii_digit());
                if !y.is_ascii_digit() {
                    assert_eq!(x, y);
                }
            }
        }
        assert_ne!(txt(&k1, oid::TEXT, "12345"), txt(&k2, oid::TEXT, "12345"));
        // Integers stay integers of their type, and formats agree.
        for (ty, v) in [(oid::INT2, "-5"), (oid::INT4, "42"), (oid::INT8, "42")] {
            let h: i64 = txt(&k1, ty, v).unwrap().parse().unwrap();
            assert!(h >= 0);
            assert_ne!(h.to_string(), v);
            let b = bin(&k1, ty, &enc(ty, v)).unwrap();
            assert_eq!(dec(ty, &b), h.to_string());
        }
        let h2: i64 = txt(&k1, oid::INT2, "42").unwrap().parse().unwrap();
        assert!(h2 <= i64::from(i16::MAX));
        let u = txt(&k1, oid::UUID, sample(oid::UUID)).unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "8");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        let ub = bin(&k1, oid::UUID, &enc(oid::UUID, sample(oid::UUID))).unwrap();
        assert_eq!(dec(oid::UUID, &ub), u);
        let bytes = bin(&k1, oid::BYTEA, &[1, 2, 255]).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(
            txt(&k1, oid::BYTEA, "\\x0102ff").unwrap(),
            dec(oid::BYTEA, &bytes)
        );
        let j = txt(&k1, oid::JSON, "{\"a\": 1}").unwrap();
        assert_eq!(j.len(), 66);
        assert!(serde_json::from_str::<String>(&j).is_ok());
        let jb = bin(&k1, oid::JSONB, b"\x01{\"a\": 1}").unwrap();
        assert_eq!(jb[0], 1);
        for ty in [
            oid::BOOL,
            oid::FLOAT8,
            oid::NUMERIC,
            oid::DATE,
            oid::TIMESTAMPTZ,
            oid::INET,
            oid::TIME,
        ] {
            assert_eq!(txt(&k1, ty, sample(ty)), None, "oid {ty}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let f = key("s3cr3t-key-material");
        let shown = format!("{f:?}");
        assert!(!shown.contains("s3cr3t"));
        assert!(shown.contains("Hash"));
        let r = MaskFn::Replace {
            pattern: regex::Regex::new("a+").unwrap(),
            replacement: "b".into(),
        };
        assert!(format!("{r:?}").contains("a+"));
    }

    #[test]
    fn fixed_is_parsed_as_the_type() {
        let f = |v: &str| MaskFn::Fixed(v.into());
        assert_eq!(txt(&f("7"), oid::INT4, "42").as_deref(), Some("7"));
        assert_eq!(
            bin(&f("7"), oid::INT8, &[0; 8]),
            Some(7i64.to_be_bytes().to_vec())
        );
        assert_eq!(txt(&f("abc"), oid::INT4, "42"), None);
        assert_eq!(txt(&f("99999"), oid::INT2, "42"), None);
        assert_eq!(
            txt(&f("not json"), oid::JSON, "{}").as_deref(),
            Some("\"not json\"")
        );
        assert_eq!(
            txt(&f("{\"k\":1}"), oid::JSONB, "{}").as_deref(),
            Some("{\"k\":1}")
        );
        assert_eq!(
            txt(&f("hidden"), oid::TEXT, "secret").as_deref(),
            Some("hidden")
        );
        assert_eq!(
            txt(&f("2000-01-01"), oid::DATE, "x").as_deref(),
            Some("2000-01-01")
        );
        assert_eq!(
            txt(&f("2024-03-05 14:07:09+05:30"), oid::TIMESTAMPTZ, "x").as_deref(),
            Some("2024-03-05 14:07:09+05:30")
        );
        assert_eq!(
            dec(
                oid::TIMESTAMPTZ,
                &enc(oid::TIMESTAMPTZ, "2024-03-05 14:07:09+05:30")
            ),
            "2024-03-05 08:37:09+00"
        );
        assert_eq!(txt(&f("t"), oid::BOOL, "f").as_deref(), Some("t"));
    }

    #[test]
    fn replace_checks_the_result() {
        let r = |p: &str, rep: &str| MaskFn::Replace {
            pattern: regex::Regex::new(p).unwrap(),
            replacement: rep.into(),
        };
        assert_eq!(
            txt(&r(r"(\d{3})\d+", "$1***"), oid::TEXT, "id 1234567").as_deref(),
            Some("id 123***")
        );
        assert_eq!(
            txt(&r(r"\d{2}$", "00"), oid::INT4, "12345").as_deref(),
            Some("12300")
        );
        assert_eq!(
            bin(&r(r"\d{2}$", "00"), oid::INT4, &12345i32.to_be_bytes()),
            Some(12300i32.to_be_bytes().to_vec())
        );
        assert_eq!(txt(&r(r"-\d\d$", "-00"), oid::DATE, "2024-03-05"), None);
        assert_eq!(
            txt(&r(r"-\d\d$", "-01"), oid::DATE, "2024-03-05").as_deref(),
            Some("2024-03-01")
        );
        assert_eq!(
            txt(&r("nomatch", "x"), oid::TEXT, "same").as_deref(),
            Some("same")
        );
        let j = txt(
            &r(r#""ssn": "[^"]*""#, r#""ssn": "***""#),
            oid::JSON,
            r#"{"ssn": "123-45-6789"}"#,
        );
        assert_eq!(j.as_deref(), Some(r#"{"ssn": "***"}"#));
        let broken = txt(&r(r"\}", ""), oid::JSON, r#"{"a": 1}"#).unwrap();
        assert_eq!(broken, r#""{\"a\": 1""#);
    }

    #[test]
    fn truncate_dates_and_timestamps() {
        let y = MaskFn::Truncate(DatePart::Year);
        let m = MaskFn::Truncate(DatePart::Month);
        let d = MaskFn::Truncate(DatePart::Day);
        assert_eq!(
            txt(&y, oid::DATE, "2024-03-05").as_deref(),
            Some("2024-01-01")
        );
        assert_eq!(
            txt(&m, oid::DATE, "2024-03-05").as_deref(),
            Some("2024-03-01")
        );
        assert_eq!(
            txt(&d, oid::DATE, "2024-03-05").as_deref(),
            Some("2024-03-05")
        );
        assert_eq!(
            txt(&m, oid::TIMESTAMP, "2024-03-05 14:07:09.123").as_deref(),
            Some("2024-03-01 00:00:00")
        );
        assert_eq!(
            txt(&d, oid::TIMESTAMP, "2024-03-05 14:07:09.123").as_deref(),
            Some("2024-03-05 00:00:00")
        );
        assert_eq!(
            txt(&m, oid::TIMESTAMPTZ, "2024-03-05 14:07:09.123+01").as_deref(),
            Some("2024-03-01 00:00:00+01")
        );
        assert_eq!(
            txt(&y, oid::TIMESTAMPTZ, "2024-03-05 01:07:09-08").as_deref(),
            Some("2024-01-01 00:00:00-08")
        );
        assert_eq!(
            txt(&d, oid::TIMESTAMPTZ, "2024-03-05 23:59:59+05:30").as_deref(),
            Some("2024-03-05 00:00:00+05:30")
        );
        assert_eq!(
            txt(&y, oid::DATE, "0044-03-15 BC").as_deref(),
            Some("0044-01-01 BC")
        );
        assert_eq!(
            txt(&m, oid::TIMESTAMP, "0044-03-15 10:00:00 BC").as_deref(),
            Some("0044-03-01 00:00:00 BC")
        );
        assert_eq!(txt(&y, oid::DATE, "infinity").as_deref(), Some("infinity"));
        assert_eq!(
            txt(&y, oid::TIMESTAMPTZ, "-infinity").as_deref(),
            Some("-infinity")
        );
        // Binary: days and microseconds from 2000-01-01 (UTC for timestamptz).
        let day = enc(oid::DATE, "2024-03-05");
        assert_eq!(
            dec(oid::DATE, &bin(&m, oid::DATE, &day).unwrap()),
            "2024-03-01"
        );
        let ts = enc(oid::TIMESTAMP, "2024-03-05 14:07:09.123");
        assert_eq!(
            dec(oid::TIMESTAMP, &bin(&y, oid::TIMESTAMP, &ts).unwrap()),
            "2024-01-01 00:00:00"
        );
        let tz = enc(oid::TIMESTAMPTZ, "2024-01-01 00:30:00+01");
        assert_eq!(
            dec(oid::TIMESTAMPTZ, &bin(&y, oid::TIMESTAMPTZ, &tz).unwrap()),
            "2023-01-01 00:00:00+00"
        );
        assert_eq!(
            bin(&y, oid::DATE, &i32::MAX.to_be_bytes()),
            Some(i32::MAX.to_be_bytes().to_vec())
        );
        assert_eq!(
            bin(&d, oid::TIMESTAMP, &(-1i64).to_be_bytes()),
            Some((-86_400_000_000i64).to_be_bytes().to_vec())
        );
        // Text columns holding ISO dates; everything else is NULL.
        assert_eq!(
            txt(&m, oid::TEXT, "2024-03-05").as_deref(),
            Some("2024-03-01")
        );
        assert_eq!(
            txt(&m, oid::VARCHAR, "2024-03-05 10:00:00+02").as_deref(),
            Some("2024-03-01 00:00:00+02")
        );
        assert_eq!(txt(&m, oid::TEXT, "hello"), None);
        assert_eq!(txt(&m, oid::DATE, "03/05/2024"), None);
        assert_eq!(txt(&m, oid::INT4, "42"), None);
        assert_eq!(txt(&m, oid::TIME, "10:00:00"), None);
        assert_eq!(txt(&m, oid::JSON, "\"2024-03-05\""), None);
    }

    #[test]
    fn round_numbers() {
        let r = |digits| MaskFn::Round { digits };
        assert_eq!(txt(&r(-2), oid::INT4, "1234").as_deref(), Some("1200"));
        assert_eq!(txt(&r(-2), oid::INT4, "1250").as_deref(), Some("1300"));
        assert_eq!(txt(&r(-2), oid::INT4, "-1250").as_deref(), Some("-1300"));
        assert_eq!(txt(&r(-1), oid::INT8, "4").as_deref(), Some("0"));
        assert_eq!(txt(&r(-5), oid::INT4, "51234").as_deref(), Some("100000"));
        assert_eq!(
            txt(&r(-30), oid::INT8, "9223372036854775807").as_deref(),
            Some("0")
        );
        assert_eq!(txt(&r(2), oid::INT4, "1234").as_deref(), Some("1234"));
        assert_eq!(txt(&r(-1), oid::INT2, "32767"), None);
        assert_eq!(
            bin(&r(-1), oid::INT2, &37i16.to_be_bytes()),
            Some(40i16.to_be_bytes().to_vec())
        );
        assert_eq!(txt(&r(2), oid::FLOAT8, "3.14159").as_deref(), Some("3.14"));
        assert_eq!(txt(&r(-1), oid::FLOAT8, "37.5").as_deref(), Some("40"));
        assert_eq!(txt(&r(1), oid::FLOAT4, "2.25").as_deref(), Some("2.2"));
        assert_eq!(txt(&r(1), oid::FLOAT8, "NaN").as_deref(), Some("NaN"));
        assert_eq!(
            bin(&r(0), oid::FLOAT8, &2.6f64.to_be_bytes()),
            Some(3f64.to_be_bytes().to_vec())
        );
        assert_eq!(
            txt(&r(1), oid::NUMERIC, "123.456").as_deref(),
            Some("123.5")
        );
        assert_eq!(txt(&r(3), oid::NUMERIC, "12.5").as_deref(), Some("12.500"));
        assert_eq!(txt(&r(0), oid::NUMERIC, "-0.5").as_deref(), Some("-1"));
        assert_eq!(txt(&r(0), oid::NUMERIC, "-0.4").as_deref(), Some("0"));
        assert_eq!(txt(&r(0), oid::NUMERIC, "999.9").as_deref(), Some("1000"));
        assert_eq!(txt(&r(2), oid::NUMERIC, "0.999").as_deref(), Some("1.00"));
        assert_eq!(
            txt(&r(-3), oid::NUMERIC, "-4999.99").as_deref(),
            Some("-5000")
        );
        assert_eq!(txt(&r(-3), oid::NUMERIC, "499").as_deref(), Some("0"));
        assert_eq!(txt(&r(-3), oid::NUMERIC, "500").as_deref(), Some("1000"));
        assert_eq!(txt(&r(1), oid::NUMERIC, "NaN").as_deref(), Some("NaN"));
        assert_eq!(
            bin(&r(1), oid::NUMERIC, &enc(oid::NUMERIC, "12.25")),
            Some(num_bin(2, 0, 0, 1, &[12, 3000]))
        );
        assert_eq!(txt(&r(0), oid::TEXT, "37.5").as_deref(), Some("38"));
        assert_eq!(txt(&r(-1), oid::VARCHAR, "1e3").as_deref(), Some("1000"));
        assert_eq!(txt(&r(0), oid::TEXT, "abc"), None);
        assert_eq!(txt(&r(0), oid::DATE, "2024-03-05"), None);
        assert_eq!(txt(&r(i32::MAX), oid::NUMERIC, "1.5").unwrap().len(), 1002);
        assert_eq!(txt(&r(i32::MIN), oid::NUMERIC, "1.5").as_deref(), Some("0"));
    }

    #[test]
    fn bucket_numbers() {
        let b = |width| MaskFn::Bucket { width };
        assert_eq!(txt(&b(10.0), oid::INT4, "37").as_deref(), Some("30"));
        assert_eq!(txt(&b(10.0), oid::INT4, "-37").as_deref(), Some("-40"));
        assert_eq!(txt(&b(10.0), oid::INT4, "30").as_deref(), Some("30"));
        assert_eq!(txt(&b(2.5), oid::INT4, "9").as_deref(), Some("7"));
        assert_eq!(txt(&b(1000.0), oid::INT2, "-32768"), None);
        assert_eq!(
            bin(&b(10.0), oid::INT8, &37i64.to_be_bytes()),
            Some(30i64.to_be_bytes().to_vec())
        );
        assert_eq!(txt(&b(10.0), oid::FLOAT8, "37.5").as_deref(), Some("30"));
        assert_eq!(txt(&b(0.5), oid::FLOAT4, "-0.7").as_deref(), Some("-1"));
        assert_eq!(
            txt(&b(0.5), oid::NUMERIC, "37.25").as_deref(),
            Some("37.00")
        );
        assert_eq!(
            txt(&b(0.1), oid::NUMERIC, "-0.05").as_deref(),
            Some("-0.10")
        );
        assert_eq!(
            txt(&b(10.0), oid::NUMERIC, "123456789012345678901234567891").as_deref(),
            Some("123456789012345678901234567890")
        );
        assert_eq!(txt(&b(10.0), oid::NUMERIC, "NaN").as_deref(), Some("NaN"));
        assert_eq!(
            bin(&b(5.0), oid::NUMERIC, &enc(oid::NUMERIC, "12.5")),
            Some(enc(oid::NUMERIC, "10.0"))
        );
        assert_eq!(txt(&b(10.0), oid::TEXT, "37").as_deref(), Some("30"));
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(txt(&b(w), oid::INT4, "37"), None);
        }
        assert_eq!(txt(&b(1e-300), oid::NUMERIC, "1").unwrap().len(), 302);
        assert_eq!(txt(&b(1e300), oid::NUMERIC, "1"), None);
        assert_eq!(txt(&b(10.0), oid::UUID, sample(oid::UUID)), None);
    }

    #[test]
    fn every_function_on_every_type_is_well_typed() {
        let fns = [
            MaskFn::Redact,
            MaskFn::Partial {
                first: 1,
                last: 1,
                mask: '*',
            },
            MaskFn::Email,
            key("k"),
            MaskFn::Fixed("1".into()),
            MaskFn::Replace {
                pattern: regex::Regex::new("[0-9]").unwrap(),
                replacement: "0".into(),
            },
            MaskFn::Truncate(DatePart::Month),
            MaskFn::Round { digits: -1 },
            MaskFn::Bucket { width: 10.0 },
        ];
        for ty in ALL_OIDS {
            let kind = Kind::of(ty).unwrap();
            let text = sample(ty);
            let binary = enc(ty, text);
            for f in &fns {
                let t = txt(f, ty, text);
                let b = bin(f, ty, &binary);
                // Both formats agree, and any output is a valid value.
                match (&t, &b) {
                    (Some(t), Some(b)) => {
                        assert!(parse_text(kind, t).is_some(), "{f:?} oid {ty}: {t}");
                        if kind.is_json() {
                            assert!(is_json(t), "{f:?} oid {ty}: {t}");
                        }
                        if ty != oid::TIMESTAMPTZ {
                            assert_eq!(&dec(ty, b), t, "{f:?} oid {ty}");
                        }
                    }
                    (None, None) => {}
                    _ => panic!("{f:?} oid {ty}: {t:?} vs {b:?}"),
                }
            }
        }
    }

    #[test]
    fn calendar_is_consistent() {
        for days in (-2_451_545..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(2000, 1, 1), 0);
        assert_eq!(days_from_civil(1970, 1, 1), UNIX_EPOCH_DAYS);
        assert_eq!(days_from_civil(2000, 3, 1), 60);
    }

    proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..40), which in 0usize..21, digits in -30i32..30, width in -5.0f64..1e6) {
            let ty = ALL_OIDS.get(which).copied().unwrap_or(790);
            let fns = [
                MaskFn::Redact,
                MaskFn::Null,
                MaskFn::Partial { first: 2, last: 1, mask: '#' },
                MaskFn::Email,
                key("k"),
                MaskFn::Fixed("x".into()),
                MaskFn::Replace { pattern: regex::Regex::new("a|1").unwrap(), replacement: "$0$0".into() },
                MaskFn::Truncate(DatePart::Year),
                MaskFn::Round { digits },
                MaskFn::Bucket { width },
            ];
            for f in &fns {
                let _ = mask_value(f, ty, Format::Text, &bytes);
                let _ = mask_value(f, ty, Format::Binary, &bytes);
            }
        }

        #[test]
        fn never_panics_on_random_text(s in ".{0,40}", which in 0usize..21) {
            let ty = ALL_OIDS.get(which).copied().unwrap_or(790);
            for f in [MaskFn::Round { digits: 2 }, MaskFn::Bucket { width: 0.5 }, MaskFn::Truncate(DatePart::Day), MaskFn::Fixed(s.clone()), key("k")] {
                let _ = mask_value(&f, ty, Format::Text, s.as_bytes());
                let _ = mask_value(&f, ty, Format::Binary, s.as_bytes());
            }
        }

        #[test]
        fn masked_text_never_contains_the_input(s in "\\PC{4,30}") {
            prop_assume!(!s.chars().all(|c| c == '*'));
            let fns = [MaskFn::Redact, key("k"), MaskFn::Partial { first: 0, last: 0, mask: '*' }];
            for f in &fns {
                for ty in [oid::TEXT, oid::VARCHAR, oid::BPCHAR, oid::NAME, oid::JSON] {
                    let input = if ty == oid::JSON { serde_json::to_string(&s).unwrap() } else { s.clone() };
                    let out = txt(f, ty, &input).unwrap();
                    prop_assert!(!out.contains(&s), "{:?} {} {:?} -> {:?}", f, ty, s, out);
                    let outb = bin(f, ty, input.as_bytes()).unwrap();
                    prop_assert!(!String::from_utf8(outb).unwrap().contains(&s));
                }
            }
        }

        #[test]
        fn digit_text_hashes_keep_shape(s in "[0-9 ()+.-]{1,24}") {
            let out = txt(&key("k"), oid::TEXT, &s).unwrap();
            if s.bytes().any(|c| c.is_ascii_digit()) {
                prop_assert_eq!(out.len(), s.len());
                prop_assert_ne!(&out, &s);
            } else {
                prop_assert_eq!(out.len(), 64);
            }
        }

        #[test]
        fn numeric_round_trips(neg in any::<bool>(), int in "[0-9]{0,40}", frac in "[0-9]{0,40}") {
            prop_assume!(!(int.is_empty() && frac.is_empty()));
            let text = format!("{}{}{}{}", if neg { "-" } else { "" }, int, if frac.is_empty() { "" } else { "." }, frac);
            let canonical = Num::parse(&text).unwrap().render();
            prop_assert_eq!(dec(oid::NUMERIC, &enc(oid::NUMERIC, &text)), canonical.clone());
            prop_assert_eq!(dec(oid::NUMERIC, &enc(oid::NUMERIC, &canonical)), canonical);
        }

        #[test]
        fn timestamps_round_trip(us in -200_000_000_000_000_000i64..200_000_000_000_000_000i64) {
            let b = us.to_be_bytes();
            let text = dec(oid::TIMESTAMP, &b);
            prop_assert_eq!(enc(oid::TIMESTAMP, &text), b.to_vec());
            let days = (us / USECS_PER_DAY) as i32;
            let dtext = dec(oid::DATE, &days.to_be_bytes());
            prop_assert_eq!(enc(oid::DATE, &dtext), days.to_be_bytes().to_vec());
        }
    }
}
