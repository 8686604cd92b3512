//! `pgveil check` for data teams: the rules against the live schema.
//!
//! A rule that matches nothing is almost always a typo (a misspelt column,
//! a table that was renamed), and a typo in a masking rule means clear data.
//! So each finding is a problem that makes `check` fail.

use std::collections::HashSet;

use crate::mask::catalog::Catalog;
use crate::mask::rules::{DetectWhere, RuleSet, Selector};

/// Schemas whose columns no data team's rule is about.
const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

/// Every finding, one sentence each. `mapped_groups` are the groups that
/// the authentication set-up knows (role mappings and trust groups).
pub fn lint(rules: &RuleSet, catalog: &Catalog, mapped_groups: &[String]) -> Vec<String> {
    let user_columns: Vec<_> = catalog
        .columns()
        .filter(|c| !SYSTEM_SCHEMAS.contains(&c.name.schema.as_str()))
        .collect();
    let names: HashSet<_> = user_columns.iter().map(|c| &c.name).collect();
    let tables: HashSet<_> = user_columns
        .iter()
        .map(|c| (&c.name.schema, &c.name.table))
        .collect();
    let mut findings = Vec::new();
    for rule in &rules.rules {
        match &rule.selector {
            Selector::Columns(cols) => {
                for c in cols.iter().filter(|c| !names.contains(c)) {
                    findings.push(format!("rule \"{}\": column {c} does not exist", rule.name));
                }
            }
            Selector::Pattern(re) => {
                if !user_columns.iter().any(|c| re.is_match(&c.name.column)) {
                    findings.push(format!(
                        "rule \"{}\": column_pattern matches no column",
                        rule.name
                    ));
                }
            }
            Selector::Types(types) => {
                if !user_columns.iter().any(|c| types.contains(&c.type_oid)) {
                    findings.push(format!("rule \"{}\": no column has its types", rule.name));
                }
            }
        }
    }
    for d in &rules.detects {
        match &d.scope_where {
            DetectWhere::Everywhere => {}
            DetectWhere::Tables(ts) => {
                for t in ts
                    .iter()
                    .filter(|t| !tables.contains(&(&t.schema, &t.table)))
                {
                    findings.push(format!(
                        "detector rule \"{}\": table {}.{} does not exist",
                        d.name, t.schema, t.table
                    ));
                }
            }
            DetectWhere::Columns(cols) => {
                for c in cols.iter().filter(|c| !names.contains(c)) {
                    findings.push(format!(
                        "detector rule \"{}\": column {c} does not exist",
                        d.name
                    ));
                }
            }
        }
    }
    let mut seen = HashSet::new();
    for group in rules.groups() {
        if !mapped_groups.contains(group) && seen.insert(group) {
            findings.push(format!(
                "group \"{group}\" is named by a rule but by no [[roles]] mapping or trust_groups entry"
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::catalog::Row;
    use std::path::Path;

    #[test]
    fn reports_what_matches_nothing() {
        let r = |v: &[&str]| -> Row { v.iter().map(|s| Some((*s).to_owned())).collect() };
        let catalog = Catalog::from_rows(
            &[
                r(&["10", "1", "public", "customers", "email", "r", "25"]),
                r(&["11", "1", "pg_catalog", "pg_user", "usename", "v", "19"]),
            ],
            &[],
        )
        .unwrap();
        let mut rules = RuleSet::default();
        rules
            .add_file(
                Path::new("t.toml"),
                r#"
                [[rule]]
                name = "ok"
                columns = ["customers.email"]
                function = "redact"
                except_groups = ["dba"]
                [[rule]]
                name = "typo"
                columns = ["customers.emial"]
                function = "redact"
                [[rule]]
                name = "pattern"
                column_pattern = "ssn$"
                function = "redact"
                [[rule]]
                name = "types"
                types = ["inet"]
                function = "redact"
                only_groups = ["contractors"]
                [[detect]]
                name = "net"
                detectors = ["email"]
                tables = ["orders"]
                function = "redact"
                "#,
            )
            .unwrap();
        let found = lint(&rules, &catalog, &["dba".into()]);
        let text = found.join("\n");
        assert_eq!(found.len(), 5, "{text}");
        for want in [
            "public.customers.emial does not exist",
            "\"pattern\": column_pattern matches no column",
            "\"types\": no column has its types",
            "table public.orders does not exist",
            "group \"contractors\"",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
    }
}
