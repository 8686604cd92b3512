//! `pgveil rules test DIR`: fixtures that data teams keep beside their
//! rules, run without a database.
//!
//! The rules are the `*.toml` files of `DIR`; the fixtures are the `*.toml`
//! files of `DIR/tests`. Each fixture case names an identity's groups, the
//! result columns (table, column, type), input rows and the rows expected
//! back, all in PostgreSQL's text format. In a row, `"\N"` stands for NULL
//! and, in an expected row, `"\*"` for "any value but the input" (for hash
//! outputs, which depend on the key).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mask::catalog::{Catalog, Row};
use crate::mask::plan::{Field, Plan};
use crate::mask::rules::{self, RuleSet};

/// How a fixture writes NULL.
const NULL: &str = "\\N";
/// How an expected row writes "masked, value not checked".
const ANY_MASKED: &str = "\\*";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    case: Vec<FixtureCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureCase {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    columns: Vec<FixtureColumn>,
    rows: Vec<Vec<String>>,
    expect: Vec<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureColumn {
    /// `[schema.]table.column`, or a bare output name for an expression.
    column: String,
    #[serde(rename = "type")]
    type_name: String,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that passed.
    pub passed: usize,
    /// One message per failed case.
    pub failures: Vec<String>,
}

/// Loads the rules of `dir` and runs every fixture of `dir/tests`.
pub fn run(dir: &Path) -> anyhow::Result<Report> {
    let rules = RuleSet::load_dir(dir)?;
    let tests = dir.join("tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tests)
        .map_err(|e| anyhow::anyhow!("fixtures {}: {e}", tests.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut report = Report::default();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let fixture: FixtureFile = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("fixtures {}: {}", file.display(), e.to_string().trim_end())
        })?;
        for case in &fixture.case {
            match run_case(&rules, case) {
                Ok(()) => report.passed += 1,
                Err(why) => report.failures.push(format!(
                    "{}: case \"{}\": {why}",
                    file.display(),
                    case.name
                )),
            }
        }
    }
    Ok(report)
}

fn run_case(rules: &RuleSet, case: &FixtureCase) -> Result<(), String> {
    // A catalog of just the fixture's columns, one relation per table.
    let mut catalog_rows: Vec<Row> = Vec::new();
    let mut fields = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    for (i, col) in case.columns.iter().enumerate() {
        let type_oid = rules::type_oid(&col.type_name)?;
        let field = match rules::parse_column(&col.column) {
            Ok(name) => {
                let table = format!("{}.{}", name.schema, name.table);
                let idx = tables.iter().position(|t| *t == table).unwrap_or_else(|| {
                    tables.push(table);
                    tables.len() - 1
                });
                let (oid, attnum) = (16_384 + idx as u32, i as i16 + 1);
                catalog_rows.push(
                    [
                        oid.to_string(),
                        attnum.to_string(),
                        name.schema,
                        name.table,
                        name.column.clone(),
                        "r".into(),
                        type_oid.to_string(),
                    ]
                    .into_iter()
                    .map(Some)
                    .collect(),
                );
                Field {
                    name: name.column.into_bytes(),
                    table_oid: oid,
                    attnum,
                    type_oid,
                    format: 0,
                }
            }
            Err(_) => Field {
                name: col.column.clone().into_bytes(),
                table_oid: 0,
                attnum: 0,
                type_oid,
                format: 0,
            },
        };
        fields.push(field);
    }
    let catalog = Catalog::from_rows(&catalog_rows, &[]).map_err(|e| e.to_string())?;
    let plan = Plan::build(&fields, rules, &catalog, &case.groups);
    if case.rows.len() != case.expect.len() {
        return Err(format!(
            "{} rows but {} expected rows",
            case.rows.len(),
            case.expect.len()
        ));
    }
    for (n, (row, want)) in case.rows.iter().zip(&case.expect).enumerate() {
        if row.len() != fields.len() || want.len() != fields.len() {
            return Err(format!("row {}: expected {} values", n + 1, fields.len()));
        }
        for (i, (input, want)) in row.iter().zip(want).enumerate() {
            let value = (input != NULL).then_some(input.as_bytes());
            let got = match plan.mask_column(i, value) {
                None => value.map(<[u8]>::to_vec),
                Some(masked) => masked,
            };
            let got_text = got
                .as_deref()
                .map_or(NULL.to_owned(), |v| String::from_utf8_lossy(v).into_owned());
            let ok = if want == ANY_MASKED {
                got_text != *input
            } else {
                got_text == *want
            };
            if !ok {
                return Err(format!(
                    "row {}, column {}: expected {want:?}, got {got_text:?}",
                    n + 1,
                    case.columns[i].column
                ));
            }
        }
    }
    Ok(())
}
