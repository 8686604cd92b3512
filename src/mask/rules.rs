//! Masking rule files: the TOML that data teams write, loaded and checked.
//!
//! A rule directory holds `*.toml` files, read in file-name order. Each file
//! has `[[rule]]` tables (a selector, a function and who it applies to) and
//! `[[detect]]` tables (value detectors for free text). Everything is
//! compiled once at load: regexes, hash keys, type names. A bad file is an
//! error that names the file, the rule and the problem; nothing of a
//! directory with a bad file is used, so on reload the old rules stay.
//!
//! Precedence: a value is shown in clear only when no rule that matches its
//! column covers the identity. Among the rules that cover the identity, the
//! most specific one chooses the function: a `columns` rule, then a
//! `column_pattern` rule, then a `types` rule; between rules of one kind, the
//! first in file-name order and then in file order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::mask::detect::{Detector, DetectorSet};
use crate::mask::value::{oid, DatePart, HashKey, MaskFn};

/// Largest compiled regex accepted from a rule file.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Largest rule file read.
const MAX_RULE_FILE: u64 = 4 << 20;

/// A rule file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The directory or a file could not be read.
    #[error("masking rules {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid TOML or has unknown keys.
    #[error("masking rules {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A rule is inconsistent.
    #[error("masking rules {path}: rule \"{rule}\": {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The rule's name.
        rule: String,
        /// What is wrong.
        problem: String,
    },
}

/// One `[[rule]]` or `[[detect]]` table as written. One flat struct for
/// both, so that serde rejects unknown keys (it cannot with flattened
/// parts); keys that belong to the other kind are refused when compiled.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    // Selectors.
    columns: Option<Vec<String>>,
    column_pattern: Option<String>,
    types: Option<Vec<String>>,
    detectors: Option<Vec<Detector>>,
    tables: Option<Vec<String>>,
    // The function and its parameters.
    function: String,
    first: Option<usize>,
    last: Option<usize>,
    mask_char: Option<char>,
    value: Option<String>,
    pattern: Option<String>,
    replacement: Option<String>,
    part: Option<DatePart>,
    digits: Option<i32>,
    width: Option<f64>,
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    // Who it applies to.
    except_groups: Option<Vec<String>>,
    only_groups: Option<Vec<String>>,
    // What statements may do with the columns ([[rule]] only).
    allow_predicates: Option<bool>,
    derived: Option<Derived>,
}

/// What happens to a result column computed from a covered column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Derived {
    /// The computed value is masked as a whole.
    #[default]
    Mask,
    /// The statement is refused.
    Refuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawEntry>,
    #[serde(default)]
    detect: Vec<RawEntry>,
}

/// Who a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everyone.
    Everyone,
    /// Everyone but members of these groups.
    Except(Vec<String>),
    /// Only members of these groups.
    Only(Vec<String>),
}

impl Scope {
    /// Whether an identity with `groups` gets the masked value.
    pub fn covers(&self, groups: &[String]) -> bool {
        match self {
            Self::Everyone => true,
            Self::Except(exempt) => !groups.iter().any(|g| exempt.contains(g)),
            Self::Only(only) => groups.iter().any(|g| only.contains(g)),
        }
    }

    /// The groups the scope names.
    pub fn groups(&self) -> &[String] {
        match self {
            Self::Everyone => &[],
            Self::Except(g) | Self::Only(g) => g,
        }
    }
}

/// What a column rule selects, in order of precedence.
#[derive(Debug)]
pub enum Selector {
    /// Named columns.
    Columns(Vec<ColumnName>),
    /// Column names matching a pattern, in every table.
    Pattern(Regex),
    /// Columns of these types (OIDs).
    Types(Vec<u32>),
}

impl Selector {
    /// Precedence rank: lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            Self::Columns(_) => 0,
            Self::Pattern(_) => 1,
            Self::Types(_) => 2,
        }
    }
}

/// A `schema.table.column` name, folded as PostgreSQL folds identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnName {
    /// Schema.
    pub schema: String,
    /// Table or view.
    pub table: String,
    /// Column.
    pub column: String,
}

impl std::fmt::Display for ColumnName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// A `schema.table` name, folded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table or view.
    pub table: String,
}

/// A column rule, compiled.
#[derive(Debug)]
pub struct Rule {
    /// Its name, as in the file.
    pub name: String,
    /// What it selects.
    pub selector: Selector,
    /// How it masks.
    pub function: Arc<MaskFn>,
    /// Who it applies to.
    pub scope: Scope,
    /// Whether WHERE, JOIN ON, HAVING, ORDER BY and GROUP BY may use the
    /// covered columns (refused by default: they let a client infer values).
    pub allow_predicates: bool,
    /// What happens to results computed from the covered columns.
    pub derived: Derived,
}

/// Where a detector rule looks.
#[derive(Debug)]
pub enum DetectWhere {
    /// Every text column.
    Everywhere,
    /// Every text column of these tables.
    Tables(Vec<TableName>),
    /// These columns.
    Columns(Vec<ColumnName>),
}

/// A detector rule, compiled.
#[derive(Debug)]
pub struct DetectRule {
    /// Its name, as in the file.
    pub name: String,
    /// The detectors.
    pub set: Arc<DetectorSet>,
    /// The detectors' names, for reports.
    pub detectors: Vec<Detector>,
    /// Where it looks.
    pub scope_where: DetectWhere,
    /// How a match is masked.
    pub function: Arc<MaskFn>,
    /// Who it applies to.
    pub scope: Scope,
}

/// A loaded rule directory.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Column rules, sorted by precedence (stable, so file order is kept
    /// within a kind).
    pub rules: Vec<Rule>,
    /// Detector rules in file order.
    pub detects: Vec<DetectRule>,
    /// The files read.
    pub files: Vec<PathBuf>,
}

impl RuleSet {
    /// Loads every `*.toml` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, RuleError> {
        let mut set = RuleSet::default();
        for (path, text) in read_rule_files(dir)? {
            set.add_file(&path, &text)?;
            set.files.push(path);
        }
        set.rules.sort_by_key(|r| r.selector.rank());
        Ok(set)
    }

    /// Parses one file's text into this set (rules stay unsorted).
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), RuleError> {
        let raw: RawFile = parse_rule_file(path, text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for r in raw.rule {
            let invalid = |problem: String| RuleError::Invalid {
                path: path.to_owned(),
                rule: r.name.clone(),
                problem,
            };
            let rule = compile_rule(&r, base).map_err(invalid)?;
            if self.rules.iter().any(|x| x.name == rule.name)
                || self.detects.iter().any(|x| x.name == rule.name)
            {
                return Err(invalid("another rule has the same name".into()));
            }
            self.rules.push(rule);
        }
        for d in raw.detect {
            let invalid = |problem: String| RuleError::Invalid {
                path: path.to_owned(),
                rule: d.name.clone(),
                problem,
            };
            let rule = compile_detect(&d, base).map_err(invalid)?;
            if self.rules.iter().any(|x| x.name == rule.name)
                || self.detects.iter().any(|x| x.name == rule.name)
            {
                return Err(invalid("another rule has the same name".into()));
            }
            self.detects.push(rule);
        }
        Ok(())
    }

    /// Whether any rule covers an identity with `groups`.
    pub fn covers_any(&self, groups: &[String]) -> bool {
        self.rules.iter().any(|r| r.scope.covers(groups))
            || self.detects.iter().any(|d| d.scope.covers(groups))
    }

    /// The rule that masks a column for an identity with `groups`: the most
    /// specific one that matches and covers it. `column` is the catalog's
    /// column (with the base columns it comes from), absent for an
    /// expression; `name` is the output or column name that patterns match
    /// when there is no catalog column.
    pub fn covering(
        &self,
        column: Option<&crate::mask::catalog::Column>,
        name: &str,
        type_oid: u32,
        groups: &[String],
    ) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            let matches = match &rule.selector {
                Selector::Columns(names) => column
                    .is_some_and(|c| c.origins.iter().chain([&c.name]).any(|o| names.contains(o))),
                Selector::Pattern(re) => match column {
                    Some(c) => c
                        .origins
                        .iter()
                        .chain([&c.name])
                        .any(|o| re.is_match(&o.column)),
                    None => re.is_match(name),
                },
                Selector::Types(types) => types.contains(&type_oid),
            };
            matches && rule.scope.covers(groups)
        })
    }

    /// Every group that a rule names.
    pub fn groups(&self) -> impl Iterator<Item = &String> {
        self.rules
            .iter()
            .flat_map(|r| r.scope.groups())
            .chain(self.detects.iter().flat_map(|d| d.scope.groups()))
    }
}

/// A rule file's text as TOML of shape `T`; a syntax error names the file.
pub fn parse_rule_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<T, RuleError> {
    toml::from_str(text).map_err(|e| RuleError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// The `*.toml` files of a rule directory with their text, in file-name
/// order; a file over the size limit is an error that names it.
pub fn read_rule_files(dir: &Path) -> Result<Vec<(PathBuf, String)>, RuleError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RuleError::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            if std::fs::metadata(&path).map_err(io(&path))?.len() > MAX_RULE_FILE {
                return Err(RuleError::Syntax {
                    message: format!("file is larger than {MAX_RULE_FILE} bytes"),
                    path,
                });
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            Ok((path, text))
        })
        .collect()
}

fn compile_rule(r: &RawEntry, base: &Path) -> Result<Rule, String> {
    check_name(&r.name)?;
    if r.detectors.is_some() || r.tables.is_some() {
        return Err("`detectors` and `tables` belong in a [[detect]] table".into());
    }
    let selector = match (&r.columns, &r.column_pattern, &r.types) {
        (Some(cols), None, None) => {
            if cols.is_empty() {
                return Err("`columns` is empty".into());
            }
            Selector::Columns(
                cols.iter()
                    .map(|c| parse_column(c))
                    .collect::<Result<_, _>>()?,
            )
        }
        (None, Some(pattern), None) => Selector::Pattern(compile_regex(pattern)?),
        (None, None, Some(types)) => {
            if types.is_empty() {
                return Err("`types` is empty".into());
            }
            Selector::Types(
                types
                    .iter()
                    .map(|t| type_oid(t))
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => return Err("give exactly one of `columns`, `column_pattern` or `types`".into()),
    };
    Ok(Rule {
        name: r.name.clone(),
        selector,
        function: Arc::new(compile_function(r, base)?),
        scope: compile_scope(r)?,
        allow_predicates: r.allow_predicates.unwrap_or(false),
        derived: r.derived.unwrap_or_default(),
    })
}

fn compile_detect(d: &RawEntry, base: &Path) -> Result<DetectRule, String> {
    check_name(&d.name)?;
    if d.column_pattern.is_some() || d.types.is_some() {
        return Err("`column_pattern` and `types` belong in a [[rule]] table".into());
    }
    if d.allow_predicates.is_some() || d.derived.is_some() {
        return Err("`allow_predicates` and `derived` belong in a [[rule]] table".into());
    }
    let detectors = d.detectors.clone().unwrap_or_default();
    if detectors.is_empty() {
        return Err("`detectors` is missing or empty".into());
    }
    let scope_where = match (&d.tables, &d.columns) {
        (None, None) => DetectWhere::Everywhere,
        (Some(tables), None) => DetectWhere::Tables(
            tables
                .iter()
                .map(|t| parse_table(t))
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(cols)) => DetectWhere::Columns(
            cols.iter()
                .map(|c| parse_column(c))
                .collect::<Result<_, _>>()?,
        ),
        (Some(_), Some(_)) => return Err("give `tables` or `columns`, not both".into()),
    };
    Ok(DetectRule {
        name: d.name.clone(),
        set: Arc::new(DetectorSet::new(&detectors)),
        detectors,
        scope_where,
        function: Arc::new(compile_function(d, base)?),
        scope: compile_scope(d)?,
    })
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err("a rule name is 1 to 100 printable characters".into());
    }
    Ok(())
}

fn compile_scope(who: &RawEntry) -> Result<Scope, String> {
    match (&who.except_groups, &who.only_groups) {
        (None, None) => Ok(Scope::Everyone),
        (Some(g), None) => Ok(Scope::Except(g.clone())),
        (None, Some(g)) if g.is_empty() => Err("`only_groups` is empty".into()),
        (None, Some(g)) => Ok(Scope::Only(g.clone())),
        (Some(_), Some(_)) => Err("give `except_groups` or `only_groups`, not both".into()),
    }
}

fn compile_function(f: &RawEntry, base: &Path) -> Result<MaskFn, String> {
    // Parameters a function does not take are an error, so that a typo
    // never silently changes what is masked.
    let given: [(&str, bool); 11] = [
        ("first", f.first.is_some()),
        ("last", f.last.is_some()),
        ("mask_char", f.mask_char.is_some()),
        ("value", f.value.is_some()),
        ("pattern", f.pattern.is_some()),
        ("replacement", f.replacement.is_some()),
        ("part", f.part.is_some()),
        ("digits", f.digits.is_some()),
        ("width", f.width.is_some()),
        ("key_env", f.key_env.is_some()),
        ("key_file", f.key_file.is_some()),
    ];
    let takes: &[&str] = match f.function.as_str() {
        "redact" | "null" | "email" => &[],
        "partial" => &["first", "last", "mask_char"],
        "hash" => &["key_env", "key_file"],
        "fixed" => &["value"],
        "replace" => &["pattern", "replacement"],
        "truncate" => &["part"],
        "round" => &["digits"],
        "bucket" => &["width"],
        other => {
            return Err(format!(
                "unknown function \"{other}\" (one of redact, null, partial, email, hash, \
                 fixed, replace, truncate, round, bucket)"
            ))
        }
    };
    if let Some((extra, _)) = given.iter().find(|(k, set)| *set && !takes.contains(k)) {
        return Err(format!("function \"{}\" takes no `{extra}`", f.function));
    }
    let missing = |key: &str| format!("function \"{}\" needs `{key}`", f.function);
    Ok(match f.function.as_str() {
        "redact" => MaskFn::Redact,
        "null" => MaskFn::Null,
        "email" => MaskFn::Email,
        "partial" => MaskFn::Partial {
            first: f.first.unwrap_or(0),
            last: f.last.unwrap_or(0),
            mask: f.mask_char.unwrap_or('*'),
        },
        "hash" => MaskFn::Hash {
            key: HashKey::new(&hash_key(f, base)?),
        },
        "fixed" => MaskFn::Fixed(f.value.clone().ok_or_else(|| missing("value"))?),
        "replace" => MaskFn::Replace {
            pattern: compile_regex(f.pattern.as_deref().ok_or_else(|| missing("pattern"))?)?,
            replacement: f
                .replacement
                .clone()
                .ok_or_else(|| missing("replacement"))?,
        },
        "truncate" => MaskFn::Truncate(f.part.ok_or_else(|| missing("part"))?),
        "round" => MaskFn::Round {
            digits: f.digits.unwrap_or(0),
        },
        _ => {
            let width = f.width.ok_or_else(|| missing("width"))?;
            if !(width.is_finite() && width > 0.0) {
                return Err("`width` must be a positive number".into());
            }
            MaskFn::Bucket { width }
        }
    })
}

/// The HMAC key of a `hash` rule: from the environment or a file, at least
/// 16 bytes, never inline.
fn hash_key(f: &RawEntry, base: &Path) -> Result<Vec<u8>, String> {
    let key = match (&f.key_env, &f.key_file) {
        (Some(var), None) => std::env::var(var)
            .map_err(|_| format!("environment variable {var} (key_env) is not set"))?
            .into_bytes(),
        (None, Some(file)) => {
            let path = base.join(file);
            let mut bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read key_file {}: {e}", path.display()))?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            bytes
        }
        _ => return Err("function \"hash\" needs exactly one of `key_env` or `key_file`".into()),
    };
    if key.len() < 16 {
        return Err("the hash key must be at least 16 bytes".into());
    }
    Ok(key)
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .nest_limit(64)
        .build()
        .map_err(|e| format!("bad pattern: {e}"))
}

/// Folds one identifier as PostgreSQL does: unquoted names are lower-cased,
/// quoted ones are kept (with `""` for a quote).
fn fold_ident(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        if inner.is_empty() {
            return Err("empty quoted name".into());
        }
        return Ok(inner.replace("\"\"", "\""));
    }
    if s.is_empty() || s.contains('"') {
        return Err(format!("bad name {s:?}"));
    }
    Ok(s.to_lowercase())
}

/// Splits a dotted name into identifiers, respecting quotes.
fn split_dotted(s: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            '.' if !quoted => parts.push(fold_ident(&std::mem::take(&mut cur))?),
            _ => cur.push(ch),
        }
    }
    if quoted {
        return Err(format!("unbalanced quote in {s:?}"));
    }
    parts.push(fold_ident(&cur)?);
    Ok(parts)
}

/// Parses `schema.table.column` or `table.column` (schema `public`).
pub fn parse_column(s: &str) -> Result<ColumnName, String> {
    let mut parts = split_dotted(s)?;
    match parts.len() {
        2 => parts.insert(0, "public".into()),
        3 => {}
        _ => return Err(format!("column {s:?} is not [schema.]table.column")),
    }
    let [schema, table, column]: [String; 3] = parts
        .try_into()
        .map_err(|_| format!("column {s:?} is not [schema.]table.column"))?;
    Ok(ColumnName {
        schema,
        table,
        column,
    })
}

/// Parses `schema.table` or `table` (schema `public`).
pub fn parse_table(s: &str) -> Result<TableName, String> {
    let mut parts = split_dotted(s)?;
    if parts.len() == 1 {
        parts.insert(0, "public".into());
    }
    let [schema, table]: [String; 2] = parts
        .try_into()
        .map_err(|_| format!("table {s:?} is not [schema.]table"))?;
    Ok(TableName { schema, table })
}

/// The OID of a built-in type named as in SQL.
pub fn type_oid(name: &str) -> Result<u32, String> {
    let oid = match name.trim().to_lowercase().as_str() {
        "bool" | "boolean" => oid::BOOL,
        "bytea" => oid::BYTEA,
        "name" => oid::NAME,
        "int8" | "bigint" => oid::INT8,
        "int2" | "smallint" => oid::INT2,
        "int4" | "int" | "integer" => oid::INT4,
        "text" => oid::TEXT,
        "json" => oid::JSON,
        "float4" | "real" => oid::FLOAT4,
        "float8" | "double precision" => oid::FLOAT8,
        "bpchar" | "char" | "character" => oid::BPCHAR,
        "varchar" | "character varying" => oid::VARCHAR,
        "date" => oid::DATE,
        "time" | "time without time zone" => oid::TIME,
        "timestamp" | "timestamp without time zone" => oid::TIMESTAMP,
        "timestamptz" | "timestamp with time zone" => oid::TIMESTAMPTZ,
        "numeric" | "decimal" => oid::NUMERIC,
        "uuid" => oid::UUID,
        "jsonb" => oid::JSONB,
        "inet" => oid::INET,
        other => return Err(format!("unknown type \"{other}\"")),
    };
    Ok(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        set.add_file(Path::new("rules/t.toml"), text)?;
        set.rules.sort_by_key(|r| r.selector.rank());
        Ok(set)
    }

    #[test]
    fn names_fold_like_postgres() {
        let c = parse_column("Customers.EMAIL").unwrap();
        assert_eq!(c.to_string(), "public.customers.email");
        let c = parse_column("crm.\"Mixed.Case\".\"Email\"").unwrap();
        assert_eq!(
            (c.schema.as_str(), c.table.as_str(), c.column.as_str()),
            ("crm", "Mixed.Case", "Email")
        );
        assert!(parse_column("email").is_err());
        assert!(parse_column("a.b.c.d").is_err());
    }

    #[test]
    fn rules_sort_by_precedence_keeping_file_order() {
        let set = load(
            r#"
            [[rule]]
            name = "t"
            types = ["inet"]
            function = "redact"
            [[rule]]
            name = "p"
            column_pattern = "ssn$"
            function = "partial"
            last = 4
            [[rule]]
            name = "c1"
            columns = ["customers.email"]
            function = "email"
            except_groups = ["privacy"]
            [[rule]]
            name = "c2"
            columns = ["customers.email"]
            function = "null"
            "#,
        )
        .unwrap();
        let names: Vec<_> = set.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c1", "c2", "p", "t"]);
        assert!(set.covers_any(&["privacy".into()]));
    }

    #[test]
    fn bad_rules_name_file_rule_and_problem() {
        let cases = [
            ("name = \"x\"\ncolumns = [\"a.b\"]\nfunction = \"blur\"", "unknown function"),
            ("name = \"x\"\nfunction = \"redact\"", "exactly one of"),
            (
                "name = \"x\"\ncolumns = [\"a.b\"]\nfunction = \"redact\"\nlast = 2",
                "takes no `last`",
            ),
            ("name = \"x\"\ncolumn_pattern = \"(\"\nfunction = \"redact\"", "bad pattern"),
            ("name = \"x\"\ntypes = [\"money\"]\nfunction = \"redact\"", "unknown type"),
            (
                "name = \"x\"\ncolumns = [\"a.b\"]\nfunction = \"hash\"\nkey_env = \"PGVEIL_NO_SUCH_VAR\"",
                "is not set",
            ),
            (
                "name = \"x\"\ncolumns = [\"a.b\"]\nfunction = \"redact\"\nonly_groups = [\"a\"]\nexcept_groups = [\"b\"]",
                "not both",
            ),
        ];
        for (body, want) in cases {
            let err = load(&format!("[[rule]]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("rules/t.toml"), "{err}");
            assert!(err.contains("rule \"x\""), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
        let err = load("[[rule]]\nname = \"x\"\ncolums = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rules/t.toml") && err.contains("colums"),
            "{err}"
        );
    }

    #[test]
    fn scopes() {
        let g = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Scope::Everyone.covers(&[]));
        assert!(!Scope::Except(g(&["a"])).covers(&g(&["b", "a"])));
        assert!(Scope::Except(g(&["a"])).covers(&g(&["b"])));
        assert!(Scope::Only(g(&["a"])).covers(&g(&["a"])));
        assert!(!Scope::Only(g(&["a"])).covers(&[]));
    }
}
