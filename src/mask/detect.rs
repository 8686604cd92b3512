//! Detectors of sensitive substrings in free text.
//!
//! A [`DetectorSet`] is compiled once (at rule load) from a list of
//! [`Detector`]s. [`DetectorSet::find`] gives the byte ranges of what it
//! finds, [`DetectorSet::mask_text`] replaces them with the output of a
//! masking function. Each detector is a bounded regex that proposes
//! candidates, plus a validator (checksum, boundaries, shape) that accepts,
//! shortens or rejects them. Overlaps between detectors are settled by
//! taking the match that starts first, then the longest.
//!
//! What each detector matches, and where it errs:
//!
//! - `email`: `local@domain.tld`, ASCII only; the local part from
//!   `A-Za-z0-9._%+-`, labels of letters, digits and inner hyphens, a TLD of
//!   2 to 63 letters. Misses internationalised and quoted addresses; matches
//!   things like `user@host.internal` that are not deliverable.
//! - `card`: 13 to 19 digits, alone or in groups of 3 or more joined by one
//!   space or dash, first digit 2 to 6 (the issuer ranges in use), passing
//!   Luhn. About one in ten random numbers of that length passes Luhn, so
//!   long order or account numbers starting with 2 to 6 can match; card
//!   numbers glued to letters are skipped.
//! - `ssn`: US Social Security numbers written `ddd-dd-dddd`, excluding area
//!   000, 666 and 900-999, group 00 and serial 0000. Undashed SSNs are missed.
//! - `iban`: two capital letters, two check digits and 11 to 30 capitals or
//!   digits, compact or in space-separated groups of four, passing the mod-97
//!   checksum. The length per country is not checked; lowercase IBANs are
//!   missed.
//! - `phone`: `+` and 8 to 15 digits with optional spaces, dots, dashes and
//!   one pair of parentheses (E.164 as people write it); North American
//!   numbers `(555) 123-4567`, `555-123-4567`, `555.123.4567`, with area and
//!   exchange starting 2 to 9; and national numbers with a trunk `0` and 10 to
//!   11 digits in groups with one kind of separator (`030 12345678`,
//!   `06 12 34 56 78`). Plain digit runs without `+` or separators, and
//!   dates, are not phones here; national numbers without a leading 0 are
//!   missed.
//! - `ip`: dotted IPv4 with octets up to 255, and IPv6 as accepted by the
//!   standard library (including `::ffff:1.2.3.4`). Version strings like
//!   `1.2.3.4` match; short IPv6-looking words such as `ab::cd` do too.
//! - `jwt`: three base64url segments joined by dots, the first starting with
//!   `eyJ` (the encoding of `{"`). The signature may be empty.
//! - `bearer_token`: the token after `Bearer` (any case) and blanks, 8 or more
//!   token characters; only the token is masked, the word stays.
//! - `cloud_key`: AWS access key ids (`AKIA`/`ASIA` and 16 capitals or
//!   digits), Google API keys (`AIza` and 35 characters), GitHub tokens
//!   (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` and 36 characters,
//!   `github_pat_...`). Secret access keys without their id are missed.
//! - `private_key`: a PEM block from `-----BEGIN ... PRIVATE KEY-----` to the
//!   first `-----END ... PRIVATE KEY-----`, across lines; a block whose END is
//!   missing (a truncated value) is masked to the end of the text.
//!
//! Limits: matching is on the text as given, with no decoding of escapes,
//! URL encoding or base64. Should a built-in pattern ever fail to compile,
//! that detector matches the whole text, so that text is masked rather than
//! shown.

use std::fmt;
use std::ops::Range;

use regex::{Regex, RegexBuilder};

use crate::mask::value::{mask_value, oid, Format, MaskFn};

/// What a detector looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Email addresses.
    Email,
    /// Payment card numbers (Luhn-checked).
    Card,
    /// US Social Security numbers.
    Ssn,
    /// International bank account numbers (mod-97 checked).
    Iban,
    /// Phone numbers.
    Phone,
    /// IPv4 and IPv6 addresses.
    Ip,
    /// JSON Web Tokens.
    Jwt,
    /// The token of an HTTP `Bearer` credential.
    BearerToken,
    /// Cloud and code-hosting access keys.
    CloudKey,
    /// PEM private keys.
    PrivateKey,
}

impl Detector {
    /// All detectors.
    pub const ALL: [Detector; 10] = [
        Detector::Email,
        Detector::Card,
        Detector::Ssn,
        Detector::Iban,
        Detector::Phone,
        Detector::Ip,
        Detector::Jwt,
        Detector::BearerToken,
        Detector::CloudKey,
        Detector::PrivateKey,
    ];

    /// Name used in rule files and the audit trail ("email", "card", ...).
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Card => "card",
            Detector::Ssn => "ssn",
            Detector::Iban => "iban",
            Detector::Phone => "phone",
            Detector::Ip => "ip",
            Detector::Jwt => "jwt",
            Detector::BearerToken => "bearer_token",
            Detector::CloudKey => "cloud_key",
            Detector::PrivateKey => "private_key",
        }
    }

    /// Tie-break between matches of equal start and length: the more
    /// specific kind wins, lower first.
    fn rank(self) -> u8 {
        match self {
            Detector::PrivateKey => 0,
            Detector::Jwt => 1,
            Detector::CloudKey => 2,
            Detector::BearerToken => 3,
            Detector::Email => 4,
            Detector::Iban => 5,
            Detector::Card => 6,
            Detector::Ssn => 7,
            Detector::Phone => 8,
            Detector::Ip => 9,
        }
    }
}

/// Accepts, shortens or rejects a candidate; returns the accepted ranges.
type Check = fn(&str, Range<usize>) -> Vec<Range<usize>>;

/// Where to look next after a candidate that gave nothing.
#[derive(Clone, Copy)]
enum Resume {
    /// After the candidate: its pattern is maximal, shorter starts cannot do
    /// better (and the pattern may be unbounded).
    AfterMatch,
    /// At the next character: a valid match may start inside a rejected
    /// candidate. Only for bounded patterns, so the work stays linear.
    NextChar,
}

struct Matcher {
    detector: Detector,
    regex: Regex,
    check: Check,
    resume: Resume,
}

/// A compiled set of detectors (compiled once at rule load).
pub struct DetectorSet {
    matchers: Vec<Matcher>,
    /// Detectors whose pattern did not compile: they match everything.
    broken: Vec<Detector>,
}

impl fmt::Debug for DetectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.matchers.iter().map(|m| m.detector.name()).collect();
        names.dedup();
        f.debug_struct("DetectorSet")
            .field("detectors", &names)
            .field("broken", &self.broken)
            .finish()
    }
}

const EMAIL: &str = r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*\.[A-Za-z]{2,63}";
const CARD: &str = r"[0-9]+(?:[ \-][0-9]+)*";
const SSN: &str = r"[0-9]{3}-[0-9]{2}-[0-9]{4}";
const IBAN: &str = r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}";
const PHONE_INTL: &str = r"\+[1-9][0-9 .()\-]{6,24}[0-9]";
const PHONE_NANP: &str =
    r"(?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}";
const PHONE_TRUNK: &str = r"0[1-9][0-9]{0,3}(?:[ /.\-][0-9]{2,8}){1,4}";
const IPV4: &str = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}";
const IPV6: &str = r"[0-9A-Fa-f.]{0,39}:[0-9A-Fa-f:.]{0,44}";
const JWT: &str = r"eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*";
const BEARER: &str = r"(?i:bearer)[ \t]+[A-Za-z0-9\-._~+/]{8,}=*";
const CLOUD_KEY: &str = r"(?:AKIA|ASIA)[A-Z0-9]{16}|AIza[0-9A-Za-z_\-]{35}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,255}";
const PRIVATE_KEY: &str =
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)";

/// Compiled program size allowed per pattern; the built-in ones need far less.
const REGEX_SIZE_LIMIT: usize = 4 << 20;

fn patterns(d: Detector) -> Vec<(&'static str, Check, Resume)> {
    match d {
        Detector::Email => vec![(EMAIL, accept, Resume::AfterMatch)],
        Detector::Card => vec![(CARD, check_card, Resume::AfterMatch)],
        Detector::Ssn => vec![(SSN, check_ssn, Resume::NextChar)],
        Detector::Iban => vec![(IBAN, check_iban, Resume::NextChar)],
        Detector::Phone => vec![
            (PHONE_INTL, check_phone_intl, Resume::NextChar),
            (PHONE_NANP, check_phone_nanp, Resume::NextChar),
            (PHONE_TRUNK, check_phone_trunk, Resume::NextChar),
        ],
        Detector::Ip => vec![
            (IPV4, check_ipv4, Resume::NextChar),
            (IPV6, check_ipv6, Resume::NextChar),
        ],
        Detector::Jwt => vec![(JWT, check_jwt, Resume::AfterMatch)],
        Detector::BearerToken => vec![(BEARER, check_bearer, Resume::AfterMatch)],
        Detector::CloudKey => vec![(CLOUD_KEY, check_cloud_key, Resume::NextChar)],
        Detector::PrivateKey => vec![(PRIVATE_KEY, accept, Resume::AfterMatch)],
    }
}

impl DetectorSet {
    /// Compiles the given detectors (duplicates are ignored).
    pub fn new(detectors: &[Detector]) -> Self {
        let mut matchers = Vec::new();
        let mut broken = Vec::new();
        let mut seen = Vec::new();
        for &d in detectors {
            if seen.contains(&d) {
                continue;
            }
            seen.push(d);
            for (pattern, check, resume) in patterns(d) {
                match RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(regex) => matchers.push(Matcher {
                        detector: d,
                        regex,
                        check,
                        resume,
                    }),
                    Err(_) => {
                        if !broken.contains(&d) {
                            broken.push(d);
                        }
                    }
                }
            }
        }
        DetectorSet { matchers, broken }
    }

    /// Byte ranges of every match in `text`, non-overlapping, sorted, each
    /// with the detector that matched.
    pub fn find(&self, text: &str) -> Vec<(Range<usize>, Detector)> {
        if let Some(&d) = self.broken.first() {
            if !text.is_empty() {
                return vec![(0..text.len(), d)];
            }
        }
        let mut all = Vec::new();
        for m in &self.matchers {
            scan(m, text, &mut all);
        }
        all.sort_by(|(a, da), (b, db)| {
            a.start
                .cmp(&b.start)
                .then(b.end.cmp(&a.end))
                .then(da.rank().cmp(&db.rank()))
        });
        let mut out: Vec<(Range<usize>, Detector)> = Vec::with_capacity(all.len());
        let mut end = 0;
        for (r, d) in all {
            if r.start >= end && r.end > r.start {
                end = r.end;
                out.push((r, d));
            }
        }
        out
    }

    /// Replaces every match with the output of `f` applied to the matched
    /// text as a text value. NULL from the function becomes `****`, since a
    /// substring cannot be NULL. Returns `None` when nothing matched.
    pub fn mask_text(&self, text: &str, f: &MaskFn) -> Option<String> {
        let found = self.find(text);
        if found.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for (r, _) in found {
            // Ranges come from matches on this text, so both slices exist;
            // should one not, the whole text is hidden rather than shown.
            let (Some(before), Some(hit)) = (text.get(pos..r.start), text.get(r.clone())) else {
                return Some(REPLACEMENT.to_owned());
            };
            out.push_str(before);
            let masked = mask_value(f, oid::TEXT, Format::Text, hit.as_bytes())
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_else(|| REPLACEMENT.to_owned());
            out.push_str(&masked);
            pos = r.end;
        }
        out.push_str(text.get(pos..).unwrap_or(""));
        Some(out)
    }
}

/// Stands in for a substring whose masking function gave NULL.
const REPLACEMENT: &str = "****";

fn scan(m: &Matcher, text: &str, out: &mut Vec<(Range<usize>, Detector)>) {
    let mut pos = 0;
    while pos <= text.len() {
        let Some(found) = m.regex.find_at(text, pos) else {
            break;
        };
        let accepted = (m.check)(text, found.range());
        let next = match (m.resume, accepted.last()) {
            (Resume::AfterMatch, _) => found.end(),
            (Resume::NextChar, Some(last)) => last.end,
            (Resume::NextChar, None) => found.start() + 1,
        };
        let next = next.max(found.start() + 1);
        out.extend(accepted.into_iter().map(|r| (r, m.detector)));
        pos = next_boundary(text, next);
    }
}

/// The first char boundary at or after `i` (past the end when `i` is).
fn next_boundary(text: &str, mut i: usize) -> usize {
    while i < text.len() && !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------
// Context helpers

fn before(text: &str, start: usize) -> (Option<char>, Option<char>) {
    let mut it = text.get(..start).unwrap_or("").chars().rev();
    (it.next(), it.next())
}

fn after(text: &str, end: usize) -> (Option<char>, Option<char>) {
    let mut it = text.get(end..).unwrap_or("").chars();
    (it.next(), it.next())
}

fn is_alnum(c: Option<char>) -> bool {
    c.is_some_and(char::is_alphanumeric)
}

fn is_digit(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_digit())
}

/// Not glued to letters or digits, nor part of a longer number joined by
/// one of `joiners` (a date, a version, a longer dashed id).
fn isolated(text: &str, r: &Range<usize>, joiners: &str) -> bool {
    let (p1, p2) = before(text, r.start);
    let (n1, n2) = after(text, r.end);
    let joined =
        |c: Option<char>, d: Option<char>| c.is_some_and(|c| joiners.contains(c)) && is_digit(d);
    !is_alnum(p1) && !is_alnum(n1) && !joined(p1, p2) && !joined(n1, n2)
}

fn accept(_: &str, r: Range<usize>) -> Vec<Range<usize>> {
    vec![r]
}

fn one(r: Range<usize>) -> Vec<Range<usize>> {
    vec![r]
}

// ---------------------------------------------------------------------------
// Validators

/// Luhn checksum over ASCII digits.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if v > 9 {
            return false;
        }
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn check_card(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    // Digit groups of the run, as absolute byte ranges.
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut i = r.start;
    while i < r.end {
        if bytes.get(i).is_some_and(u8::is_ascii_digit) {
            let s = i;
            while i < r.end && bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            groups.push(s..i);
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    let mut gi = 0;
    while gi < groups.len() {
        let mut best = None;
        let mut digits: Vec<u8> = Vec::with_capacity(19);
        for (gj, g) in groups.iter().enumerate().skip(gi) {
            if gj > gi && (g.len() < 3 || groups[gi].len() < 3) {
                break;
            }
            digits.extend_from_slice(bytes.get(g.clone()).unwrap_or(&[]));
            if digits.len() > 19 {
                break;
            }
            let span = groups[gi].start..g.end;
            if digits.len() >= 13
                && matches!(digits.first(), Some(b'2'..=b'6'))
                && luhn(&digits)
                && card_isolated(text, &span)
            {
                best = Some((gj, span));
            }
        }
        match best {
            Some((gj, span)) => {
                out.push(span);
                gi = gj + 1;
            }
            None => gi += 1,
        }
    }
    out
}

/// Groups inside a run are joined by separators, so only letters, digits and
/// decimal points count as glue here.
fn card_isolated(text: &str, r: &Range<usize>) -> bool {
    let (p1, p2) = before(text, r.start);
    let (n1, n2) = after(text, r.end);
    let point = |c: Option<char>, d: Option<char>| c == Some('.') && is_digit(d);
    !is_alnum(p1) && !is_alnum(n1) && !point(p1, p2) && !point(n1, n2)
}

fn check_ssn(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let Some(s) = text.get(r.clone()) else {
        return Vec::new();
    };
    let (area, group, serial) = match (s.get(0..3), s.get(4..6), s.get(7..11)) {
        (Some(a), Some(g), Some(se)) => (a, g, se),
        _ => return Vec::new(),
    };
    let valid = area != "000"
        && area != "666"
        && !area.starts_with('9')
        && group != "00"
        && serial != "0000"
        && isolated(text, &r, "-./");
    if valid {
        vec![r]
    } else {
        Vec::new()
    }
}

/// The IBAN checksum: the rearranged number, letters as 10..35, mod 97 is 1.
fn iban_checksum(compact: &[u8]) -> bool {
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        rem = match c {
            b'0'..=b'9' => (rem * 10 + u32::from(c - b'0')) % 97,
            b'A'..=b'Z' => (rem * 100 + u32::from(c - b'A') + 10) % 97,
            _ => return false,
        };
    }
    rem == 1
}

fn check_iban(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    if is_alnum(before(text, r.start).0) {
        return Vec::new();
    }
    // The greedy candidate may run into a following word; try shorter ends.
    let min_end = r.start + 15;
    let mut end = r.end;
    while end >= min_end {
        if let Some(sub) = text.get(r.start..end) {
            if !sub.ends_with(' ') && !is_alnum(after(text, end).0) && iban_groups_ok(sub) {
                let compact: Vec<u8> = sub.bytes().filter(|b| *b != b' ').collect();
                if iban_checksum(&compact) {
                    return one(r.start..end);
                }
            }
        }
        end -= 1;
    }
    Vec::new()
}

/// Either compact, or groups of four separated by single spaces with a
/// shorter last group.
fn iban_groups_ok(s: &str) -> bool {
    if !s.contains(' ') {
        return true;
    }
    let groups: Vec<&str> = s.split(' ').collect();
    let n = groups.len();
    groups.iter().enumerate().all(|(i, g)| {
        if i + 1 < n {
            g.len() == 4
        } else {
            (1..=4).contains(&g.len())
        }
    })
}

fn is_phone_separator(b: u8) -> bool {
    matches!(b, b' ' | b'.' | b'-')
}

fn check_phone_intl(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let (p1, _) = before(text, r.start);
    if is_alnum(p1) || p1 == Some('+') {
        return Vec::new();
    }
    let bytes = text.as_bytes();
    let mut end = r.end;
    while end > r.start {
        let last_is_digit = bytes.get(end - 1).is_some_and(u8::is_ascii_digit);
        let cut_ok = end == r.end || bytes.get(end).is_some_and(|b| is_phone_separator(*b));
        if last_is_digit && cut_ok {
            let span = r.start..end;
            if intl_shape_ok(bytes.get(span.clone()).unwrap_or(&[])) && isolated(text, &span, "-./")
            {
                return vec![span];
            }
        }
        end -= 1;
    }
    Vec::new()
}

/// `+` then digits with single separators and at most one `(digits)` group.
fn intl_shape_ok(s: &[u8]) -> bool {
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    if !(8..=15).contains(&digits) {
        return false;
    }
    let mut parens = 0;
    let mut open = false;
    let mut prev_sep = false;
    for &b in s.iter().skip(1) {
        match b {
            b'0'..=b'9' => prev_sep = false,
            b'(' => {
                if open || parens > 0 {
                    return false;
                }
                open = true;
                parens += 1;
                prev_sep = false;
            }
            b')' => {
                if !open {
                    return false;
                }
                open = false;
                prev_sep = false;
            }
            _ => {
                if prev_sep || open {
                    return false;
                }
                prev_sep = true;
            }
        }
    }
    !open
}

fn check_phone_nanp(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let Some(s) = text.get(r.clone()).map(str::as_bytes) else {
        return Vec::new();
    };
    let n = s.len();
    // In the form ddd?ddd?dddd both separators must agree.
    let sep2 = n.checked_sub(5).and_then(|i| s.get(i));
    let sep1 = n.checked_sub(9).and_then(|i| s.get(i));
    let before_sep1 = n.checked_sub(10).and_then(|i| s.get(i));
    if let (Some(a), Some(b), Some(c)) = (sep1, sep2, before_sep1) {
        if is_phone_separator(*a) && c.is_ascii_digit() && a != b {
            return Vec::new();
        }
    }
    if isolated(text, &r, "-./") && before(text, r.start).0 != Some('+') {
        vec![r]
    } else {
        Vec::new()
    }
}

fn check_phone_trunk(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let Some(s) = bytes.get(r.clone()) else {
        return Vec::new();
    };
    // Group ends (absolute) and the separators used.
    let mut ends = Vec::new();
    let mut seps = Vec::new();
    for (i, b) in s.iter().enumerate() {
        if !b.is_ascii_digit() {
            ends.push(r.start + i);
            seps.push(*b);
        }
    }
    ends.push(r.end);
    // Drop trailing groups until the rest is a phone number.
    for k in (1..ends.len()).rev() {
        let end = ends[k];
        let span = r.start..end;
        let used = &seps[..k];
        let one_kind = used.iter().all(|c| Some(c) == used.first());
        let digits = bytes
            .get(span.clone())
            .unwrap_or(&[])
            .iter()
            .filter(|b| b.is_ascii_digit())
            .count();
        if one_kind && (10..=11).contains(&digits) && isolated(text, &span, "-./") {
            return vec![span];
        }
    }
    Vec::new()
}

fn check_ipv4(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let (p1, _) = before(text, r.start);
    let (n1, n2) = after(text, r.end);
    let glued =
        is_alnum(p1) || p1 == Some('.') || is_alnum(n1) || (n1 == Some('.') && is_digit(n2));
    if glued {
        Vec::new()
    } else {
        vec![r]
    }
}

fn check_ipv6(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let Some(s) = text.get(r.clone()) else {
        return Vec::new();
    };
    let trimmed = s.trim_end_matches('.');
    let span = r.start..r.start + trimmed.len();
    let hex_digits = trimmed.bytes().filter(u8::is_ascii_hexdigit).count();
    let (p1, _) = before(text, span.start);
    let (n1, _) = after(text, span.end);
    let ok = (hex_digits >= 2 || trimmed == "::1")
        && trimmed.parse::<std::net::Ipv6Addr>().is_ok()
        && !is_alnum(p1)
        && !matches!(p1, Some(':') | Some('.'))
        && !is_alnum(n1)
        && n1 != Some(':');
    if ok {
        vec![span]
    } else {
        Vec::new()
    }
}

fn check_jwt(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let (p1, _) = before(text, r.start);
    if is_alnum(p1) || matches!(p1, Some('_') | Some('-')) {
        return Vec::new();
    }
    vec![r]
}

fn check_bearer(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    if is_alnum(before(text, r.start).0) {
        return Vec::new();
    }
    let Some(s) = text.get(r.clone()) else {
        return Vec::new();
    };
    // Keep the word and the blanks; mask the credential itself.
    let word = "bearer".len();
    let blanks = s
        .get(word..)
        .unwrap_or("")
        .bytes()
        .take_while(|b| *b == b' ' || *b == b'\t')
        .count();
    let start = r.start + word + blanks;
    if start < r.end {
        one(start..r.end)
    } else {
        Vec::new()
    }
}

fn check_cloud_key(text: &str, r: Range<usize>) -> Vec<Range<usize>> {
    let (p1, _) = before(text, r.start);
    let (n1, _) = after(text, r.end);
    let glued = |c: Option<char>| is_alnum(c) || c == Some('_');
    if glued(p1) || glued(n1) {
        Vec::new()
    } else {
        vec![r]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const JWT_SAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    fn hits(d: Detector, text: &str) -> Vec<&str> {
        DetectorSet::new(&[d])
            .find(text)
            .into_iter()
            .map(|(r, found)| {
                assert_eq!(found, d);
                &text[r]
            })
            .collect()
    }

    fn yes(d: Detector, text: &str, want: &str) {
        assert_eq!(hits(d, text), vec![want], "{d:?} in {text:?}");
    }

    fn no(d: Detector, text: &str) {
        assert!(
            hits(d, text).is_empty(),
            "{d:?} in {text:?}: {:?}",
            hits(d, text)
        );
    }

    #[test]
    fn names_and_serde_agree() {
        for d in Detector::ALL {
            let parsed: Detector = serde_json::from_str(&format!("\"{}\"", d.name())).unwrap();
            assert_eq!(parsed, d);
        }
        assert!(serde_json::from_str::<Detector>("\"creditcard\"").is_err());
        let set = DetectorSet::new(&Detector::ALL);
        assert!(set.broken.is_empty());
        assert!(format!("{set:?}").contains("private_key"));
    }

    #[test]
    fn emails() {
        yes(
            Detector::Email,
            "mail alice@example.com now",
            "alice@example.com",
        );
        yes(
            Detector::Email,
            "<first.last+tag@mail.example.co.uk>",
            "first.last+tag@mail.example.co.uk",
        );
        yes(
            Detector::Email,
            "Zoë: zoe_1@sub-domain.example.org.",
            "zoe_1@sub-domain.example.org",
        );
        no(Detector::Email, "alice at example dot com");
        no(Detector::Email, "@example.com");
        no(Detector::Email, "alice@localhost");
        no(Detector::Email, "a@b.c");
    }

    #[test]
    fn cards() {
        yes(
            Detector::Card,
            "card 4111 1111 1111 1111 exp",
            "4111 1111 1111 1111",
        );
        yes(Detector::Card, "4111111111111111", "4111111111111111");
        yes(
            Detector::Card,
            "mc: 5555-5555-5555-4444.",
            "5555-5555-5555-4444",
        );
        yes(
            Detector::Card,
            "amex 3782 822463 10005",
            "3782 822463 10005",
        );
        yes(
            Detector::Card,
            "1234 4111 1111 1111 1111",
            "4111 1111 1111 1111",
        );
        yes(
            Detector::Card,
            "4111 1111 1111 1111 2024-01-01",
            "4111 1111 1111 1111",
        );
        no(Detector::Card, "card 4111 1111 1111 1112 exp");
        no(Detector::Card, "4111111111111112");
        no(Detector::Card, "ts 1709647629123");
        no(Detector::Card, "X4111111111111111");
        no(Detector::Card, "411111111111");
        no(Detector::Card, "3.4111111111111111");
        assert_eq!(
            hits(Detector::Card, "4111111111111111 5555555555554444").len(),
            2
        );
    }

    #[test]
    fn ssns() {
        yes(Detector::Ssn, "ssn 123-45-6789.", "123-45-6789");
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-34-5678",
            "123-00-6789",
            "123-45-0000",
        ] {
            no(Detector::Ssn, bad);
        }
        no(Detector::Ssn, "1123-45-6789");
        no(Detector::Ssn, "123-45-67890");
        no(Detector::Ssn, "2024-123-45-6789");
        no(Detector::Ssn, "123456789");
    }

    #[test]
    fn ibans() {
        yes(
            Detector::Iban,
            "iban GB82WEST12345698765432",
            "GB82WEST12345698765432",
        );
        yes(
            Detector::Iban,
            "GB82 WEST 1234 5698 7654 32 EUR",
            "GB82 WEST 1234 5698 7654 32",
        );
        yes(
            Detector::Iban,
            "(DE89370400440532013000)",
            "DE89370400440532013000",
        );
        no(Detector::Iban, "GB83WEST12345698765432");
        no(Detector::Iban, "GB82WEST12345698765433");
        no(Detector::Iban, "XGB82WEST12345698765432");
        no(Detector::Iban, "GB82 WES T123 4569 8765 432");
        no(Detector::Iban, "gb82west12345698765432");
    }

    #[test]
    fn phones() {
        yes(Detector::Phone, "call +14155552671 now", "+14155552671");
        yes(Detector::Phone, "tel: +44 20 7946 0958", "+44 20 7946 0958");
        yes(
            Detector::Phone,
            "+49 (30) 1234-5678, thanks",
            "+49 (30) 1234-5678",
        );
        yes(
            Detector::Phone,
            "+1 555 123 4567 2024-01-01",
            "+1 555 123 4567",
        );
        yes(Detector::Phone, "office (415) 555-2671", "(415) 555-2671");
        yes(Detector::Phone, "415-555-2671", "415-555-2671");
        yes(Detector::Phone, "415.555.2671", "415.555.2671");
        yes(Detector::Phone, "Berlin 030 12345678", "030 12345678");
        yes(Detector::Phone, "Paris 06 12 34 56 78", "06 12 34 56 78");
        yes(Detector::Phone, "London 020 7946 0958", "020 7946 0958");
        for text in [
            "12345",
            "on 2024-03-05",
            "on 05.12.2024",
            "415-555.2671",
            "123-456-7890",
            "version 1.2.3",
            "+12345",
            "4155552671",
            "id 0612-34-56-78-99-11",
            "06-12 34 56 78",
        ] {
            no(Detector::Phone, text);
        }
    }

    #[test]
    fn ips() {
        yes(Detector::Ip, "from 192.168.1.1:5432", "192.168.1.1");
        yes(Detector::Ip, "10.0.0.255.", "10.0.0.255");
        yes(Detector::Ip, "host 2001:db8::1 up", "2001:db8::1");
        yes(
            Detector::Ip,
            "[fe80::1ff:fe23:4567:890a]",
            "fe80::1ff:fe23:4567:890a",
        );
        yes(Detector::Ip, "mapped ::ffff:192.0.2.1", "::ffff:192.0.2.1");
        yes(Detector::Ip, "lo ::1", "::1");
        for text in [
            "999.1.1.1",
            "1.2.3.4.5",
            "1.2.3",
            "at 10:30:00",
            "std::vector",
            "a1.2.3.4",
            "::",
        ] {
            no(Detector::Ip, text);
        }
    }

    #[test]
    fn jwts_and_bearer_tokens() {
        yes(Detector::Jwt, &format!("token={JWT_SAMPLE};"), JWT_SAMPLE);
        no(Detector::Jwt, "eyJ.abc.def");
        no(Detector::Jwt, "heyJhbGciOi.eyJzdWIi.abc");
        yes(
            Detector::BearerToken,
            "Authorization: Bearer abcdef123456",
            "abcdef123456",
        );
        yes(
            Detector::BearerToken,
            "authorization: bearer\tdGVzdDp0ZXN0==",
            "dGVzdDp0ZXN0==",
        );
        no(Detector::BearerToken, "Bearer abc");
        no(Detector::BearerToken, "the bearer of bad news");
        // A JWT sent as a bearer token is found once, as a JWT.
        let set = DetectorSet::new(&Detector::ALL);
        let text = format!("Authorization: Bearer {JWT_SAMPLE}");
        let found = set.find(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1, Detector::Jwt);
        assert_eq!(&text[found[0].0.clone()], JWT_SAMPLE);
    }

    #[test]
    fn cloud_keys() {
        yes(
            Detector::CloudKey,
            "key=AKIAIOSFODNN7EXAMPLE",
            "AKIAIOSFODNN7EXAMPLE",
        );
        yes(
            Detector::CloudKey,
            "ASIAY34FZKBOKMUTVV7A",
            "ASIAY34FZKBOKMUTVV7A",
        );
        let gcp = format!("AIza{}", "Sy".repeat(17) + "A");
        yes(Detector::CloudKey, &format!("k: {gcp}"), &gcp);
        let gh = format!("ghp_{}", "a1B2".repeat(9));
        yes(Detector::CloudKey, &format!("{gh} "), &gh);
        let pat = format!("github_pat_{}", "x".repeat(82));
        yes(Detector::CloudKey, &pat, &pat);
        no(Detector::CloudKey, "AKIAIOSFODNN7EXAMPL");
        no(Detector::CloudKey, "AKIAIOSFODNN7EXAMPLE1");
        no(Detector::CloudKey, "xAKIAIOSFODNN7EXAMPLE");
        no(Detector::CloudKey, &format!("ghp_{}", "a".repeat(20)));
    }

    #[test]
    fn private_keys() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\nKUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----";
        yes(Detector::PrivateKey, &format!("key:\n{pem}\ntrailer"), pem);
        let pkcs8 =
            "-----BEGIN PRIVATE KEY-----\r\nMC4CAQAwBQYDK2VwBCIEIA==\r\n-----END PRIVATE KEY-----";
        yes(Detector::PrivateKey, pkcs8, pkcs8);
        let cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA";
        yes(Detector::PrivateKey, &format!("x {cut}"), cut);
        no(
            Detector::PrivateKey,
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
        );
        no(
            Detector::PrivateKey,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        );
    }

    #[test]
    fn find_is_sorted_and_disjoint() {
        let set = DetectorSet::new(&Detector::ALL);
        let text = "alice@example.com paid with 4111 1111 1111 1111 from 10.0.0.1, ssn 123-45-6789, iban GB82WEST12345698765432, call +14155552671";
        let found = set.find(text);
        let kinds: Vec<Detector> = found.iter().map(|(_, d)| *d).collect();
        assert_eq!(
            kinds,
            [
                Detector::Email,
                Detector::Card,
                Detector::Ip,
                Detector::Ssn,
                Detector::Iban,
                Detector::Phone
            ]
        );
        for w in found.windows(2) {
            assert!(w[0].0.end <= w[1].0.start);
        }
        assert!(set.find("nothing to see here, 42 apples").is_empty());
        assert!(DetectorSet::new(&[]).find(text).is_empty());
        // Duplicates in the list compile once.
        assert_eq!(
            DetectorSet::new(&[Detector::Ssn, Detector::Ssn])
                .matchers
                .len(),
            1
        );
    }

    #[test]
    fn mask_text_rewrites_matches() {
        let set = DetectorSet::new(&Detector::ALL);
        let text = "Zoë <alice@example.com>, card 4111 1111 1111 1111.";
        assert_eq!(
            set.mask_text(text, &MaskFn::Redact).as_deref(),
            Some("Zoë <****>, card ****.")
        );
        assert_eq!(
            set.mask_text(text, &MaskFn::Email).as_deref(),
            Some("Zoë <*****@example.com>, card *******************.")
        );
        assert_eq!(
            set.mask_text(text, &MaskFn::Null).as_deref(),
            Some("Zoë <****>, card ****.")
        );
        let p = MaskFn::Partial {
            first: 0,
            last: 4,
            mask: '#',
        };
        assert_eq!(
            set.mask_text("card 4111 1111 1111 1111", &p).as_deref(),
            Some("card ###############1111")
        );
        let h = MaskFn::Hash {
            key: crate::mask::value::HashKey::new(b"k"),
        };
        let hashed = set.mask_text("card 4111-1111-1111-1111!", &h).unwrap();
        assert_eq!(hashed.len(), "card 4111-1111-1111-1111!".len());
        assert!(!hashed.contains("4111-1111-1111-1111"));
        assert_eq!(set.mask_text("nothing here", &MaskFn::Redact), None);
        assert_eq!(set.mask_text("", &MaskFn::Redact), None);
    }

    #[test]
    fn hostile_input_stays_linear() {
        let set = DetectorSet::new(&Detector::ALL);
        let inputs = [
            "a:".repeat(50_000),
            "1 ".repeat(50_000),
            "+1".repeat(50_000),
            "0 12".repeat(25_000),
            "GB82 ".repeat(20_000),
            "a".repeat(100_000) + "@example.com",
            "-----BEGIN PRIVATE KEY-----".repeat(4_000),
            "eyJ".repeat(30_000),
            "1.".repeat(50_000),
        ];
        let start = std::time::Instant::now();
        for text in &inputs {
            let _ = set.find(text);
        }
        // Quadratic behaviour would take minutes here.
        assert!(start.elapsed() < std::time::Duration::from_secs(60));
    }

    proptest! {
        #[test]
        fn find_never_panics(s in "\\PC{0,80}") {
            let set = DetectorSet::new(&Detector::ALL);
            let found = set.find(&s);
            let mut end = 0;
            for (r, _) in &found {
                prop_assert!(r.start >= end && r.start < r.end && r.end <= s.len());
                prop_assert!(s.is_char_boundary(r.start) && s.is_char_boundary(r.end));
                end = r.end;
            }
            let _ = set.mask_text(&s, &MaskFn::Redact);
            let _ = set.mask_text(&s, &MaskFn::Partial { first: 1, last: 1, mask: '•' });
        }

        #[test]
        fn find_never_panics_on_shaped_text(s in "[0-9A-Za-z .:@+()/\\-_]{0,120}") {
            let set = DetectorSet::new(&Detector::ALL);
            if let Some(out) = set.mask_text(&s, &MaskFn::Redact) {
                prop_assert!(out.contains("****"));
            }
        }
    }
}
