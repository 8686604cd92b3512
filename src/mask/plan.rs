//! Result plans: what happens to each column of one result, and the
//! rewrite of the DataRows that carry it.
//!
//! A plan is built from a RowDescription (or from a statement's cached
//! description plus the formats of Bind) for one identity. Each column gets
//! at most one action: a masking function, or a set of value detectors that
//! rewrite matches inside text. A DataRow is rewritten only when its plan
//! has an action; a column without one is copied as received.
//!
//! A column that cannot be traced fails closed: a table OID that the
//! catalog does not know (a table created after the catalog was read)
//! makes the column redacted for a covered identity.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::mask::catalog::Catalog;
use crate::mask::detect::DetectorSet;
use crate::mask::lineage;
use crate::mask::rules::{DetectWhere, RuleSet};
use crate::mask::value::{self, oid, Format, MaskFn};
use crate::policy::analyze::Output;
use crate::wire::{self, tag};

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Output name (as the server sent it; may be any bytes).
    pub name: Vec<u8>,
    /// Source table OID, 0 for an expression.
    pub table_oid: u32,
    /// Source column number, 0 for an expression.
    pub attnum: i16,
    /// Type OID.
    pub type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// Parses a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Option<Vec<Field>> {
    let (count, mut rest) = take_i16(body)?;
    let mut fields = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        let (name, after) = wire::take_cstr(rest)?;
        let (table_oid, after) = take_u32(after)?;
        let (attnum, after) = take_i16(after)?;
        let (type_oid, after) = take_u32(after)?;
        // typlen (2) and typmod (4) are not needed.
        let after = after.get(6..)?;
        let (format, after) = take_i16(after)?;
        fields.push(Field {
            name: name.to_vec(),
            table_oid,
            attnum,
            type_oid,
            format,
        });
        rest = after;
    }
    Some(fields)
}

/// Result format codes of a Bind applied to `n` columns: none means all
/// text, one applies to all, otherwise one per column.
pub fn bind_formats(codes: &[i16], n: usize) -> Option<Vec<i16>> {
    match codes.len() {
        0 => Some(vec![0; n]),
        1 => Some(vec![codes[0]; n]),
        len if len == n => Some(codes.to_vec()),
        _ => None,
    }
}

/// What happens to one column.
pub enum Action {
    /// The whole value goes through a function.
    Mask(Arc<MaskFn>),
    /// Detectors rewrite matches inside the text.
    Detect(Vec<(Arc<DetectorSet>, Arc<MaskFn>)>),
    /// The rule named refuses results computed from its columns.
    Refuse(String),
}

/// One column's action, with what encoding it needs.
pub struct ColumnPlan {
    action: Action,
    type_oid: u32,
    format: Format,
}

/// The plan for one result.
#[derive(Default)]
pub struct Plan {
    columns: Vec<Option<ColumnPlan>>,
    /// `column(rule)` for each masked column, for the audit trail.
    pub masked: Vec<String>,
    /// Set when a rule refuses this result: the client's message.
    pub refusal: Option<String>,
}

impl Plan {
    /// Whether any column is rewritten.
    pub fn masks(&self) -> bool {
        !self.masked.is_empty()
    }

    /// A plan that makes every value of an `n`-column result NULL: for rows
    /// whose shape is not known.
    pub fn all_null(n: usize) -> Self {
        Self {
            columns: (0..n)
                .map(|_| {
                    Some(ColumnPlan {
                        action: Action::Mask(Arc::new(MaskFn::Null)),
                        type_oid: 0,
                        format: Format::Text,
                    })
                })
                .collect(),
            masked: vec!["*(unknown result shape)".into()],
            refusal: None,
        }
    }

    /// Builds the plan of `fields` for an identity with `groups`.
    pub fn build(fields: &[Field], rules: &RuleSet, catalog: &Catalog, groups: &[String]) -> Self {
        Self::with_lineage(fields, None, rules, catalog, groups)
    }

    /// Builds the plan of `fields`, with what the statement's analysis says
    /// each column is computed from (`lineage`, one output per field).
    pub fn with_lineage(
        fields: &[Field],
        lineage: Option<&[Output]>,
        rules: &RuleSet,
        catalog: &Catalog,
        groups: &[String],
    ) -> Self {
        let mut plan = Plan::default();
        let lineage = lineage.filter(|l| l.len() == fields.len());
        for (i, field) in fields.iter().enumerate() {
            let format = if field.format == 1 {
                Format::Binary
            } else {
                Format::Text
            };
            let derived = lineage.and_then(|l| l.get(i));
            let (action, why) = match field_action(field, derived, rules, catalog, groups) {
                Some(found) => found,
                None => {
                    plan.columns.push(None);
                    continue;
                }
            };
            let column = String::from_utf8_lossy(&field.name);
            if let Action::Refuse(rule) = &action {
                plan.refusal.get_or_insert_with(|| {
                    format!(
                        "pgveil masking rule \"{rule}\": result column \"{column}\" is computed \
                         from a covered column, which this rule does not allow"
                    )
                });
            }
            plan.masked.push(format!("{column}({why})"));
            plan.columns.push(Some(ColumnPlan {
                action,
                type_oid: field.type_oid,
                format,
            }));
        }
        plan
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// Masks one text-format value of column `i`: `None` when the column is
    /// not masked (keep the value as it is), otherwise the masked value
    /// (`Some(None)` for NULL).
    pub fn mask_column(&self, i: usize, value: Option<&[u8]>) -> Option<Option<Vec<u8>>> {
        let column = self.columns.get(i)?.as_ref()?;
        Some(value.and_then(|v| column.apply(v)))
    }

    /// Writes the DataRow whose body is `body`, rewritten by the plan, to
    /// `out`. `None` when the row does not match the plan's shape.
    pub fn rewrite(&self, body: &[u8], out: &mut BytesMut) -> Option<()> {
        let start = out.len();
        let written = self.rewrite_into(body, out);
        if written.is_none() {
            out.truncate(start);
        }
        written
    }

    /// One pass over the row: values without an action are copied as they
    /// are, with no allocation.
    fn rewrite_into(&self, body: &[u8], out: &mut BytesMut) -> Option<()> {
        let (count, mut rest) = take_i16(body)?;
        if usize::try_from(count).ok()? != self.columns.len() {
            return None;
        }
        let start = out.len();
        out.put_u8(tag::DATA_ROW);
        out.put_i32(0);
        out.put_i16(count);
        for column in &self.columns {
            let (len, after) = take_i32(rest)?;
            let Ok(n) = usize::try_from(len) else {
                out.put_i32(-1);
                rest = after;
                continue;
            };
            let value = after.get(..n)?;
            rest = after.get(n..)?;
            let masked = match column {
                None => {
                    out.put_i32(len);
                    out.put_slice(value);
                    continue;
                }
                Some(c) => c.apply(value),
            };
            match masked {
                Some(v) => {
                    out.put_i32(i32::try_from(v.len()).ok()?);
                    out.put_slice(&v);
                }
                None => out.put_i32(-1),
            }
        }
        if !rest.is_empty() {
            return None;
        }
        let len = i32::try_from(out.len() - start - 1).ok()?;
        out[start + 1..start + wire::HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        Some(())
    }
}

impl ColumnPlan {
    fn apply(&self, v: &[u8]) -> Option<Vec<u8>> {
        match &self.action {
            Action::Mask(f) => value::mask_value(f, self.type_oid, self.format, v),
            Action::Detect(sets) => self.detect(sets, v),
            // A refused result sends no rows; NULL if one slips through.
            Action::Refuse(_) => None,
        }
    }

    /// Runs the detectors over a text value; a value that is not valid
    /// text of its type is redacted whole.
    fn detect(&self, sets: &[(Arc<DetectorSet>, Arc<MaskFn>)], v: &[u8]) -> Option<Vec<u8>> {
        let redact = || value::mask_value(&MaskFn::Redact, self.type_oid, self.format, v);
        let jsonb_binary = self.type_oid == oid::JSONB && self.format == Format::Binary;
        let payload = if jsonb_binary { v.get(1..)? } else { v };
        let Ok(text) = std::str::from_utf8(payload) else {
            return redact();
        };
        let mut current = std::borrow::Cow::Borrowed(text);
        for (set, f) in sets {
            if let Some(masked) = set.mask_text(&current, f) {
                current = std::borrow::Cow::Owned(masked);
            }
        }
        let std::borrow::Cow::Owned(masked) = current else {
            return Some(v.to_vec());
        };
        if matches!(self.type_oid, oid::JSON | oid::JSONB)
            && serde_json::from_str::<serde_json::Value>(&masked).is_err()
        {
            return redact();
        }
        let mut out = Vec::with_capacity(masked.len() + 1);
        if jsonb_binary {
            out.push(1);
        }
        out.extend_from_slice(masked.as_bytes());
        Some(out)
    }
}

/// Types whose values detectors scan.
fn is_textual(type_oid: u32) -> bool {
    matches!(
        type_oid,
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::JSON | oid::JSONB
    )
}

/// The action for one field, with a short reason (the rule names).
fn field_action(
    field: &Field,
    lineage: Option<&Output>,
    rules: &RuleSet,
    catalog: &Catalog,
    groups: &[String],
) -> Option<(Action, String)> {
    let column = match (
        field.table_oid,
        catalog.column(field.table_oid, field.attnum),
    ) {
        (0, _) => None,
        (_, Some(c)) => Some(c),
        (oid, None) if !catalog.knows_relation(oid) && rules.covers_any(groups) => {
            // Fail closed: a relation the catalog has not seen yet.
            let f = Arc::new(MaskFn::Redact);
            return Some((Action::Mask(f), "untraced".into()));
        }
        _ => None,
    };
    let field_name = String::from_utf8_lossy(&field.name);
    if let Some(rule) = rules.covering(column, &field_name, field.type_oid, groups) {
        return Some((Action::Mask(rule.function.clone()), rule.name.clone()));
    }
    // A whole row of a relation (`SELECT c FROM customers c` reports the
    // table with column number 0): covered when any of its columns is.
    if field.table_oid != 0 && field.attnum <= 0 {
        let covered = catalog
            .columns_of(field.table_oid)
            .find_map(|c| rules.covering(Some(c), &c.name.column, c.type_oid, groups));
        if let Some(rule) = covered {
            let why = format!("whole row, {}", rule.name);
            return Some((Action::Mask(Arc::new(MaskFn::Redact)), why));
        }
    }
    // A computed column: what the statement computes it from. (A plain
    // column's origin comes from the server itself, which is exact.)
    let computed = lineage.filter(|_| field.table_oid == 0 || field.attnum <= 0);
    if let Some(m) = computed.and_then(|o| lineage::output_mask(&o.sources, rules, catalog, groups))
    {
        if let Some(rule) = m.refuse_derived {
            return Some((Action::Refuse(rule.name.clone()), m.why));
        }
        return Some((Action::Mask(m.function), m.why));
    }
    if !is_textual(field.type_oid) && field.table_oid != 0 {
        return None;
    }
    let mut sets = Vec::new();
    let mut names = Vec::new();
    for d in &rules.detects {
        if !d.scope.covers(groups) || !is_textual(field.type_oid) {
            continue;
        }
        let here = match &d.scope_where {
            DetectWhere::Everywhere => true,
            DetectWhere::Tables(tables) => column.is_some_and(|c| {
                c.origins.iter().chain([&c.name]).any(|o| {
                    tables
                        .iter()
                        .any(|t| t.schema == o.schema && t.table == o.table)
                })
            }),
            DetectWhere::Columns(cols) => {
                column.is_some_and(|c| c.origins.iter().chain([&c.name]).any(|o| cols.contains(o)))
            }
        };
        if here {
            sets.push((d.set.clone(), d.function.clone()));
            names.push(d.name.as_str());
        }
    }
    if sets.is_empty() {
        return None;
    }
    Some((Action::Detect(sets), names.join(",")))
}

/// Splits a DataRow body into its values (`None` for NULL).
pub fn split_data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let (count, mut rest) = take_i16(body)?;
    let mut values = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        let (len, after) = take_i32(rest)?;
        if len < 0 {
            values.push(None);
            rest = after;
            continue;
        }
        let len = usize::try_from(len).ok()?;
        values.push(Some(after.get(..len)?));
        rest = after.get(len..)?;
    }
    rest.is_empty().then_some(values)
}

fn take_i16(b: &[u8]) -> Option<(i16, &[u8])> {
    let (head, rest) = b.split_first_chunk::<2>()?;
    Some((i16::from_be_bytes(*head), rest))
}

fn take_i32(b: &[u8]) -> Option<(i32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((i32::from_be_bytes(*head), rest))
}

fn take_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::catalog::Row;
    use std::path::Path;

    fn row_description(fields: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(fields.len() as i16);
        for (name, table, att, ty, fmt) in fields {
            wire::put_cstr(&mut b, name.as_bytes());
            b.put_u32(*table);
            b.put_i16(*att);
            b.put_u32(*ty);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(*fmt);
        }
        b.to_vec()
    }

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.to_vec()
    }

    fn catalog() -> Catalog {
        let r = |v: &[&str]| -> Row { v.iter().map(|s| Some((*s).to_owned())).collect() };
        let columns = [
            r(&["10", "1", "public", "customers", "id", "r", "25"]),
            r(&["10", "2", "public", "customers", "email", "r", "25"]),
            r(&["10", "3", "public", "customers", "notes", "r", "25"]),
        ];
        Catalog::from_rows(&columns, &[]).unwrap()
    }

    fn rules() -> RuleSet {
        let mut set = RuleSet::default();
        set.add_file(
            Path::new("t.toml"),
            r#"
            [[rule]]
            name = "email"
            columns = ["customers.email"]
            function = "redact"
            except_groups = ["privacy"]
            [[detect]]
            name = "net"
            detectors = ["email"]
            function = "redact"
            except_groups = ["privacy"]
            "#,
        )
        .unwrap();
        set
    }

    #[test]
    fn covered_columns_are_rewritten_and_others_copied() {
        let desc = row_description(&[
            ("id", 10, 1, oid::INT4, 0),
            ("email", 10, 2, oid::TEXT, 0),
            ("notes", 10, 3, oid::TEXT, 0),
        ]);
        let fields = parse_row_description(&desc).unwrap();
        let (rules, catalog) = (rules(), catalog());
        let plan = Plan::build(&fields, &rules, &catalog, &["analysts".into()]);
        assert!(plan.masks());
        let clear: &[u8] = b"alice@example.com";
        let body = data_row(&[Some(b"7"), Some(clear), Some(b"mail alice@example.com now")]);
        let mut out = BytesMut::new();
        plan.rewrite(&body, &mut out).unwrap();
        let masked = split_data_row(&out[wire::HEADER_LEN..]).unwrap();
        assert_eq!(masked[0], Some(&b"7"[..]));
        for v in &masked[1..] {
            let v = v.unwrap();
            assert!(!v.windows(clear.len()).any(|w| w == clear), "{v:?}");
        }
        let exempt = Plan::build(&fields, &rules, &catalog, &["privacy".into()]);
        assert!(!exempt.masks());
    }

    #[test]
    fn unknown_relations_fail_closed_and_bad_rows_are_refused() {
        let desc = row_description(&[("x", 99, 1, oid::TEXT, 1)]);
        let fields = parse_row_description(&desc).unwrap();
        let plan = Plan::build(&fields, &rules(), &catalog(), &[]);
        assert!(plan.masks());
        let mut out = BytesMut::new();
        assert!(plan
            .rewrite(&data_row(&[Some(b"a"), Some(b"b")]), &mut out)
            .is_none());
        assert!(split_data_row(&[0, 1, 0, 0, 0, 9, b'a']).is_none());
        assert!(parse_row_description(&[0, 1, b'x']).is_none());
    }

    proptest::proptest! {
        /// For any row, a covered value never appears in the bytes sent
        /// on, whatever the function and the format.
        #[test]
        fn covered_values_never_pass(
            covered in proptest::collection::vec("[g-zÅßé日]{4,24}", 1..4),
            clear in proptest::collection::vec("[0-9]{0,12}", 1..4),
            function in 0usize..5,
            binary in proptest::bool::ANY,
        ) {
            let function = [
                "function = \"redact\"",
                "function = \"null\"",
                "function = \"email\"",
                "function = \"partial\"\nlast = 0",
                "function = \"hash\"\nkey_file = \"proptest.key\"",
            ][function];
            // The key lives beside the (never written) rule file; no
            // environment variable, which parallel tests would race on.
            let dir = std::env::temp_dir().join(format!("pgveil-proptest-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("proptest.key"), "proptest-key-0123456789").unwrap();
            let mut rules = RuleSet::default();
            rules.add_file(&dir.join("p.toml"), &format!(
                "[[rule]]\nname = \"p\"\ncolumn_pattern = \"^secret\"\n{function}\n"
            )).unwrap();
            let mut fields = Vec::new();
            let mut values: Vec<Option<&[u8]>> = Vec::new();
            for (i, v) in covered.iter().enumerate() {
                let name = format!("secret{i}").into_bytes();
                fields.push(Field { name, table_oid: 0, attnum: 0, type_oid: oid::TEXT, format: i16::from(binary) });
                values.push(Some(v.as_bytes()));
            }
            for (i, v) in clear.iter().enumerate() {
                let name = format!("plain{i}").into_bytes();
                fields.push(Field { name, table_oid: 0, attnum: 0, type_oid: oid::TEXT, format: i16::from(binary) });
                values.push(Some(v.as_bytes()));
            }
            let plan = Plan::build(&fields, &rules, &Catalog::default(), &[]);
            let mut out = BytesMut::new();
            plan.rewrite(&data_row(&values), &mut out).unwrap();
            for v in &covered {
                let v = v.as_bytes();
                proptest::prop_assert!(!out.windows(v.len()).any(|w| w == v));
            }
            let masked = split_data_row(&out[wire::HEADER_LEN..]).unwrap();
            for (i, v) in clear.iter().enumerate() {
                proptest::prop_assert_eq!(masked[covered.len() + i], Some(v.as_bytes()));
            }
        }
    }

    #[test]
    fn bind_formats_expand() {
        assert_eq!(bind_formats(&[], 2), Some(vec![0, 0]));
        assert_eq!(bind_formats(&[1], 3), Some(vec![1, 1, 1]));
        assert_eq!(bind_formats(&[0, 1], 2), Some(vec![0, 1]));
        assert_eq!(bind_formats(&[0, 1], 3), None);
    }
}
