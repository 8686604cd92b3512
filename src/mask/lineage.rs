//! What statement lineage means for masking: which rule covers a value
//! that a statement computes from other columns.
//!
//! The statement analyzer says which source columns each result column, each
//! predicate and each moved value derive from. Here those sources meet the
//! rules: a source column is covered by the rule that covers its catalog
//! column; a whole row by any rule on any of its columns; an untraced source
//! counts as covered for any identity that some rule covers (fail closed).
//!
//! A computed output is redacted as a whole, with one exception: when it
//! derives from exactly one covered column whose function does not depend
//! on the value's layout (hash, null, fixed, redact), that function applies
//! (`lower(national_id)` hashed gives the same kind of token as
//! `national_id`). The other functions keep part of the value they were
//! written for: a partial rule keeping the last four digits of a card
//! would keep digits 9 to 12 of `substr(card_number, 1, 12)`, and an email
//! rule keeps everything after the last `@` of a whole row's text.

use std::sync::Arc;

use crate::mask::catalog::Catalog;
use crate::mask::rules::{Derived, Rule, RuleSet};
use crate::mask::value::MaskFn;
use crate::policy::analyze::Source;

/// What covers one source.
#[derive(Debug, Clone, Copy)]
pub enum Cover<'r> {
    /// A masking rule.
    Rule(&'r Rule),
    /// pgveil cannot tell where the value comes from.
    Untraced,
}

impl Cover<'_> {
    /// The covering rule's name, for messages and the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Self::Rule(r) => &r.name,
            Self::Untraced => "untraced",
        }
    }

    /// Whether predicates on the value are allowed.
    pub fn allows_predicates(&self) -> bool {
        matches!(self, Self::Rule(r) if r.allow_predicates)
    }
}

/// The rule that covers `source` for an identity with `groups`, if any.
pub fn source_cover<'r>(
    source: &Source,
    rules: &'r RuleSet,
    catalog: &Catalog,
    groups: &[String],
) -> Option<Cover<'r>> {
    match source {
        Source::Column(r) => match catalog.column_by_name(r) {
            Some(c) => rules.covering(Some(c), &c.name.column, c.type_oid, groups),
            // Not in the catalog (created since it was read, or not a
            // relation pgveil knows): only name patterns can tell.
            None => rules.covering(None, &r.column, 0, groups),
        }
        .map(Cover::Rule),
        Source::WholeRow(rel) => {
            let columns = catalog.relation_columns(rel);
            if columns.is_empty() {
                return rules.covers_any(groups).then_some(Cover::Untraced);
            }
            columns.iter().find_map(|c| {
                rules
                    .covering(Some(c), &c.name.column, c.type_oid, groups)
                    .map(Cover::Rule)
            })
        }
        Source::Unknown => rules.covers_any(groups).then_some(Cover::Untraced),
    }
}

/// How an output computed from `sources` is masked, if it is.
pub struct OutputMask<'r> {
    /// The function to apply to the whole value.
    pub function: Arc<MaskFn>,
    /// The covering rules' names.
    pub why: String,
    /// Whether a covering rule refuses derived outputs.
    pub refuse_derived: Option<&'r Rule>,
}

/// The mask for an output with these sources.
pub fn output_mask<'r>(
    sources: &[Source],
    rules: &'r RuleSet,
    catalog: &Catalog,
    groups: &[String],
) -> Option<OutputMask<'r>> {
    let covers: Vec<Cover<'r>> = sources
        .iter()
        .filter_map(|s| source_cover(s, rules, catalog, groups))
        .collect();
    let first = *covers.first()?;
    let mut names: Vec<&str> = covers.iter().map(Cover::name).collect();
    names.dedup();
    let refuse_derived = covers.iter().find_map(|c| match c {
        Cover::Rule(r) if r.derived == Derived::Refuse => Some(*r),
        _ => None,
    });
    let function = match (sources, first) {
        ([Source::Column(_)], Cover::Rule(rule))
            if matches!(
                *rule.function,
                MaskFn::Hash { .. } | MaskFn::Null | MaskFn::Fixed(_) | MaskFn::Redact
            ) =>
        {
            rule.function.clone()
        }
        _ => Arc::new(MaskFn::Redact),
    };
    Some(OutputMask {
        function,
        why: names.join(","),
        refuse_derived,
    })
}
