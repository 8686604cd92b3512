//! Statement analysis with column lineage.
//!
//! [`analyze`] parses a statement text (PostgreSQL dialect, one or more
//! statements) and says, for each statement, what kind it is, which
//! relations it reads and writes, which functions it calls, and for every
//! result column which base columns its value is computed from. The policy
//! engine decides on that; the masking plans use the output lineage to pick
//! the rule for each result column.
//!
//! The module is pure: no IO, no logging, no global state. Catalog knowledge
//! (search_path resolution, column lists) comes from the caller through
//! [`Schema`]. Views are not expanded: a view column is reported as a column
//! of the view, and the caller maps it onto base columns.
//!
//! Lineage is conservative: wherever a value's origin cannot be established
//! the output carries [`Source::Unknown`], never an empty source list. An
//! expression's sources are the union of the sources of everything it is
//! computed from, conditions of `CASE` included.
//!
//! Limits, in plain words:
//! - Only what sqlparser 0.64 parses is analyzed; anything else is an error
//!   and the caller refuses it. Known gaps there: `VACUUM ANALYZE t`,
//!   `ALTER SYSTEM`, `CHECKPOINT`, `ROWS FROM (...)`, `TABLE name`. `DO`
//!   blocks are recognised here without the parser and reported as opaque.
//! - Statements sqlparser parses but this module does not map one by one
//!   come back as kind "OTHER", class Admin, opaque.
//! - Function bodies (`CREATE FUNCTION`/`PROCEDURE`, `DO`, `CALL`) are not
//!   looked into: such statements are marked `opaque`.
//! - Table functions other than a short list of well-known set-returning
//!   built-ins (`generate_series`, `unnest`, the json/jsonb set functions,
//!   ...) give columns of unknown origin.
//! - Data-modifying CTEs are analyzed (their targets are writes), but the
//!   statement keeps the kind of its outer query.
//! - `EXECUTE` and `FETCH` return rows whose shape comes from an earlier
//!   `PREPARE` / `DECLARE`: their outputs are not known here.
//! - Name resolution follows PostgreSQL's rules closely but not exactly:
//!   where the column lists are unknown, a name is attributed to every
//!   relation in scope that could hold it.
//! - Very deep or very large statements are rejected ([`AnalyzeError`])
//!   rather than risking the stack or unbounded work: about 60 levels of
//!   nested subqueries or 100 nested parentheses, 4000 operators per
//!   statement. Everything fits a 2 MiB thread stack in debug builds.
//! - Output names are best effort (PostgreSQL's `?column?` rules are only
//!   approximated); positions and sources are what the masking relies on.
//! - Choices to know: CREATE TABLE AS is Ddl (its `moved` carries the
//!   data flow), SELECT INTO is Write; TRUNCATE sets `unbounded_write`;
//!   EXPLAIN without ANALYZE reports no writes or moves; a column no
//!   relation is known to have is attributed to the innermost relations
//!   (the caller's catalog may be behind the server).

use std::collections::HashSet;
use std::hash::Hash;

use sqlparser::ast::{
    AccessExpr, Assignment, AssignmentTarget, CopySource, CopyTarget, Cte, Delete, Distinct, Expr,
    FromTable, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments,
    GroupByExpr, Ident, InTarget, Insert, JoinConstraint, JoinOperator, LimitClause, Merge,
    MergeAction, MergeInsertKind, MergeUpdateKind, NamedWindowExpr, ObjectName, ObjectType,
    OnConflictAction, OnInsert, OrderBy, OrderByKind, OutputClause, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, Subscript, TableAlias, TableFactor,
    TableObject, TableWithJoins, Update, UpdateTableFromKind, Value, WindowSpec, WindowType,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// How deep sqlparser may recurse. Deliberately above its default (50) so
/// that generated SQL with nested subqueries parses, and low enough that the
/// parser stays well inside a 2 MiB thread stack in debug builds.
const PARSER_RECURSION_LIMIT: usize = 200;

/// How deep this analyzer's own walk may go (expressions and queries
/// together). Chains of binary operators are walked iteratively and do not
/// count against it.
const MAX_DEPTH: usize = 400;

/// Operator tokens allowed in one statement. Left-leaning operator chains
/// are built by the parser without recursion, but the resulting tree is
/// dropped recursively; bounding the chain length keeps that drop safe.
const MAX_OPERATORS: usize = 4000;

/// Units of analysis work allowed per statement text (roughly one per
/// expression or query visited), so that nested recursive CTEs cannot make
/// the fixpoint iteration explode.
const MAX_STEPS: usize = 1_000_000;

/// Iterations of the recursive-CTE fixpoint before giving up (and marking
/// the CTE's columns Unknown).
const MAX_FIXPOINT_ITERATIONS: usize = 16;

/// What kind of statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Returns data without changing it: SELECT/VALUES/TABLE, SHOW, EXPLAIN
    /// (without ANALYZE), FETCH, DECLARE, EXECUTE.
    Read,
    /// Changes rows: INSERT, UPDATE, DELETE, MERGE, TRUNCATE, SELECT INTO,
    /// REFRESH MATERIALIZED VIEW, LOCK, CALL; also a query with a
    /// data-modifying CTE.
    Write,
    /// Changes the schema: CREATE/ALTER/DROP of tables, views, functions,
    /// indexes, types, ...; COMMENT; CREATE TABLE AS.
    Ddl,
    /// COPY, either way.
    Copy,
    /// Changes session state: SET, RESET, DISCARD, PREPARE, DEALLOCATE,
    /// LISTEN/NOTIFY/UNLISTEN, CLOSE.
    Session,
    /// BEGIN/START TRANSACTION, COMMIT, ROLLBACK, SAVEPOINT, RELEASE.
    Transaction,
    /// Privileges, roles, maintenance and anything not otherwise mapped:
    /// GRANT/REVOKE, CREATE/ALTER/DROP ROLE/USER, VACUUM, ANALYZE, KILL,
    /// CREATE DATABASE/EXTENSION, foreign servers, DO.
    Admin,
}

impl Class {
    /// The snake_case name, as used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Copy => "copy",
            Class::Session => "session",
            Class::Transaction => "transaction",
            Class::Admin => "admin",
        }
    }
}

/// A relation name, lower-cased where unquoted (PostgreSQL folding), schema
/// resolved: unqualified names get `None` unless [`Schema::resolve`]
/// resolves them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelName {
    /// The schema, if written or resolved.
    pub schema: Option<String>,
    /// The relation's own name.
    pub name: String,
}

impl RelName {
    /// A relation name from already folded parts.
    pub fn new(schema: Option<&str>, name: &str) -> Self {
        RelName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnRef {
    /// The relation holding the column.
    pub relation: RelName,
    /// The column name, folded.
    pub column: String,
}

/// Where an output column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A column of a base relation (or of a view: the caller resolves views).
    Column(ColumnRef),
    /// Every column of a relation: whole-row references (`SELECT c FROM
    /// customers c`, `row_to_json(c)`, `to_jsonb(c.*)`, `c::text`), and
    /// `t.*`/`*` when the relation's columns are unknown.
    WholeRow(RelName),
    /// Could not be traced.
    Unknown,
}

/// One output column of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The column name the server will report (best effort for expressions
    /// without an alias; `*` for an unexpanded star).
    pub name: String,
    /// Deduplicated sources; empty for a constant or a source-free expression
    /// such as `now()` or `count(*)`.
    pub sources: Vec<Source>,
}

/// What one statement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// The statement's class.
    pub class: Class,
    /// A short upper-case label: "SELECT", "INSERT", "UPDATE", "DELETE",
    /// "MERGE", "CREATE TABLE AS", "SELECT INTO", "CREATE VIEW", "COPY",
    /// "DO", "PREPARE", "EXECUTE", "DECLARE", "FETCH", "SET", "BEGIN", ...;
    /// "OTHER" for statements not mapped one by one.
    pub kind: &'static str,
    /// Relations read (FROM, JOIN, subqueries, CTE bodies resolved to base
    /// relations, not the CTE names themselves).
    pub reads: Vec<RelName>,
    /// Relations written: DML targets, CREATE TABLE AS / SELECT INTO /
    /// CREATE VIEW targets, COPY FROM target, TRUNCATE, DDL objects.
    pub writes: Vec<RelName>,
    /// Functions called, folded, with schema if written
    /// (`pg_catalog.pg_read_file`), table functions and subqueries included.
    pub functions: Vec<String>,
    /// The result columns, in order, for statements that return rows.
    pub outputs: Vec<Output>,
    /// Whether `outputs` is exactly the result shape (false for FETCH,
    /// EXECUTE, SHOW, EXPLAIN, and for an unexpanded `*`).
    pub outputs_known: bool,
    /// Sources that filtering, joining, grouping or ordering reads, anywhere
    /// in the statement.
    pub predicates: Vec<Source>,
    /// Sources whose values this statement moves into another place
    /// (CREATE TABLE AS, SELECT INTO, INSERT, UPDATE SET, MERGE, view
    /// definitions, COPY to a file or program, EXECUTE parameters).
    pub moved: Vec<Source>,
    /// UPDATE or DELETE without WHERE; also TRUNCATE.
    pub unbounded_write: bool,
    /// The statement is opaque to analysis (DO, CALL, CREATE
    /// FUNCTION/PROCEDURE bodies, unmapped statements): treat it as
    /// reading and moving anything.
    pub opaque: bool,
    /// For COPY ... TO: `Some(true)` for STDOUT, `Some(false)` for a file or
    /// program. None otherwise.
    pub copy_to_stdout: Option<bool>,
    /// For COPY ... FROM: `Some(true)` for STDIN, `Some(false)` for a file or
    /// program (the server reads a file or runs a command). None otherwise.
    pub copy_from_stdin: Option<bool>,
    /// The prepared statement or cursor this statement defines or uses
    /// (PREPARE, EXECUTE, DEALLOCATE, DECLARE, FETCH, CLOSE), folded.
    pub name: Option<String>,
    /// For PREPARE and EXPLAIN: the class of the wrapped statement, whose
    /// reads, writes, functions, outputs and moves are reported here too.
    pub inner_class: Option<Class>,
}

/// The catalog knowledge the analyzer needs, supplied by the caller.
pub trait Schema {
    /// Schema-qualifies an unqualified relation as the server would with the
    /// default search_path (`public`, then `pg_catalog`); None if unknown.
    fn resolve(&self, name: &RelName) -> Option<RelName>;
    /// The relation's column names in order, for `*` expansion; None if
    /// unknown.
    fn columns(&self, name: &RelName) -> Option<Vec<String>>;
}

/// Why a statement could not be analyzed. Carries no SQL text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    /// The text does not parse; the payload is a position ("line 1, column
    /// 8") or a generic reason, never statement text.
    #[error("statement could not be parsed: {0}")]
    Parse(String),
    /// Nesting beyond the parser's or the analyzer's depth limit.
    #[error("statement too deeply nested")]
    TooDeep,
    /// Too many operators in one statement, or too much analysis work.
    #[error("statement too complex to analyze")]
    TooComplex,
}

/// Parses `sql` (one or more statements, PostgreSQL dialect) and analyzes
/// each. An empty text gives an empty list.
pub fn analyze(sql: &str, schema: &dyn Schema) -> Result<Vec<StatementInfo>, AnalyzeError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| {
            AnalyzeError::Parse(format!(
                "line {}, column {}",
                e.location.line, e.location.column
            ))
        })?;
    let chunks = split_statements(&tokens);
    for chunk in &chunks {
        check_operators(chunk)?;
    }
    let mut out = Vec::new();
    if !chunks.iter().any(|c| starts_with_do(c)) {
        // The parser splits statements itself; it also copes with
        // semicolons inside bodies such as BEGIN ATOMIC ... END.
        for st in parse_tokens(&dialect, tokens)? {
            out.push(Analyzer::new(schema).top(&st)?);
        }
        return Ok(out);
    }
    // sqlparser cannot parse DO: analyze statement by statement and answer
    // DO blocks without it.
    for chunk in chunks {
        if chunk.iter().all(|t| is_trivia(&t.token)) {
            continue;
        }
        if starts_with_do(&chunk) {
            out.push(do_info());
            continue;
        }
        for st in parse_tokens(&dialect, chunk)? {
            out.push(Analyzer::new(schema).top(&st)?);
        }
    }
    Ok(out)
}

fn parse_tokens(
    dialect: &PostgreSqlDialect,
    tokens: Vec<TokenWithSpan>,
) -> Result<Vec<Statement>, AnalyzeError> {
    Parser::new(dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(parse_error)
}

/// Keeps only the position from a parser message: the message quotes the
/// offending token, which may be a literal from the statement.
fn parse_error(e: ParserError) -> AnalyzeError {
    let msg = match e {
        ParserError::RecursionLimitExceeded => return AnalyzeError::TooDeep,
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
    };
    let number_after = |key: &str| -> Option<u64> {
        let at = msg.rfind(key)? + key.len();
        let digits: String = msg[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    };
    match (number_after("Line: "), number_after("Column: ")) {
        (Some(l), Some(c)) => AnalyzeError::Parse(format!("line {l}, column {c}")),
        _ => AnalyzeError::Parse("syntax error".to_string()),
    }
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_) | Token::EOF)
}

/// Splits a token stream at top-level semicolons (the tokenizer has already
/// taken literals, comments and dollar quotes apart).
fn split_statements(tokens: &[TokenWithSpan]) -> Vec<Vec<TokenWithSpan>> {
    let mut chunks = vec![Vec::new()];
    for t in tokens {
        if t.token == Token::SemiColon {
            chunks.push(Vec::new());
        } else if let Some(last) = chunks.last_mut() {
            last.push(t.clone());
        }
    }
    chunks
}

fn starts_with_do(chunk: &[TokenWithSpan]) -> bool {
    match chunk.iter().find(|t| !is_trivia(&t.token)) {
        Some(TokenWithSpan {
            token: Token::Word(w),
            ..
        }) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case("do"),
        _ => false,
    }
}

fn check_operators(chunk: &[TokenWithSpan]) -> Result<(), AnalyzeError> {
    let count = chunk
        .iter()
        .filter(|t| match &t.token {
            Token::Word(w) => matches!(
                w.keyword,
                Keyword::AND
                    | Keyword::OR
                    | Keyword::IS
                    | Keyword::LIKE
                    | Keyword::ILIKE
                    | Keyword::SIMILAR
                    | Keyword::IN
                    | Keyword::BETWEEN
                    | Keyword::COLLATE
                    | Keyword::AT
                    | Keyword::OVERLAPS
            ),
            Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::Comma
            | Token::Whitespace(_)
            | Token::LParen
            | Token::RParen
            | Token::LBracket
            | Token::RBracket
            | Token::Period
            | Token::Placeholder(_)
            | Token::EOF => false,
            _ => true,
        })
        .count();
    if count > MAX_OPERATORS {
        Err(AnalyzeError::TooComplex)
    } else {
        Ok(())
    }
}

fn do_info() -> StatementInfo {
    let mut info = empty_info(Class::Admin, "DO");
    info.opaque = true;
    info
}

fn empty_info(class: Class, kind: &'static str) -> StatementInfo {
    StatementInfo {
        class,
        kind,
        reads: Vec::new(),
        writes: Vec::new(),
        functions: Vec::new(),
        outputs: Vec::new(),
        outputs_known: true,
        predicates: Vec::new(),
        moved: Vec::new(),
        unbounded_write: false,
        opaque: false,
        copy_to_stdout: None,
        copy_from_stdin: None,
        name: None,
        inner_class: None,
    }
}

// ---------------------------------------------------------------------------
// Small helpers

/// An insertion-ordered set: source lists stay in the order the statement
/// mentions them, and deduplication stays linear on large statements.
#[derive(Debug, Clone)]
struct Uniq<T: Eq + Hash + Clone> {
    items: Vec<T>,
    seen: HashSet<T>,
}

impl<T: Eq + Hash + Clone> Default for Uniq<T> {
    fn default() -> Self {
        Uniq {
            items: Vec::new(),
            seen: HashSet::new(),
        }
    }
}

impl<T: Eq + Hash + Clone> Uniq<T> {
    fn push(&mut self, t: T) {
        if self.seen.insert(t.clone()) {
            self.items.push(t);
        }
    }
    fn extend<I: IntoIterator<Item = T>>(&mut self, it: I) {
        for t in it {
            self.push(t);
        }
    }
    fn into_vec(self) -> Vec<T> {
        self.items
    }
}

fn union(a: &[Source], b: &[Source]) -> Vec<Source> {
    let mut u = Uniq::default();
    u.extend(a.iter().cloned());
    u.extend(b.iter().cloned());
    u.into_vec()
}

/// PostgreSQL identifier folding: unquoted names are lower-cased (ASCII
/// only, as the server does for multibyte encodings), quoted names kept.
fn fold(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| p.as_ident().map(fold))
        .collect::<Option<Vec<_>>>()
}

fn rel_of(name: &ObjectName) -> Option<RelName> {
    let parts = name_parts(name)?;
    match parts.as_slice() {
        [n] => Some(RelName::new(None, n)),
        [.., s, n] => Some(RelName::new(Some(s), n)),
        [] => None,
    }
}

fn func_name(name: &ObjectName) -> String {
    match name_parts(name) {
        Some(parts) => parts.join("."),
        None => "?".to_string(),
    }
}

/// Set-returning built-ins whose rows are computed only from their
/// arguments; any other table function gives columns of unknown origin.
fn is_known_table_function(name: &str) -> bool {
    let base = name.strip_prefix("pg_catalog.").unwrap_or(name);
    matches!(
        base,
        "generate_series"
            | "generate_subscripts"
            | "unnest"
            | "json_array_elements"
            | "json_array_elements_text"
            | "jsonb_array_elements"
            | "jsonb_array_elements_text"
            | "json_each"
            | "json_each_text"
            | "jsonb_each"
            | "jsonb_each_text"
            | "json_object_keys"
            | "jsonb_object_keys"
            | "json_to_record"
            | "json_to_recordset"
            | "jsonb_to_record"
            | "jsonb_to_recordset"
            | "json_populate_record"
            | "json_populate_recordset"
            | "jsonb_populate_record"
            | "jsonb_populate_recordset"
            | "jsonb_path_query"
            | "regexp_matches"
            | "regexp_split_to_table"
            | "string_to_table"
    )
}

/// SQL value functions written without parentheses, which the parser may
/// hand over as plain identifiers.
fn is_niladic(name: &str) -> bool {
    matches!(
        name,
        "current_user"
            | "session_user"
            | "current_role"
            | "user"
            | "current_date"
            | "current_time"
            | "current_timestamp"
            | "localtime"
            | "localtimestamp"
            | "current_catalog"
            | "current_schema"
    )
}

/// The column name PostgreSQL reports for an unaliased select item (close
/// enough: the masking plans go by position, this is for people).
fn expr_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => fold(id),
        Expr::CompoundIdentifier(ids) => ids.last().map(fold).unwrap_or_default(),
        Expr::Function(f) => name_parts(&f.name)
            .and_then(|p| p.last().cloned())
            .unwrap_or_else(|| "?column?".to_string()),
        Expr::Cast { expr, .. } => expr_name(expr),
        Expr::Nested(inner) => expr_name(inner),
        Expr::Case { .. } => "case".to_string(),
        Expr::Exists { .. } => "exists".to_string(),
        Expr::Array(_) => "array".to_string(),
        _ => "?column?".to_string(),
    }
}

// ---------------------------------------------------------------------------
// Scopes

#[derive(Debug, Clone)]
enum ItemKind {
    /// A table or view from the catalog.
    Base(RelName),
    /// A subquery, CTE or table function with a computed row shape.
    Derived,
}

/// One FROM item visible to name resolution.
#[derive(Debug, Clone)]
struct Item {
    /// The name it is referenced by (alias, or the relation's name).
    name: String,
    /// The schema a qualified reference may name (unaliased base relation).
    schema: Option<String>,
    kind: ItemKind,
    /// The columns with their sources; None when the shape is unknown.
    columns: Option<Vec<Output>>,
    /// The column list may be incomplete (it holds an unexpanded `*`).
    open: bool,
    /// Sources of any column not in `columns`, and of the whole row when the
    /// shape is unknown.
    fallback: Vec<Source>,
}

enum Has {
    Definitely,
    Maybe,
    No,
}

impl Item {
    fn has(&self, col: &str) -> Has {
        match &self.columns {
            Some(cols) if cols.iter().any(|c| c.name == col) => Has::Definitely,
            Some(_) if !self.open => Has::No,
            _ => Has::Maybe,
        }
    }

    fn column(&self, col: &str) -> Vec<Source> {
        if let Some(cols) = &self.columns {
            let mut u = Uniq::default();
            for c in cols.iter().filter(|c| c.name == col) {
                u.extend(c.sources.iter().cloned());
            }
            if !u.items.is_empty() || cols.iter().any(|c| c.name == col) {
                return u.into_vec();
            }
        }
        match &self.kind {
            // System columns (ctid, xmin) and unknown catalogs land here.
            ItemKind::Base(rel) => vec![Source::Column(ColumnRef {
                relation: rel.clone(),
                column: col.to_string(),
            })],
            ItemKind::Derived => {
                if self.fallback.is_empty() {
                    vec![Source::Unknown]
                } else {
                    self.fallback.clone()
                }
            }
        }
    }

    fn whole_row(&self) -> Vec<Source> {
        match &self.kind {
            ItemKind::Base(rel) => vec![Source::WholeRow(rel.clone())],
            ItemKind::Derived => {
                let mut u = Uniq::default();
                if let Some(cols) = &self.columns {
                    for c in cols {
                        u.extend(c.sources.iter().cloned());
                    }
                }
                if self.open || self.columns.is_none() {
                    u.extend(self.fallback.iter().cloned());
                }
                u.into_vec()
            }
        }
    }

    /// The item's columns as `*` / `t.*` yields them, and whether that is
    /// the exact shape.
    fn star(&self) -> (Vec<Output>, bool) {
        match (&self.columns, &self.kind) {
            (Some(cols), _) => (cols.clone(), !self.open),
            (None, ItemKind::Base(rel)) => (
                vec![Output {
                    name: "*".to_string(),
                    sources: vec![Source::WholeRow(rel.clone())],
                }],
                false,
            ),
            (None, ItemKind::Derived) => (
                vec![Output {
                    name: self.name.clone(),
                    sources: if self.fallback.is_empty() {
                        vec![Source::Unknown]
                    } else {
                        self.fallback.clone()
                    },
                }],
                false,
            ),
        }
    }

    /// Applies a `AS alias(a, b, ...)` column list: renames positionally.
    fn rename(&mut self, alias: &TableAlias) {
        self.name = fold(&alias.name);
        self.schema = None;
        if alias.columns.is_empty() {
            return;
        }
        let names: Vec<String> = alias.columns.iter().map(|c| fold(&c.name)).collect();
        match &mut self.columns {
            Some(cols) => {
                for (c, n) in cols.iter_mut().zip(names.iter()) {
                    c.name = n.clone();
                }
            }
            None => {
                // Names known, origins not: every named column carries the
                // item's fallback (whole row or Unknown).
                let sources = match &self.kind {
                    ItemKind::Base(rel) => vec![Source::WholeRow(rel.clone())],
                    ItemKind::Derived if self.fallback.is_empty() => vec![Source::Unknown],
                    ItemKind::Derived => self.fallback.clone(),
                };
                self.columns = Some(
                    names
                        .into_iter()
                        .map(|name| Output {
                            name,
                            sources: sources.clone(),
                        })
                        .collect(),
                );
                // A base relation may have more columns than the alias names.
                self.open = matches!(self.kind, ItemKind::Base(_));
            }
        }
    }
}

/// The FROM items of one query level, and what `*` expands to there.
#[derive(Debug, Default)]
struct Level {
    items: Vec<Item>,
    star: Vec<Output>,
    star_known: bool,
}

/// The rows a query produces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rel {
    outputs: Vec<Output>,
    known: bool,
}

impl Rel {
    fn none() -> Self {
        Rel {
            outputs: Vec::new(),
            known: true,
        }
    }
    fn all_sources(&self) -> Vec<Source> {
        let mut u = Uniq::default();
        for o in &self.outputs {
            u.extend(o.sources.iter().cloned());
        }
        u.into_vec()
    }
    fn renamed(mut self, names: &[String]) -> Self {
        for (o, n) in self.outputs.iter_mut().zip(names) {
            o.name = n.clone();
        }
        self
    }
}

/// Column i of the result is the union of column i of both sides; if the
/// shapes do not line up every column gets everything (fail closed).
fn union_rel(a: &Rel, b: &Rel) -> Rel {
    if a.outputs.len() == b.outputs.len() {
        Rel {
            outputs: a
                .outputs
                .iter()
                .zip(&b.outputs)
                .map(|(x, y)| Output {
                    name: x.name.clone(),
                    sources: union(&x.sources, &y.sources),
                })
                .collect(),
            known: a.known && b.known,
        }
    } else {
        let (long, short) = if a.outputs.len() >= b.outputs.len() {
            (a, b)
        } else {
            (b, a)
        };
        let extra = short.all_sources();
        Rel {
            outputs: long
                .outputs
                .iter()
                .map(|o| Output {
                    name: o.name.clone(),
                    sources: union(&o.sources, &extra),
                })
                .collect(),
            known: false,
        }
    }
}

/// What a statement-level analysis returns besides the accumulators.
struct Core {
    class: Class,
    kind: &'static str,
    rel: Rel,
    outputs_known: bool,
    opaque: bool,
    copy_to_stdout: Option<bool>,
    copy_from_stdin: Option<bool>,
    name: Option<String>,
    inner_class: Option<Class>,
}

impl Core {
    fn new(class: Class, kind: &'static str) -> Self {
        Core {
            class,
            kind,
            rel: Rel::none(),
            outputs_known: true,
            opaque: false,
            copy_to_stdout: None,
            copy_from_stdin: None,
            name: None,
            inner_class: None,
        }
    }
    fn opaque(class: Class, kind: &'static str) -> Self {
        let mut c = Core::new(class, kind);
        c.opaque = true;
        c
    }
    fn unknown_rows(class: Class, kind: &'static str) -> Self {
        let mut c = Core::new(class, kind);
        c.outputs_known = false;
        c
    }
}

type Res<T> = Result<T, AnalyzeError>;

struct Analyzer<'s> {
    schema: &'s dyn Schema,
    levels: Vec<Level>,
    ctes: Vec<(String, Rel)>,
    reads: Uniq<RelName>,
    writes: Uniq<RelName>,
    functions: Uniq<String>,
    predicates: Uniq<Source>,
    moved: Uniq<Source>,
    unbounded_write: bool,
    select_into: bool,
    depth: usize,
    steps: usize,
}

impl<'s> Analyzer<'s> {
    fn new(schema: &'s dyn Schema) -> Self {
        Analyzer {
            schema,
            levels: Vec::new(),
            ctes: Vec::new(),
            reads: Uniq::default(),
            writes: Uniq::default(),
            functions: Uniq::default(),
            predicates: Uniq::default(),
            moved: Uniq::default(),
            unbounded_write: false,
            select_into: false,
            depth: 0,
            steps: 0,
        }
    }

    fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        self.steps += 1;
        if self.depth > MAX_DEPTH {
            return Err(AnalyzeError::TooDeep);
        }
        if self.steps > MAX_STEPS {
            return Err(AnalyzeError::TooComplex);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn top(mut self, st: &Statement) -> Res<StatementInfo> {
        let core = self.statement(st)?;
        Ok(StatementInfo {
            class: core.class,
            kind: core.kind,
            reads: self.reads.into_vec(),
            writes: self.writes.into_vec(),
            functions: self.functions.into_vec(),
            outputs: core.rel.outputs,
            outputs_known: core.outputs_known && core.rel.known,
            predicates: self.predicates.into_vec(),
            moved: self.moved.into_vec(),
            unbounded_write: self.unbounded_write,
            opaque: core.opaque,
            copy_to_stdout: core.copy_to_stdout,
            copy_from_stdin: core.copy_from_stdin,
            name: core.name,
            inner_class: core.inner_class,
        })
    }

    fn resolve(&self, rel: RelName) -> RelName {
        if rel.schema.is_some() {
            return rel;
        }
        self.schema.resolve(&rel).unwrap_or(rel)
    }

    fn write_target(&mut self, name: &ObjectName) -> Option<RelName> {
        let rel = self.resolve(rel_of(name)?);
        self.writes.push(rel.clone());
        Some(rel)
    }

    // -----------------------------------------------------------------------
    // Statements

    fn statement(&mut self, st: &Statement) -> Res<Core> {
        self.enter()?;
        let core = self.statement_inner(st)?;
        self.leave();
        Ok(core)
    }

    fn statement_inner(&mut self, st: &Statement) -> Res<Core> {
        use Class::*;
        Ok(match st {
            Statement::Query(q) => {
                let rel = self.query(q)?;
                let mut c = if self.select_into {
                    self.moved.extend(rel.all_sources());
                    let mut c = Core::new(Write, "SELECT INTO");
                    // SELECT INTO returns a command tag, not rows.
                    c.rel = Rel::none();
                    c
                } else if !self.writes.items.is_empty() {
                    Core::new(Write, "SELECT")
                } else {
                    Core::new(Read, "SELECT")
                };
                if !self.select_into {
                    c.rel = rel;
                }
                c
            }
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => {
                let kind = match st {
                    Statement::Insert(_) => "INSERT",
                    Statement::Update(_) => "UPDATE",
                    Statement::Delete(_) => "DELETE",
                    _ => "MERGE",
                };
                let mut c = Core::new(Write, kind);
                c.rel = self.dml(st)?;
                c
            }
            Statement::CreateTable(ct) => {
                self.write_target(&ct.name);
                match &ct.query {
                    Some(q) => {
                        let rel = self.query(q)?;
                        self.moved.extend(rel.all_sources());
                        Core::new(Ddl, "CREATE TABLE AS")
                    }
                    None => Core::new(Ddl, "CREATE TABLE"),
                }
            }
            Statement::CreateView(cv) => {
                self.write_target(&cv.name);
                let rel = self.query(&cv.query)?;
                self.moved.extend(rel.all_sources());
                if cv.materialized {
                    Core::new(Ddl, "CREATE MATERIALIZED VIEW")
                } else {
                    Core::new(Ddl, "CREATE VIEW")
                }
            }
            Statement::CreateFunction(cf) => {
                self.write_target(&cf.name);
                Core::opaque(Ddl, "CREATE FUNCTION")
            }
            Statement::CreateProcedure { name, .. } => {
                self.write_target(name);
                Core::opaque(Ddl, "CREATE PROCEDURE")
            }
            Statement::CreateIndex(ci) => {
                self.write_target(&ci.table_name);
                Core::new(Ddl, "CREATE INDEX")
            }
            Statement::CreateTrigger(ct) => {
                self.write_target(&ct.name);
                Core::new(Ddl, "CREATE TRIGGER")
            }
            Statement::AlterTable(at) => {
                self.write_target(&at.name);
                Core::new(Ddl, "ALTER TABLE")
            }
            Statement::AlterView(av) => {
                self.write_target(&av.name);
                Core::new(Ddl, "ALTER VIEW")
            }
            Statement::AlterIndex { name, .. } => {
                self.write_target(name);
                Core::new(Ddl, "ALTER INDEX")
            }
            Statement::Drop {
                object_type, names, ..
            } => match object_type {
                ObjectType::Role | ObjectType::User | ObjectType::Group => {
                    Core::new(Admin, "DROP ROLE")
                }
                ObjectType::Database => Core::new(Admin, "DROP DATABASE"),
                _ => {
                    for n in names {
                        self.write_target(n);
                    }
                    Core::new(Ddl, "DROP")
                }
            },
            Statement::Comment { object_name, .. } => {
                self.write_target(object_name);
                Core::new(Ddl, "COMMENT")
            }
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.write_target(&target.name);
                }
                self.unbounded_write = true;
                Core::new(Write, "TRUNCATE")
            }
            Statement::RefreshMaterializedView(r) => {
                self.write_target(&r.name);
                Core::new(Write, "REFRESH MATERIALIZED VIEW")
            }
            Statement::Lock(l) => {
                for t in &l.tables {
                    self.write_target(&t.name);
                }
                Core::new(Write, "LOCK")
            }
            Statement::Call(f) => {
                self.functions.push(func_name(&f.name));
                Core::opaque(Write, "CALL")
            }
            Statement::Copy {
                source, to, target, ..
            } => self.copy(source, *to, target)?,
            Statement::Prepare {
                name, statement, ..
            } => {
                let inner = self.statement(statement)?;
                let mut c = Core::new(Session, "PREPARE");
                c.outputs_known = inner.outputs_known && inner.rel.known;
                c.rel = inner.rel;
                c.opaque = inner.opaque;
                c.inner_class = Some(inner.class);
                c.name = Some(fold(name));
                c
            }
            Statement::Execute {
                name, parameters, ..
            } => {
                // Parameter values flow into whatever the prepared statement
                // does with them.
                for p in parameters {
                    let s = self.expr(p)?;
                    self.moved.extend(s);
                }
                let mut c = Core::unknown_rows(Read, "EXECUTE");
                c.name = name.as_ref().map(func_name);
                c
            }
            Statement::Deallocate { name, .. } => {
                let mut c = Core::new(Session, "DEALLOCATE");
                c.name = Some(fold(name));
                c
            }
            Statement::Declare { stmts, .. } => {
                let mut c = Core::new(Read, "DECLARE");
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        c.rel = self.query(q)?;
                    }
                    if let Some(n) = d.names.first() {
                        c.name = Some(fold(n));
                    }
                }
                if !self.writes.items.is_empty() {
                    c.class = Write;
                }
                c
            }
            Statement::Fetch { name, .. } => {
                let mut c = Core::unknown_rows(Read, "FETCH");
                c.name = Some(fold(name));
                c
            }
            Statement::Close { cursor } => {
                let mut c = Core::new(Session, "CLOSE");
                if let sqlparser::ast::CloseCursor::Specific { name } = cursor {
                    c.name = Some(fold(name));
                }
                c
            }
            Statement::Explain {
                statement, analyze, ..
            } => {
                let inner = self.statement(statement)?;
                let mut c =
                    Core::unknown_rows(if *analyze { inner.class } else { Read }, "EXPLAIN");
                if !*analyze {
                    // Planned, not run: nothing is written or moved.
                    self.writes = Uniq::default();
                    self.moved = Uniq::default();
                    self.unbounded_write = false;
                }
                c.opaque = inner.opaque;
                c.inner_class = Some(inner.class);
                c
            }
            Statement::ExplainTable { table_name, .. } => {
                if let Some(rel) = rel_of(table_name) {
                    let rel = self.resolve(rel);
                    self.reads.push(rel);
                }
                Core::unknown_rows(Read, "DESCRIBE")
            }
            Statement::Set(s) => {
                use sqlparser::ast::Set as S;
                match s {
                    S::SetRole { .. } => Core::new(Session, "SET ROLE"),
                    S::SetSessionAuthorization(_) => {
                        Core::new(Session, "SET SESSION AUTHORIZATION")
                    }
                    S::SetTransaction { .. } => Core::new(Transaction, "SET TRANSACTION"),
                    _ => Core::new(Session, "SET"),
                }
            }
            Statement::Reset(_) => Core::new(Session, "RESET"),
            Statement::Discard { .. } => Core::new(Session, "DISCARD"),
            Statement::LISTEN { .. } => Core::new(Session, "LISTEN"),
            Statement::UNLISTEN { .. } => Core::new(Session, "UNLISTEN"),
            Statement::NOTIFY { .. } => Core::new(Session, "NOTIFY"),
            Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowCreate { .. } => Core::unknown_rows(Read, "SHOW"),
            Statement::StartTransaction { begin, .. } => Core::new(
                Transaction,
                if *begin { "BEGIN" } else { "START TRANSACTION" },
            ),
            Statement::Commit { .. } => Core::new(Transaction, "COMMIT"),
            Statement::Rollback { savepoint, .. } => Core::new(
                Transaction,
                if savepoint.is_some() {
                    "ROLLBACK TO SAVEPOINT"
                } else {
                    "ROLLBACK"
                },
            ),
            Statement::Savepoint { .. } => Core::new(Transaction, "SAVEPOINT"),
            Statement::ReleaseSavepoint { .. } => Core::new(Transaction, "RELEASE"),
            Statement::Grant(_) | Statement::GrantRole(_) => Core::new(Admin, "GRANT"),
            Statement::Revoke(_) | Statement::RevokeRole(_) => Core::new(Admin, "REVOKE"),
            Statement::Deny(_) => Core::new(Admin, "DENY"),
            Statement::AlterDefaultPrivileges(_) => Core::new(Admin, "ALTER DEFAULT PRIVILEGES"),
            Statement::CreateRole(_) => Core::new(Admin, "CREATE ROLE"),
            Statement::AlterRole { .. } => Core::new(Admin, "ALTER ROLE"),
            Statement::CreateUser(_) => Core::new(Admin, "CREATE USER"),
            Statement::AlterUser(_) => Core::new(Admin, "ALTER USER"),
            Statement::Vacuum(_) => Core::new(Admin, "VACUUM"),
            Statement::Analyze(_) => Core::new(Admin, "ANALYZE"),
            Statement::Kill { .. } => Core::new(Admin, "KILL"),
            Statement::CreateDatabase { .. } => Core::new(Admin, "CREATE DATABASE"),
            Statement::CreateExtension(_) => Core::new(Admin, "CREATE EXTENSION"),
            Statement::DropExtension(_) => Core::new(Admin, "DROP EXTENSION"),
            Statement::CreateServer(_) => Core::new(Admin, "CREATE SERVER"),
            Statement::CreateForeignDataWrapper(_) => {
                Core::new(Admin, "CREATE FOREIGN DATA WRAPPER")
            }
            Statement::CreateUserMapping(_) => Core::new(Admin, "CREATE USER MAPPING"),
            Statement::CreateForeignTable(_) => Core::new(Admin, "CREATE FOREIGN TABLE"),
            Statement::CreateSchema { .. } => Core::new(Ddl, "CREATE SCHEMA"),
            Statement::CreateSequence { name, .. } => {
                self.write_target(name);
                Core::new(Ddl, "CREATE SEQUENCE")
            }
            Statement::CreateType { name, .. } => {
                self.write_target(name);
                Core::new(Ddl, "CREATE TYPE")
            }
            Statement::CreateDomain(_) => Core::new(Ddl, "CREATE DOMAIN"),
            Statement::CreatePolicy(_) => Core::new(Ddl, "CREATE POLICY"),
            Statement::AlterPolicy(_) => Core::new(Ddl, "ALTER POLICY"),
            Statement::DropPolicy(_) => Core::new(Ddl, "DROP POLICY"),
            Statement::CreateAggregate(_) => Core::new(Ddl, "CREATE AGGREGATE"),
            Statement::AlterSchema(_) => Core::new(Ddl, "ALTER SCHEMA"),
            Statement::AlterType(_) => Core::new(Ddl, "ALTER TYPE"),
            Statement::AlterFunction(_) => Core::new(Ddl, "ALTER FUNCTION"),
            Statement::DropFunction(_) => Core::new(Ddl, "DROP FUNCTION"),
            Statement::DropProcedure { .. } => Core::new(Ddl, "DROP PROCEDURE"),
            Statement::DropTrigger(_) => Core::new(Ddl, "DROP TRIGGER"),
            Statement::DropDomain(_) => Core::new(Ddl, "DROP DOMAIN"),
            Statement::CreateRule(_) => Core::opaque(Ddl, "CREATE RULE"),
            Statement::DropRule(_) => Core::new(Ddl, "DROP RULE"),
            // Anything else is not understood well enough to be cleared.
            _ => Core::opaque(Admin, "OTHER"),
        })
    }

    fn copy(&mut self, source: &CopySource, to: bool, target: &CopyTarget) -> Res<Core> {
        let mut c = Core::new(Class::Copy, "COPY");
        if !to {
            if let CopySource::Table { table_name, .. } = source {
                self.write_target(table_name);
            }
            c.copy_from_stdin = Some(matches!(target, CopyTarget::Stdin));
            return Ok(c);
        }
        c.rel = match source {
            CopySource::Query(q) => self.query(q)?,
            CopySource::Table {
                table_name,
                columns,
            } => match rel_of(table_name) {
                Some(rel) => {
                    let rel = self.resolve(rel);
                    self.reads.push(rel.clone());
                    let names: Option<Vec<String>> = if columns.is_empty() {
                        self.schema.columns(&rel)
                    } else {
                        Some(columns.iter().map(fold).collect())
                    };
                    match names {
                        Some(names) => Rel {
                            outputs: names
                                .into_iter()
                                .map(|n| Output {
                                    sources: vec![Source::Column(ColumnRef {
                                        relation: rel.clone(),
                                        column: n.clone(),
                                    })],
                                    name: n,
                                })
                                .collect(),
                            known: true,
                        },
                        None => Rel {
                            outputs: vec![Output {
                                name: "*".to_string(),
                                sources: vec![Source::WholeRow(rel)],
                            }],
                            known: false,
                        },
                    }
                }
                None => Rel {
                    outputs: vec![Output {
                        name: "*".to_string(),
                        sources: vec![Source::Unknown],
                    }],
                    known: false,
                },
            },
        };
        let stdout = matches!(target, CopyTarget::Stdout);
        if !stdout {
            self.moved.extend(c.rel.all_sources());
        }
        c.copy_to_stdout = Some(stdout);
        Ok(c)
    }

    /// INSERT/UPDATE/DELETE/MERGE, at the top or inside a CTE; returns the
    /// RETURNING rows.
    fn dml(&mut self, st: &Statement) -> Res<Rel> {
        self.enter()?;
        let rel = match st {
            Statement::Insert(i) => self.insert(i)?,
            Statement::Update(u) => self.update(u)?,
            Statement::Delete(d) => self.delete(d)?,
            Statement::Merge(m) => self.merge(m)?,
            _ => {
                let core = self.statement(st)?;
                core.rel
            }
        };
        self.leave();
        Ok(rel)
    }

    /// The target of a DML statement as a scope item, without counting it as
    /// a read: what is read from it shows up in predicates, moved and
    /// outputs, each naming the relation.
    fn target_item(&mut self, name: &ObjectName, alias: Option<&Ident>) -> Option<Item> {
        let rel = self.write_target(name)?;
        let columns = self.schema.columns(&rel).map(|cols| {
            cols.into_iter()
                .map(|c| Output {
                    sources: vec![Source::Column(ColumnRef {
                        relation: rel.clone(),
                        column: c.clone(),
                    })],
                    name: c,
                })
                .collect()
        });
        Some(Item {
            name: alias.map(fold).unwrap_or_else(|| rel.name.clone()),
            schema: if alias.is_some() {
                None
            } else {
                rel.schema.clone()
            },
            fallback: vec![Source::WholeRow(rel.clone())],
            kind: ItemKind::Base(rel),
            columns,
            open: false,
        })
    }

    fn target_factor(&mut self, f: &TableFactor) -> Res<Option<Item>> {
        match f {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let mut item = self.target_item(name, alias.as_ref().map(|a| &a.name));
                if let (Some(it), Some(a)) = (item.as_mut(), alias.as_ref()) {
                    it.rename(a);
                }
                Ok(item)
            }
            other => {
                // Not a plain table: analyze it as a FROM item so nothing in
                // it goes unseen, and fail closed on the target.
                self.factor(other)?;
                Ok(None)
            }
        }
    }

    fn push_level_with(&mut self, items: Vec<Item>) {
        let mut star = Vec::new();
        let mut known = true;
        for it in &items {
            let (s, k) = it.star();
            star.extend(s);
            known &= k;
        }
        self.levels.push(Level {
            items,
            star,
            star_known: known,
        });
    }

    fn returning(&mut self, items: Option<&Vec<SelectItem>>) -> Res<Rel> {
        match items {
            Some(items) => self.projection(items),
            None => Ok(Rel::none()),
        }
    }

    fn assignments(&mut self, assignments: &[Assignment], target: Option<&RelName>) -> Res<()> {
        for a in assignments {
            let cols: Vec<String> = match &a.target {
                AssignmentTarget::ColumnName(n) => name_parts(n)
                    .and_then(|p| p.last().cloned())
                    .into_iter()
                    .collect(),
                AssignmentTarget::Tuple(ns) => ns
                    .iter()
                    .filter_map(|n| name_parts(n).and_then(|p| p.last().cloned()))
                    .collect(),
            };
            let sources = self.expr(&a.value)?;
            // `SET x = x || 'a'` keeps a value where it was; anything else
            // moves it into the assigned column.
            self.moved
                .extend(sources.into_iter().filter(|s| match (s, target) {
                    (Source::Column(c), Some(t)) => !(&c.relation == t && cols.contains(&c.column)),
                    _ => true,
                }));
        }
        Ok(())
    }

    fn insert(&mut self, ins: &Insert) -> Res<Rel> {
        let source = match &ins.source {
            Some(q) => self.query(q)?,
            None => Rel::none(),
        };
        self.moved.extend(source.all_sources());
        let alias = ins.table_alias.as_ref().map(|a| &a.alias);
        let target = match &ins.table {
            TableObject::TableName(n) => self.target_item(n, alias),
            _ => None,
        };
        let target_rel = match target.as_ref().map(|t| &t.kind) {
            Some(ItemKind::Base(r)) => Some(r.clone()),
            _ => None,
        };
        let mut items = Vec::new();
        let col_names: Vec<String> = if !ins.columns.is_empty() {
            ins.columns
                .iter()
                .filter_map(|n| name_parts(n).and_then(|p| p.last().cloned()))
                .collect()
        } else {
            target
                .as_ref()
                .and_then(|t| t.columns.as_ref())
                .map(|cols| cols.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default()
        };
        if let Some(t) = target {
            items.push(t);
        }
        // ON CONFLICT ... DO UPDATE sees the proposed row as `excluded`.
        items.push(Item {
            name: "excluded".to_string(),
            schema: None,
            kind: ItemKind::Derived,
            columns: Some(
                col_names
                    .into_iter()
                    .zip(source.outputs.iter())
                    .map(|(name, o)| Output {
                        name,
                        sources: o.sources.clone(),
                    })
                    .collect(),
            ),
            open: true,
            fallback: source.all_sources(),
        });
        self.push_level_with(items);
        if let Some(level) = self.levels.last_mut() {
            // RETURNING * is the target's columns, not `excluded`'s.
            if let Some(t) = level.items.first().filter(|t| t.name != "excluded") {
                let (s, k) = t.star();
                level.star = s;
                level.star_known = k;
            }
        }
        self.assignments(&ins.assignments, target_rel.as_ref())?;
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                self.assignments(&du.assignments, target_rel.as_ref())?;
                if let Some(w) = &du.selection {
                    let s = self.expr(w)?;
                    self.predicates.extend(s);
                }
            }
        }
        let returning = match &ins.output {
            Some(OutputClause::Returning { select_items, .. }) => Some(select_items),
            _ => ins.returning.as_ref(),
        };
        let rel = self.returning(returning)?;
        self.levels.pop();
        Ok(rel)
    }

    fn update(&mut self, up: &Update) -> Res<Rel> {
        self.levels.push(Level::default());
        let target = self.target_factor(&up.table.relation)?;
        let target_rel = match target.as_ref().map(|t| &t.kind) {
            Some(ItemKind::Base(r)) => Some(r.clone()),
            _ => None,
        };
        if let Some(t) = target {
            self.add_item(t);
        }
        for j in &up.table.joins {
            self.join(j, &mut Vec::new(), &mut true)?;
        }
        if let Some(from) = &up.from {
            let twjs = match from {
                UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t) => t,
            };
            for twj in twjs {
                let (s, k) = self.table_with_joins(twj)?;
                if let Some(l) = self.levels.last_mut() {
                    l.star.extend(s);
                    l.star_known &= k;
                }
            }
        }
        self.assignments(&up.assignments, target_rel.as_ref())?;
        match &up.selection {
            Some(w) => {
                let s = self.expr(w)?;
                self.predicates.extend(s);
            }
            None => self.unbounded_write = true,
        }
        let returning = match &up.output {
            Some(OutputClause::Returning { select_items, .. }) => Some(select_items),
            _ => up.returning.as_ref(),
        };
        let rel = self.returning(returning)?;
        self.levels.pop();
        Ok(rel)
    }

    fn delete(&mut self, del: &Delete) -> Res<Rel> {
        self.levels.push(Level::default());
        for t in &del.tables {
            self.write_target(t);
        }
        let twjs = match &del.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
        };
        for (i, twj) in twjs.iter().enumerate() {
            if i == 0 && del.tables.is_empty() {
                if let Some(t) = self.target_factor(&twj.relation)? {
                    self.add_item(t);
                }
                for j in &twj.joins {
                    self.join(j, &mut Vec::new(), &mut true)?;
                }
            } else {
                let (s, k) = self.table_with_joins(twj)?;
                if let Some(l) = self.levels.last_mut() {
                    l.star.extend(s);
                    l.star_known &= k;
                }
            }
        }
        if let Some(using) = &del.using {
            for twj in using {
                let (s, k) = self.table_with_joins(twj)?;
                if let Some(l) = self.levels.last_mut() {
                    l.star.extend(s);
                    l.star_known &= k;
                }
            }
        }
        match &del.selection {
            Some(w) => {
                let s = self.expr(w)?;
                self.predicates.extend(s);
            }
            None => self.unbounded_write = true,
        }
        for o in &del.order_by {
            let s = self.expr(&o.expr)?;
            self.predicates.extend(s);
        }
        let returning = match &del.output {
            Some(OutputClause::Returning { select_items, .. }) => Some(select_items),
            _ => del.returning.as_ref(),
        };
        let rel = self.returning(returning)?;
        self.levels.pop();
        Ok(rel)
    }

    fn merge(&mut self, m: &Merge) -> Res<Rel> {
        self.levels.push(Level::default());
        let target = self.target_factor(&m.table)?;
        let target_rel = match target.as_ref().map(|t| &t.kind) {
            Some(ItemKind::Base(r)) => Some(r.clone()),
            _ => None,
        };
        if let Some(t) = target {
            self.add_item(t);
        }
        let (s, k) = self.factor(&m.source)?;
        if let Some(l) = self.levels.last_mut() {
            l.star.extend(s);
            l.star_known &= k;
        }
        let on = self.expr(&m.on)?;
        self.predicates.extend(on);
        for clause in &m.clauses {
            if let Some(p) = &clause.predicate {
                let s = self.expr(p)?;
                self.predicates.extend(s);
            }
            match &clause.action {
                MergeAction::Update(u) => {
                    if let MergeUpdateKind::Set(a) = &u.kind {
                        self.assignments(a, target_rel.as_ref())?;
                    }
                    for p in [&u.update_predicate, &u.delete_predicate]
                        .into_iter()
                        .flatten()
                    {
                        let s = self.expr(p)?;
                        self.predicates.extend(s);
                    }
                }
                MergeAction::Insert(i) => {
                    match &i.kind {
                        MergeInsertKind::Values(v) => {
                            for row in &v.rows {
                                for e in row.iter() {
                                    let s = self.expr(e)?;
                                    self.moved.extend(s);
                                }
                            }
                        }
                        // INSERT ROW / INSERT *: the whole source row.
                        _ => {
                            let all: Vec<Source> = self
                                .levels
                                .last()
                                .map(|l| {
                                    l.items.iter().skip(1).flat_map(|i| i.whole_row()).collect()
                                })
                                .unwrap_or_default();
                            self.moved.extend(all);
                        }
                    }
                    if let Some(p) = &i.insert_predicate {
                        let s = self.expr(p)?;
                        self.predicates.extend(s);
                    }
                }
                _ => {}
            }
        }
        let rel = match &m.output {
            Some(OutputClause::Returning { select_items, .. })
            | Some(OutputClause::Output { select_items, .. }) => self.projection(select_items)?,
            None => Rel::none(),
        };
        self.levels.pop();
        Ok(rel)
    }

    // -----------------------------------------------------------------------
    // Queries

    fn query(&mut self, q: &Query) -> Res<Rel> {
        self.enter()?;
        let mark = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let rel = if with.recursive {
                    self.recursive_cte(cte)?
                } else {
                    let names: Vec<String> =
                        cte.alias.columns.iter().map(|c| fold(&c.name)).collect();
                    self.query(&cte.query)?.renamed(&names)
                };
                self.ctes.push((fold(&cte.alias.name), rel));
            }
        }
        let rel = match q.body.as_ref() {
            SetExpr::Select(s) => self.select(s, q.order_by.as_ref())?,
            other => {
                let rel = self.set_expr(other)?;
                if let Some(ob) = &q.order_by {
                    // ORDER BY on a set operation names its output columns.
                    let item = Item {
                        name: String::new(),
                        schema: None,
                        kind: ItemKind::Derived,
                        columns: Some(rel.outputs.clone()),
                        open: !rel.known,
                        fallback: rel.all_sources(),
                    };
                    self.push_level_with(vec![item]);
                    let r = self.order_by(ob, &rel);
                    self.levels.pop();
                    r?;
                }
                rel
            }
        };
        let mut limits: Vec<&Expr> = Vec::new();
        match &q.limit_clause {
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                limits.extend(limit.iter());
                limits.extend(offset.iter().map(|o| &o.value));
                limits.extend(limit_by.iter());
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                limits.push(offset);
                limits.push(limit);
            }
            None => {}
        }
        if let Some(f) = &q.fetch {
            limits.extend(f.quantity.iter());
        }
        for e in limits {
            let s = self.expr(e)?;
            self.predicates.extend(s);
        }
        self.ctes.truncate(mark);
        self.leave();
        Ok(rel)
    }

    /// A CTE of a WITH RECURSIVE list: iterate until the column sources stop
    /// growing, starting from the anchor (the left side of the UNION).
    fn recursive_cte(&mut self, cte: &Cte) -> Res<Rel> {
        let name = fold(&cte.alias.name);
        let names: Vec<String> = cte.alias.columns.iter().map(|c| fold(&c.name)).collect();
        let mut guess = match cte.query.body.as_ref() {
            SetExpr::SetOperation { left, .. } if cte.query.with.is_none() => {
                self.set_expr(left)?.renamed(&names)
            }
            _ => Rel {
                outputs: names
                    .iter()
                    .map(|n| Output {
                        name: n.clone(),
                        sources: Vec::new(),
                    })
                    .collect(),
                known: true,
            },
        };
        for _ in 0..MAX_FIXPOINT_ITERATIONS {
            self.ctes.push((name.clone(), guess.clone()));
            let r = self.query(&cte.query);
            self.ctes.pop();
            let r = r?.renamed(&names);
            let next = union_rel(&guess, &r);
            if next == guess {
                return Ok(guess);
            }
            guess = next;
        }
        for o in &mut guess.outputs {
            o.sources = union(&o.sources, &[Source::Unknown]);
        }
        Ok(guess)
    }

    fn set_expr(&mut self, body: &SetExpr) -> Res<Rel> {
        self.enter()?;
        let rel = match body {
            SetExpr::Select(s) => self.select(s, None)?,
            SetExpr::Query(q) => self.query(q)?,
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left)?;
                let r = self.set_expr(right)?;
                let mut u = union_rel(&l, &r);
                // Names come from the left side.
                for (o, lo) in u.outputs.iter_mut().zip(&l.outputs) {
                    o.name = lo.name.clone();
                }
                u
            }
            SetExpr::Values(v) => {
                let mut outputs: Vec<Output> = Vec::new();
                for row in &v.rows {
                    for (i, e) in row.iter().enumerate() {
                        let s = self.expr(e)?;
                        match outputs.get_mut(i) {
                            Some(o) => o.sources = union(&o.sources, &s),
                            None => outputs.push(Output {
                                name: format!("column{}", i + 1),
                                sources: s,
                            }),
                        }
                    }
                }
                Rel {
                    outputs,
                    known: true,
                }
            }
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => self.dml(st)?,
            SetExpr::Table(t) => {
                let rel = t.table_name.as_ref().map(|n| match &t.schema_name {
                    Some(s) => RelName::new(Some(&fold(s)), &fold(n)),
                    None => RelName::new(None, &fold(n)),
                });
                match rel {
                    Some(rel) => {
                        self.levels.push(Level::default());
                        let item = self.table_item(rel, None);
                        let (star, known) = item.star();
                        self.add_item(item);
                        self.levels.pop();
                        Rel {
                            outputs: star,
                            known,
                        }
                    }
                    None => Rel {
                        outputs: vec![Output {
                            name: "*".to_string(),
                            sources: vec![Source::Unknown],
                        }],
                        known: false,
                    },
                }
            }
        };
        self.leave();
        Ok(rel)
    }

    fn add_item(&mut self, item: Item) {
        if let Some(l) = self.levels.last_mut() {
            l.items.push(item);
        }
    }

    fn select(&mut self, s: &Select, order_by: Option<&OrderBy>) -> Res<Rel> {
        self.levels.push(Level {
            star_known: true,
            ..Level::default()
        });
        for twj in &s.from {
            let (st, k) = self.table_with_joins(twj)?;
            if let Some(l) = self.levels.last_mut() {
                l.star.extend(st);
                l.star_known &= k;
            }
        }
        for e in [&s.prewhere, &s.selection, &s.having, &s.qualify]
            .into_iter()
            .flatten()
        {
            let src = self.expr(e)?;
            self.predicates.extend(src);
        }
        for w in &s.named_window {
            if let NamedWindowExpr::WindowSpec(spec) = &w.1 {
                self.window_spec(spec)?;
            }
        }
        let rel = self.projection(&s.projection)?;
        if let Some(Distinct::On(exprs)) = &s.distinct {
            for e in exprs {
                let src = self.key(e, &rel, true)?;
                self.predicates.extend(src);
            }
        }
        if let GroupByExpr::Expressions(exprs, _) = &s.group_by {
            for e in exprs {
                let src = self.key(e, &rel, false)?;
                self.predicates.extend(src);
            }
        }
        if let Some(ob) = order_by {
            self.order_by(ob, &rel)?;
        }
        if let Some(into) = &s.into {
            for t in &into.targets {
                let name = match t {
                    Expr::Identifier(id) => Some(ObjectName::from(vec![id.clone()])),
                    Expr::CompoundIdentifier(ids) => Some(ObjectName::from(ids.clone())),
                    _ => None,
                };
                if let Some(n) = name {
                    self.write_target(&n);
                }
            }
            self.select_into = true;
        }
        self.levels.pop();
        Ok(rel)
    }

    fn order_by(&mut self, ob: &OrderBy, rel: &Rel) -> Res<()> {
        match &ob.kind {
            OrderByKind::Expressions(exprs) => {
                for o in exprs {
                    let src = self.key(&o.expr, rel, true)?;
                    self.predicates.extend(src);
                }
            }
            OrderByKind::All(_) => self.predicates.extend(rel.all_sources()),
        }
        Ok(())
    }

    /// An ORDER BY / GROUP BY / DISTINCT ON key: an output position, an
    /// output name, or an expression over the input.
    fn key(&mut self, e: &Expr, rel: &Rel, output_first: bool) -> Res<Vec<Source>> {
        if let Expr::Value(v) = e {
            if let Value::Number(n, _) = &v.value {
                if let Ok(i) = n.parse::<usize>() {
                    if let Some(o) = i.checked_sub(1).and_then(|i| rel.outputs.get(i)) {
                        return Ok(o.sources.clone());
                    }
                }
            }
        }
        let by_name = match e {
            Expr::Identifier(id) => {
                let n = fold(id);
                rel.outputs.iter().find(|o| o.name == n).cloned()
            }
            _ => None,
        };
        if output_first {
            if let Some(o) = by_name {
                return Ok(o.sources);
            }
        }
        let src = self.expr(e)?;
        if src == [Source::Unknown] {
            if let Some(o) = by_name {
                return Ok(o.sources);
            }
        }
        Ok(src)
    }

    fn projection(&mut self, items: &[SelectItem]) -> Res<Rel> {
        let mut rel = Rel::none();
        for it in items {
            match it {
                SelectItem::UnnamedExpr(e) => {
                    let sources = self.expr(e)?;
                    rel.outputs.push(Output {
                        name: expr_name(e),
                        sources,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let sources = self.expr(expr)?;
                    rel.outputs.push(Output {
                        name: fold(alias),
                        sources,
                    });
                }
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let sources = self.expr(expr)?;
                    for a in aliases {
                        rel.outputs.push(Output {
                            name: fold(a),
                            sources: sources.clone(),
                        });
                    }
                }
                SelectItem::Wildcard(_) => {
                    if let Some(l) = self.levels.last() {
                        rel.outputs.extend(l.star.iter().cloned());
                        rel.known &= l.star_known;
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let found = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            self.find_item(n).map(|i| i.star())
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            let sources = self.expr(e)?;
                            Some((
                                vec![Output {
                                    name: "*".to_string(),
                                    sources,
                                }],
                                false,
                            ))
                        }
                    };
                    let (outs, known) = found.unwrap_or_else(|| {
                        (
                            vec![Output {
                                name: "*".to_string(),
                                sources: vec![Source::Unknown],
                            }],
                            false,
                        )
                    });
                    rel.outputs.extend(outs);
                    rel.known &= known;
                }
            }
        }
        Ok(rel)
    }

    /// A FROM entry with its joins; returns what `*` yields for it.
    fn table_with_joins(&mut self, twj: &TableWithJoins) -> Res<(Vec<Output>, bool)> {
        self.enter()?;
        let (mut star, mut known) = self.factor(&twj.relation)?;
        for j in &twj.joins {
            self.join(j, &mut star, &mut known)?;
        }
        self.leave();
        Ok((star, known))
    }

    fn join(
        &mut self,
        j: &sqlparser::ast::Join,
        star: &mut Vec<Output>,
        known: &mut bool,
    ) -> Res<()> {
        let (rstar, rknown) = self.factor(&j.relation)?;
        let constraint = match &j.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c)
            | JoinOperator::Semi(c)
            | JoinOperator::LeftSemi(c)
            | JoinOperator::RightSemi(c)
            | JoinOperator::Anti(c)
            | JoinOperator::LeftAnti(c)
            | JoinOperator::RightAnti(c)
            | JoinOperator::StraightJoin(c) => Some(c),
            JoinOperator::AsOf {
                match_condition,
                constraint,
            } => {
                let s = self.expr(match_condition)?;
                self.predicates.extend(s);
                Some(constraint)
            }
            _ => None,
        };
        let using: Option<Vec<String>> = match constraint {
            Some(JoinConstraint::On(e)) => {
                let s = self.expr(e)?;
                self.predicates.extend(s);
                None
            }
            Some(JoinConstraint::Using(names)) | Some(JoinConstraint::UsingAlias(names, _)) => {
                Some(
                    names
                        .iter()
                        .filter_map(|n| name_parts(n).and_then(|p| p.last().cloned()))
                        .collect(),
                )
            }
            Some(JoinConstraint::Natural) => {
                if *known && rknown {
                    Some(
                        star.iter()
                            .filter(|o| rstar.iter().any(|r| r.name == o.name))
                            .map(|o| o.name.clone())
                            .collect(),
                    )
                } else {
                    // The common columns cannot be told: both sides are
                    // compared, whole.
                    let mut u = Uniq::default();
                    for o in star.iter().chain(rstar.iter()) {
                        u.extend(o.sources.iter().cloned());
                    }
                    self.predicates.extend(u.into_vec());
                    None
                }
            }
            _ => None,
        };
        match using {
            Some(cols) => {
                // USING/NATURAL: the join columns come first, once, with the
                // sources of both sides; then the rest of each side.
                let side = |outs: &[Output], sknown: bool, c: &str| -> Vec<Source> {
                    let hit: Vec<&Output> = outs.iter().filter(|o| o.name == c).collect();
                    if hit.is_empty() && !sknown {
                        let mut u = Uniq::default();
                        for o in outs {
                            u.extend(o.sources.iter().cloned());
                        }
                        u.into_vec()
                    } else {
                        let mut u = Uniq::default();
                        for o in hit {
                            u.extend(o.sources.iter().cloned());
                        }
                        u.into_vec()
                    }
                };
                let mut merged = Vec::new();
                for c in &cols {
                    let sources = union(&side(star, *known, c), &side(&rstar, rknown, c));
                    self.predicates.extend(sources.iter().cloned());
                    merged.push(Output {
                        name: c.clone(),
                        sources,
                    });
                }
                merged.extend(star.iter().filter(|o| !cols.contains(&o.name)).cloned());
                merged.extend(rstar.into_iter().filter(|o| !cols.contains(&o.name)));
                *star = merged;
            }
            None => star.extend(rstar),
        }
        *known &= rknown;
        Ok(())
    }

    fn table_item(&mut self, rel: RelName, alias: Option<&TableAlias>) -> Item {
        let rel = self.resolve(rel);
        self.reads.push(rel.clone());
        let columns = self.schema.columns(&rel).map(|cols| {
            cols.into_iter()
                .map(|c| Output {
                    sources: vec![Source::Column(ColumnRef {
                        relation: rel.clone(),
                        column: c.clone(),
                    })],
                    name: c,
                })
                .collect()
        });
        let mut item = Item {
            name: rel.name.clone(),
            schema: rel.schema.clone(),
            fallback: vec![Source::WholeRow(rel.clone())],
            kind: ItemKind::Base(rel),
            columns,
            open: false,
        };
        if let Some(a) = alias {
            item.rename(a);
        }
        item
    }

    /// A table function in FROM: rows computed from the arguments for the
    /// well-known set-returning built-ins, of unknown origin otherwise.
    fn function_item(
        &mut self,
        name: String,
        mut sources: Vec<Source>,
        alias: Option<&TableAlias>,
    ) -> Item {
        if !is_known_table_function(&name) {
            sources = union(&sources, &[Source::Unknown]);
        }
        let short = name.rsplit('.').next().unwrap_or_default().to_string();
        self.functions.push(name);
        let mut item = Item {
            name: short,
            schema: None,
            kind: ItemKind::Derived,
            columns: None,
            open: false,
            fallback: sources,
        };
        if let Some(a) = alias {
            item.rename(a);
        }
        item
    }

    fn derived_item(&mut self, rel: Rel, alias: Option<&TableAlias>, name: &str) -> Item {
        let mut item = Item {
            name: name.to_string(),
            schema: None,
            kind: ItemKind::Derived,
            fallback: rel.all_sources(),
            open: !rel.known,
            columns: Some(rel.outputs),
        };
        if let Some(a) = alias {
            item.rename(a);
        }
        item
    }

    fn unknown_item(&self, alias: Option<&TableAlias>) -> Item {
        let mut item = Item {
            name: String::new(),
            schema: None,
            kind: ItemKind::Derived,
            columns: None,
            open: true,
            fallback: vec![Source::Unknown],
        };
        if let Some(a) = alias {
            item.rename(a);
        }
        item
    }

    fn function_args(&mut self, args: &[FunctionArg], fname: &str) -> Res<Vec<Source>> {
        let mut u = Uniq::default();
        for a in args {
            let arg = match a {
                FunctionArg::Named { arg, .. }
                | FunctionArg::ExprNamed { arg, .. }
                | FunctionArg::Unnamed(arg) => arg,
            };
            match arg {
                FunctionArgExpr::Expr(e) => u.extend(self.expr(e)?),
                FunctionArgExpr::QualifiedWildcard(n) => {
                    u.extend(self.whole_row_of(n));
                }
                FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                    // count(*) reads no value; any other f(*) is taken as
                    // reading every row in scope.
                    let base = fname.rsplit('.').next().unwrap_or_default();
                    if base != "count" {
                        u.extend(self.all_whole_rows());
                    }
                }
            }
        }
        Ok(u.into_vec())
    }

    fn factor(&mut self, f: &TableFactor) -> Res<(Vec<Output>, bool)> {
        self.enter()?;
        let item = match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if let Some(args) = args {
                    let fname = func_name(name);
                    let sources = self.function_args(&args.args, &fname)?;
                    self.function_item(fname, sources, alias.as_ref())
                } else {
                    let parts = name_parts(name);
                    let cte = match parts.as_deref() {
                        Some([n]) => self
                            .ctes
                            .iter()
                            .rev()
                            .find(|(c, _)| c == n)
                            .map(|(c, r)| (c.clone(), r.clone())),
                        _ => None,
                    };
                    match (cte, rel_of(name)) {
                        (Some((cname, rel)), _) => self.derived_item(rel, alias.as_ref(), &cname),
                        (None, Some(rel)) => self.table_item(rel, alias.as_ref()),
                        (None, None) => self.unknown_item(alias.as_ref()),
                    }
                }
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let rel = self.query(subquery)?;
                self.derived_item(rel, alias.as_ref(), "")
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let fname = func_name(name);
                let sources = self.function_args(args, &fname)?;
                self.function_item(fname, sources, alias.as_ref())
            }
            TableFactor::TableFunction { expr, alias } => {
                let mut sources = self.expr(expr)?;
                sources = union(&sources, &[Source::Unknown]);
                let mut item = self.unknown_item(alias.as_ref());
                item.fallback = sources;
                item
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let mut u = Uniq::default();
                for e in array_exprs {
                    u.extend(self.expr(e)?);
                }
                self.function_item("unnest".to_string(), u.into_vec(), alias.as_ref())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let (star, known) = self.table_with_joins(table_with_joins)?;
                match alias {
                    Some(a) => self.derived_item(
                        Rel {
                            outputs: star,
                            known,
                        },
                        Some(a),
                        "",
                    ),
                    None => {
                        self.leave();
                        return Ok((star, known));
                    }
                }
            }
            TableFactor::JsonTable {
                json_expr, alias, ..
            }
            | TableFactor::OpenJsonTable {
                json_expr, alias, ..
            } => {
                let sources = self.expr(json_expr)?;
                let mut item = self.unknown_item(alias.as_ref());
                item.fallback = union(&sources, &[Source::Unknown]);
                item
            }
            TableFactor::XmlTable {
                row_expression,
                alias,
                ..
            } => {
                let sources = self.expr(row_expression)?;
                let mut item = self.unknown_item(alias.as_ref());
                item.fallback = union(&sources, &[Source::Unknown]);
                item
            }
            // Dialect constructs PostgreSQL lacks: nothing in them is
            // traced.
            _ => self.unknown_item(None),
        };
        let star = item.star();
        self.add_item(item);
        self.leave();
        Ok(star)
    }

    // -----------------------------------------------------------------------
    // Name resolution

    /// The innermost FROM item a qualifier (`t`, `s.t`, `db.s.t`) names.
    fn find_item(&self, qualifier: &ObjectName) -> Option<&Item> {
        let parts = name_parts(qualifier)?;
        self.find_item_parts(&parts)
    }

    fn find_item_parts(&self, parts: &[String]) -> Option<&Item> {
        let (schema, name) = match parts {
            [n] => (None, n),
            [.., s, n] => (Some(s), n),
            [] => return None,
        };
        self.levels.iter().rev().find_map(|l| {
            l.items.iter().find(|i| {
                &i.name == name
                    && match schema {
                        None => true,
                        Some(s) => i.schema.as_ref() == Some(s),
                    }
            })
        })
    }

    fn whole_row_of(&self, qualifier: &ObjectName) -> Vec<Source> {
        match self.find_item(qualifier) {
            Some(i) => i.whole_row(),
            None => vec![Source::Unknown],
        }
    }

    fn all_whole_rows(&self) -> Vec<Source> {
        let mut u = Uniq::default();
        if let Some(l) = self.levels.last() {
            for i in &l.items {
                u.extend(i.whole_row());
            }
        }
        if u.items.is_empty() {
            u.push(Source::Unknown);
        }
        u.into_vec()
    }

    /// An unqualified name: a column of an item in scope (innermost level
    /// that has it), or else a whole-row reference to an item of that name.
    fn unqualified(&mut self, id: &Ident) -> Vec<Source> {
        let col = fold(id);
        let mut u = Uniq::default();
        let mut definite = false;
        for l in self.levels.iter().rev() {
            let mut maybes = Vec::new();
            for i in &l.items {
                match i.has(&col) {
                    Has::Definitely => {
                        definite = true;
                        u.extend(i.column(&col));
                    }
                    Has::Maybe => maybes.push(i),
                    Has::No => {}
                }
            }
            if definite {
                break;
            }
            // Unknown shapes: the name may be any of them (fail closed), and
            // may also belong further out.
            for i in maybes {
                u.extend(i.column(&col));
            }
        }
        if definite {
            return u.into_vec();
        }
        let mut found = !u.items.is_empty();
        if let Some(i) = self.find_item_parts(std::slice::from_ref(&col)) {
            found = true;
            u.extend(i.whole_row());
        }
        if found {
            return u.into_vec();
        }
        if id.quote_style.is_none() && is_niladic(&col) {
            self.functions.push(col);
            return Vec::new();
        }
        // No relation in scope is known to have the column: the catalog may
        // be behind the server, so attribute it to the innermost relations.
        if let Some(l) = self.levels.iter().rev().find(|l| !l.items.is_empty()) {
            for i in &l.items {
                u.extend(i.column(&col));
            }
        }
        if u.items.is_empty() {
            return vec![Source::Unknown];
        }
        u.into_vec()
    }

    /// `a.b`, `s.t.c`, ...: a column of the named item, else a field of a
    /// composite column.
    fn compound(&mut self, ids: &[Ident]) -> Vec<Source> {
        let parts: Vec<String> = ids.iter().map(fold).collect();
        if let Some((col, qual)) = parts.split_last() {
            if let Some(item) = self.find_item_parts(qual) {
                return item.column(col);
            }
        }
        match ids.first() {
            Some(first) => self.unqualified(first),
            None => vec![Source::Unknown],
        }
    }

    // -----------------------------------------------------------------------
    // Expressions

    fn window_spec(&mut self, spec: &WindowSpec) -> Res<()> {
        for e in &spec.partition_by {
            let s = self.expr(e)?;
            self.predicates.extend(s);
        }
        for o in &spec.order_by {
            let s = self.expr(&o.expr)?;
            self.predicates.extend(s);
        }
        Ok(())
    }

    fn function(&mut self, f: &Function) -> Res<Vec<Source>> {
        let name = func_name(&f.name);
        self.functions.push(name.clone());
        let mut u = Uniq::default();
        for args in [&f.parameters, &f.args] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => {
                    let r = self.query(q)?;
                    u.extend(r.all_sources());
                }
                FunctionArguments::List(list) => {
                    u.extend(self.function_args(&list.args, &name)?);
                    for c in &list.clauses {
                        match c {
                            FunctionArgumentClause::OrderBy(obs) => {
                                for o in obs {
                                    let s = self.expr(&o.expr)?;
                                    self.predicates.extend(s);
                                }
                            }
                            FunctionArgumentClause::Where(e) | FunctionArgumentClause::Limit(e) => {
                                let s = self.expr(e)?;
                                self.predicates.extend(s);
                            }
                            FunctionArgumentClause::Having(h) => {
                                let s = self.expr(&h.1)?;
                                self.predicates.extend(s);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        // WITHIN GROUP (ORDER BY x) is where ordered-set aggregates take
        // their values from.
        for o in &f.within_group {
            u.extend(self.expr(&o.expr)?);
        }
        if let Some(filter) = &f.filter {
            let s = self.expr(filter)?;
            self.predicates.extend(s);
        }
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.window_spec(spec)?;
        }
        Ok(u.into_vec())
    }

    fn exprs<'e>(&mut self, es: impl IntoIterator<Item = &'e Expr>) -> Res<Vec<Source>> {
        let mut u = Uniq::default();
        for e in es {
            u.extend(self.expr(e)?);
        }
        Ok(u.into_vec())
    }

    fn expr(&mut self, e: &Expr) -> Res<Vec<Source>> {
        self.enter()?;
        let r = self.spine(e);
        self.leave();
        r
    }

    /// Walks the main operand of an expression iteratively. The parser
    /// builds postfix and left-associative chains (`x::a::b`, `a OR b OR
    /// c`, `x LIKE p LIKE q`) in a loop, so their depth is bounded only by
    /// the statement's length; here they cost no stack either. The other
    /// operands are walked recursively after the chain's innermost operand.
    fn spine(&mut self, e: &Expr) -> Res<Vec<Source>> {
        let mut pending: Vec<&Expr> = Vec::new();
        let mut u = Uniq::default();
        let mut cur = e;
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(AnalyzeError::TooComplex);
            }
            cur = match cur {
                Expr::Nested(x)
                | Expr::UnaryOp { expr: x, .. }
                | Expr::IsFalse(x)
                | Expr::IsNotFalse(x)
                | Expr::IsTrue(x)
                | Expr::IsNotTrue(x)
                | Expr::IsNull(x)
                | Expr::IsNotNull(x)
                | Expr::IsUnknown(x)
                | Expr::IsNotUnknown(x)
                | Expr::Cast { expr: x, .. }
                | Expr::Collate { expr: x, .. }
                | Expr::Extract { expr: x, .. }
                | Expr::Ceil { expr: x, .. }
                | Expr::Floor { expr: x, .. }
                | Expr::Named { expr: x, .. }
                | Expr::IsJson { expr: x, .. }
                | Expr::IsNormalized { expr: x, .. }
                | Expr::Prefixed { value: x, .. } => x,
                Expr::BinaryOp { left, right, .. }
                | Expr::IsDistinctFrom(left, right)
                | Expr::IsNotDistinctFrom(left, right)
                | Expr::AnyOp { left, right, .. }
                | Expr::AllOp { left, right, .. }
                | Expr::AtTimeZone {
                    timestamp: left,
                    time_zone: right,
                } => {
                    pending.push(right);
                    left
                }
                Expr::Like {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::ILike {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::SimilarTo {
                    expr,
                    pattern,
                    escape_char,
                    ..
                } => {
                    pending.extend(escape_char.as_deref());
                    pending.push(pattern);
                    expr
                }
                Expr::In { expr, target, .. } => {
                    match target {
                        InTarget::List(list) => pending.extend(list.iter().rev()),
                        InTarget::Unnest(x) => pending.push(x),
                        InTarget::Subquery(q) => {
                            let s = self.query(q)?.all_sources();
                            self.predicates.extend(s.iter().cloned());
                            u.extend(s);
                        }
                        InTarget::Table { .. } => u.push(Source::Unknown),
                    }
                    expr
                }
                Expr::RLike { expr, pattern, .. } => {
                    pending.push(pattern);
                    expr
                }
                Expr::Between {
                    expr, low, high, ..
                } => {
                    pending.push(high);
                    pending.push(low);
                    expr
                }
                _ => break,
            };
        }
        u.extend(self.expr_inner(cur)?);
        for p in pending.into_iter().rev() {
            u.extend(self.expr(p)?);
        }
        Ok(u.into_vec())
    }

    fn expr_inner(&mut self, e: &Expr) -> Res<Vec<Source>> {
        Ok(match e {
            Expr::Identifier(id) => self.unqualified(id),
            Expr::CompoundIdentifier(ids) => self.compound(ids),
            Expr::Value(_) | Expr::TypedString(_) => Vec::new(),
            Expr::Function(f) => self.function(f)?,
            Expr::Subquery(q) => self.query(q)?.all_sources(),
            Expr::Exists { subquery, .. } => {
                let r = self.query(subquery)?;
                self.predicates.extend(r.all_sources());
                Vec::new()
            }
            Expr::Interval(i) => self.expr(&i.value)?,
            Expr::Convert { expr, styles, .. } => {
                let mut u = Uniq::default();
                u.extend(self.expr(expr)?);
                u.extend(self.exprs(styles)?);
                u.into_vec()
            }
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut list = vec![expr.as_ref()];
                list.extend(substring_from.as_deref());
                list.extend(substring_for.as_deref());
                self.exprs(list)?
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                let mut list = vec![expr.as_ref()];
                list.extend(trim_what.as_deref());
                list.extend(trim_characters.iter().flatten());
                self.exprs(list)?
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                let mut list = vec![expr.as_ref(), overlay_what.as_ref(), overlay_from.as_ref()];
                list.extend(overlay_for.as_deref());
                self.exprs(list)?
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut list: Vec<&Expr> = Vec::new();
                list.extend(operand.as_deref());
                for c in conditions {
                    list.push(&c.condition);
                    list.push(&c.result);
                }
                list.extend(else_result.as_deref());
                self.exprs(list)?
            }
            Expr::Tuple(list) => self.exprs(list)?,
            Expr::Array(a) => self.exprs(&a.elem)?,
            Expr::Struct { values, .. } => self.exprs(values)?,
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                self.exprs(sets.iter().flatten())?
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                let mut u = Uniq::default();
                u.extend(self.expr(root)?);
                for a in access_chain {
                    match a {
                        AccessExpr::Dot(x) => {
                            // `.field` names a field, not a column in scope.
                            if !matches!(x, Expr::Identifier(_)) {
                                u.extend(self.expr(x)?);
                            }
                        }
                        AccessExpr::Subscript(Subscript::Index { index }) => {
                            u.extend(self.expr(index)?)
                        }
                        AccessExpr::Subscript(Subscript::Slice {
                            lower_bound,
                            upper_bound,
                            stride,
                        }) => {
                            let list: Vec<&Expr> = [lower_bound, upper_bound, stride]
                                .into_iter()
                                .flatten()
                                .collect();
                            u.extend(self.exprs(list)?);
                        }
                    }
                }
                u.into_vec()
            }
            Expr::JsonAccess { value, path } => {
                let mut u = Uniq::default();
                u.extend(self.expr(value)?);
                for p in &path.path {
                    match p {
                        sqlparser::ast::JsonPathElem::Bracket { key }
                        | sqlparser::ast::JsonPathElem::ColonBracket { key } => {
                            u.extend(self.expr(key)?)
                        }
                        _ => {}
                    }
                }
                u.into_vec()
            }
            Expr::Wildcard(_) => self.all_whole_rows(),
            Expr::QualifiedWildcard(n, _) => self.whole_row_of(n),
            // Constructs without a PostgreSQL meaning here: fail closed.
            _ => vec![Source::Unknown],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct TestSchema;

    fn table_columns(name: &str) -> Option<&'static [&'static str]> {
        match name {
            "customers" => Some(&[
                "id",
                "full_name",
                "email",
                "phone",
                "card_number",
                "national_id",
                "notes",
            ]),
            "orders" => Some(&["id", "customer_id", "amount", "status"]),
            "customer_contacts" => Some(&["id", "full_name", "email", "phone"]),
            _ => None,
        }
    }

    impl Schema for TestSchema {
        fn resolve(&self, name: &RelName) -> Option<RelName> {
            if table_columns(&name.name).is_some() {
                return Some(RelName::new(Some("public"), &name.name));
            }
            if name.name.starts_with("pg_") {
                return Some(RelName::new(Some("pg_catalog"), &name.name));
            }
            None
        }
        fn columns(&self, name: &RelName) -> Option<Vec<String>> {
            if name.schema.as_deref() != Some("public") {
                return None;
            }
            table_columns(&name.name).map(|c| c.iter().map(|s| s.to_string()).collect())
        }
    }

    fn one(sql: &str) -> StatementInfo {
        let mut v = analyze(sql, &TestSchema).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0)
    }

    fn rel(s: &str) -> RelName {
        match s.split_once('.') {
            Some((a, b)) => RelName::new(Some(a), b),
            None => RelName::new(None, s),
        }
    }

    /// `public.customers.email` → Column; `public.customers.*` → WholeRow;
    /// `?` → Unknown.
    fn src(s: &str) -> Source {
        if s == "?" {
            return Source::Unknown;
        }
        let (r, c) = s.rsplit_once('.').unwrap_or(("", s));
        if c == "*" {
            Source::WholeRow(rel(r))
        } else {
            Source::Column(ColumnRef {
                relation: rel(r),
                column: c.to_string(),
            })
        }
    }

    fn srcs(list: &[&str]) -> Vec<Source> {
        list.iter().map(|s| src(s)).collect()
    }

    fn sorted(mut v: Vec<Source>) -> Vec<Source> {
        v.sort_by_key(|s| format!("{s:?}"));
        v
    }

    /// Output sources, one list per output column, as unordered sets.
    fn outs(sql: &str) -> Vec<Vec<Source>> {
        one(sql)
            .outputs
            .into_iter()
            .map(|o| sorted(o.sources))
            .collect()
    }

    const C: &str = "public.customers";

    fn cust(col: &str) -> String {
        format!("{C}.{col}")
    }

    #[test]
    fn expression_lineage() {
        let email = [cust("email")];
        let email: Vec<&str> = email.iter().map(String::as_str).collect();
        let cases = [
            "SELECT lower(email) FROM customers",
            "SELECT email || '' AS e FROM customers",
            "SELECT email::text FROM customers",
            "SELECT CAST(email AS varchar(10)) FROM customers",
            "SELECT substr(email, 1, 3) || substr(email, 4) FROM customers",
            "SELECT reverse(email) FROM customers",
            "SELECT encode(convert_to(email, 'UTF8'), 'base64') FROM customers",
            "SELECT translate(email, 'abc', 'xyz') FROM customers",
            "SELECT concat('x', email, $1) FROM customers",
            "SELECT format('%s', email) FROM customers",
            "SELECT string_agg(email, ',') FROM customers",
            "SELECT max(email) OVER (PARTITION BY id ORDER BY id) FROM customers",
            "SELECT customers.email FROM customers",
            "SELECT public.customers.email FROM customers",
            "SELECT c.email FROM customers AS c",
            "SELECT (email) FROM customers",
            "SELECT CASE WHEN id > 1 THEN email ELSE NULL END FROM customers WHERE false",
            "SELECT e FROM (SELECT email AS e FROM customers) sub",
            "SELECT x FROM (SELECT email FROM customers) AS sub(x)",
            "SELECT (SELECT email FROM customers LIMIT 1)",
            "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
            "WITH x(m) AS (SELECT email FROM customers) SELECT m FROM x",
            "SELECT EMAIL FROM CUSTOMERS",
            "SELECT email /* c */ FROM -- comment\n customers",
            "SELECT email FROM customers WHERE notes = E'it\\'s' AND notes <> $$a;b$$",
            "SELECT email FROM customers ORDER BY 1 LIMIT $1",
        ];
        for sql in cases {
            let o = outs(sql);
            assert_eq!(o.len(), 1, "{sql}");
            let expected = if sql.starts_with("SELECT CASE") {
                sorted(srcs(&[&cust("id"), &cust("email")]))
            } else {
                srcs(&email)
            };
            assert_eq!(o[0], expected, "{sql}");
        }
    }

    #[test]
    fn constants_and_parameters_have_no_sources() {
        for sql in [
            "SELECT 1",
            "SELECT $1",
            "SELECT now()",
            "SELECT 'a' || 'b'",
            "SELECT current_user",
            "SELECT count(*) FROM customers",
        ] {
            let o = outs(sql);
            assert_eq!(o, vec![Vec::<Source>::new()], "{sql}");
        }
    }

    #[test]
    fn count_star_with_predicate() {
        let i = one("SELECT count(*) FROM customers WHERE email LIKE 'a%'");
        assert_eq!(i.outputs[0].sources, vec![]);
        assert_eq!(i.predicates, srcs(&[&cust("email")]));
        assert_eq!(i.reads, vec![rel(C)]);
        assert_eq!(i.class, Class::Read);
        assert_eq!(i.kind, "SELECT");
        assert!(i.functions.contains(&"count".to_string()));
    }

    #[test]
    fn order_and_group_go_to_predicates() {
        let i = one("SELECT id FROM customers ORDER BY national_id");
        assert_eq!(i.outputs[0].sources, srcs(&[&cust("id")]));
        assert_eq!(i.predicates, srcs(&[&cust("national_id")]));

        let i = one(
            "SELECT phone, count(*) FROM customers GROUP BY phone HAVING min(notes) > '' ORDER BY 2",
        );
        assert_eq!(
            sorted(i.predicates),
            sorted(srcs(&[&cust("phone"), &cust("notes")]))
        );

        let i = one("SELECT email AS e FROM customers ORDER BY e");
        assert_eq!(i.predicates, srcs(&[&cust("email")]));

        let i = one("SELECT rank() OVER (PARTITION BY card_number ORDER BY notes) FROM customers");
        assert_eq!(i.outputs[0].sources, vec![]);
        assert_eq!(
            sorted(i.predicates),
            sorted(srcs(&[&cust("card_number"), &cust("notes")]))
        );

        let i = one("SELECT string_agg(email, ',' ORDER BY phone) FILTER (WHERE notes <> '') FROM customers");
        assert_eq!(i.outputs[0].sources, srcs(&[&cust("email")]));
        assert_eq!(
            sorted(i.predicates),
            sorted(srcs(&[&cust("phone"), &cust("notes")]))
        );

        let i = one("SELECT DISTINCT ON (phone) id FROM customers");
        assert_eq!(i.predicates, srcs(&[&cust("phone")]));
    }

    #[test]
    fn whole_row_references() {
        for sql in [
            "SELECT row_to_json(c) FROM customers c",
            "SELECT c FROM customers c",
            "SELECT to_jsonb(c.*) FROM customers c",
            "SELECT c::text FROM customers c",
            "SELECT hstore(c) FROM customers c",
            "SELECT json_agg(c) FROM customers c",
            "SELECT row_to_json(customers) FROM customers",
        ] {
            assert_eq!(outs(sql), vec![srcs(&["public.customers.*"])], "{sql}");
        }
        // A whole-row reference to a subquery is the union of its columns.
        assert_eq!(
            outs("SELECT to_json(s) FROM (SELECT email, phone FROM customers) s"),
            vec![sorted(srcs(&[&cust("email"), &cust("phone")]))]
        );
    }

    #[test]
    fn recursive_cte_fixpoint() {
        let sql = "WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n+1, e FROM r WHERE n < 3) SELECT e FROM r";
        let i = one(sql);
        assert_eq!(i.outputs.len(), 1);
        assert_eq!(i.outputs[0].sources, srcs(&[&cust("email")]));
        assert_eq!(i.reads, vec![rel(C)]);

        // The recursive term brings a second column into `e`.
        let sql = "WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION SELECT n+1, (SELECT phone FROM customers LIMIT 1) FROM r WHERE n < 3) SELECT n, e FROM r";
        let o = outs(sql);
        assert_eq!(o[0], vec![]);
        assert_eq!(o[1], sorted(srcs(&[&cust("email"), &cust("phone")])));

        // Sources travel between columns across iterations.
        let sql = "WITH RECURSIVE r(a, b, c) AS (SELECT email, '', '' FROM customers UNION ALL SELECT '', a, b FROM r) SELECT c FROM r";
        assert_eq!(outs(sql), vec![srcs(&[&cust("email")])]);
    }

    #[test]
    fn correlated_scalar_subquery() {
        let i = one("SELECT (SELECT email FROM customers WHERE id = o.customer_id) FROM orders o");
        assert_eq!(i.outputs[0].sources, srcs(&[&cust("email")]));
        assert_eq!(
            sorted(i.predicates),
            sorted(srcs(&[&cust("id"), "public.orders.customer_id"]))
        );
        assert_eq!(i.reads, vec![rel("public.orders"), rel(C)]);
    }

    #[test]
    fn exists_and_in_go_to_predicates() {
        let i = one(
            "SELECT id FROM orders o WHERE EXISTS (SELECT card_number FROM customers c WHERE c.id = o.customer_id)",
        );
        assert_eq!(i.outputs[0].sources, srcs(&["public.orders.id"]));
        assert!(i.predicates.contains(&src(&cust("card_number"))));
        let i = one("SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE national_id = $1)");
        assert!(i.predicates.contains(&src(&cust("national_id"))));
        assert!(i.predicates.contains(&src(&cust("id"))));
    }

    #[test]
    fn set_operations() {
        let i = one("SELECT status FROM orders UNION SELECT email FROM customers");
        assert_eq!(i.outputs.len(), 1);
        assert_eq!(i.outputs[0].name, "status");
        assert_eq!(
            i.outputs[0].sources,
            srcs(&["public.orders.status", &cust("email")])
        );
        let o = outs("SELECT id, status FROM orders INTERSECT SELECT id, phone FROM customers EXCEPT SELECT 1, 'x'");
        assert_eq!(
            o[1],
            sorted(srcs(&["public.orders.status", &cust("phone")]))
        );
        assert!(one("VALUES (1, 'a'), (2, 'b')").outputs_known);
    }

    #[test]
    fn star_expansion_and_joins() {
        let i = one("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id");
        assert!(i.outputs_known);
        let names: Vec<&str> = i.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "id",
                "full_name",
                "email",
                "phone",
                "card_number",
                "national_id",
                "notes",
                "id",
                "customer_id",
                "amount",
                "status"
            ]
        );
        assert_eq!(i.outputs[2].sources, srcs(&[&cust("email")]));
        assert_eq!(i.outputs[7].sources, srcs(&["public.orders.id"]));
        assert_eq!(
            sorted(i.predicates),
            sorted(srcs(&["public.orders.customer_id", &cust("id")]))
        );

        let i =
            one("SELECT o.*, c.email FROM orders o LEFT JOIN customers c ON c.id = o.customer_id");
        assert_eq!(i.outputs.len(), 5);
        assert_eq!(i.outputs[4].sources, srcs(&[&cust("email")]));

        // Ambiguous-looking unqualified names resolve by the catalog.
        let o = outs("SELECT email, amount FROM customers, orders");
        assert_eq!(
            o,
            vec![srcs(&[&cust("email")]), srcs(&["public.orders.amount"])]
        );

        // USING: the join column once, from both sides.
        let i = one("SELECT * FROM customers JOIN customer_contacts USING (email)");
        assert_eq!(i.outputs[0].name, "email");
        assert_eq!(
            sorted(i.outputs[0].sources.clone()),
            sorted(srcs(&[&cust("email"), "public.customer_contacts.email"]))
        );
        assert_eq!(i.outputs.len(), 1 + 6 + 3);
        let o = outs("SELECT email FROM customers JOIN customer_contacts USING (email)");
        assert_eq!(
            o[0],
            sorted(srcs(&[&cust("email"), "public.customer_contacts.email"]))
        );

        // NATURAL: common columns id, full_name, email, phone.
        let i = one("SELECT * FROM customers NATURAL JOIN customer_contacts");
        assert_eq!(i.outputs.len(), 4 + 3);
        assert_eq!(
            sorted(i.outputs[3].sources.clone()),
            sorted(srcs(&[&cust("phone"), "public.customer_contacts.phone"]))
        );
    }

    #[test]
    fn unknown_relations_fail_closed() {
        let i = one("SELECT * FROM pg_stats");
        assert_eq!(i.reads, vec![rel("pg_catalog.pg_stats")]);
        assert!(!i.outputs_known);
        assert_eq!(i.outputs[0].name, "*");
        assert_eq!(i.outputs[0].sources, srcs(&["pg_catalog.pg_stats.*"]));

        let i = one("SELECT x.* FROM mystery x");
        assert_eq!(i.outputs[0].sources, srcs(&["mystery.*"]));
        assert!(!i.outputs_known);

        // An unqualified name that could be in either relation.
        let o = outs("SELECT secret FROM mystery, orders");
        assert_eq!(o[0], srcs(&["mystery.secret"]));
        let o = outs("SELECT secret FROM mystery a, other b");
        assert_eq!(o[0], sorted(srcs(&["mystery.secret", "other.secret"])));

        // An unknown table function.
        let i = one("SELECT * FROM dblink('x', 'select 1') AS t(a text)");
        assert_eq!(i.outputs[0].sources, vec![Source::Unknown]);
        assert!(i.functions.contains(&"dblink".to_string()));

        // A known one: rows come from the arguments only.
        let o = outs("SELECT g FROM customers c, generate_series(1, c.id) AS g");
        assert_eq!(o[0], srcs(&[&cust("id")]));
        let o = outs("SELECT u FROM customers c, unnest(ARRAY[c.email]) AS u");
        assert_eq!(o[0], srcs(&[&cust("email")]));

        // A name no relation is known to have: the catalog may be stale.
        assert_eq!(
            outs("SELECT nosuch FROM customers"),
            vec![srcs(&[&cust("nosuch")])]
        );
        assert_eq!(outs("SELECT nosuch"), vec![vec![Source::Unknown]]);
    }

    #[test]
    fn names_are_folded() {
        let i = one("SELECT \"EMAIL\" FROM Customers");
        assert_eq!(i.outputs[0].name, "EMAIL");
        assert_eq!(i.outputs[0].sources, srcs(&["public.customers.EMAIL"]));
        assert_eq!(i.reads, vec![rel(C)]);
        let i = one("SELECT EMAIL FROM CUSTOMERS");
        assert_eq!(i.outputs[0].name, "email");
        let i = one("SELECT * FROM \"Customers\"");
        assert_eq!(i.reads, vec![rel("Customers")]);
        let i = one("SELECT pg_catalog.PG_READ_FILE('x')");
        assert_eq!(i.functions, vec!["pg_catalog.pg_read_file".to_string()]);
    }

    #[test]
    fn views_are_not_expanded() {
        let i = one("SELECT email FROM customer_contacts");
        assert_eq!(
            i.outputs[0].sources,
            srcs(&["public.customer_contacts.email"])
        );
        assert_eq!(i.reads, vec![rel("public.customer_contacts")]);
    }

    #[test]
    fn functions_are_listed() {
        let i = one("SELECT pg_read_file('/etc/passwd')");
        assert_eq!(i.functions, vec!["pg_read_file".to_string()]);
        assert_eq!(i.outputs[0].sources, vec![]);
        let i = one("SELECT id FROM customers WHERE id IN (SELECT lo_import('/x'))");
        assert!(i.functions.contains(&"lo_import".to_string()));
        let i = one("SELECT * FROM generate_series(1, 3)");
        assert!(i.functions.contains(&"generate_series".to_string()));
    }

    #[test]
    fn writes_and_moves() {
        let i = one("CREATE TABLE t AS SELECT email FROM customers");
        assert_eq!(i.kind, "CREATE TABLE AS");
        assert_eq!(i.writes, vec![rel("t")]);
        assert_eq!(i.moved, srcs(&[&cust("email")]));
        assert_eq!(i.reads, vec![rel(C)]);

        let i = one("SELECT email INTO newtable FROM customers");
        assert_eq!(i.kind, "SELECT INTO");
        assert_eq!(i.class, Class::Write);
        assert_eq!(i.writes, vec![rel("newtable")]);
        assert_eq!(i.moved, srcs(&[&cust("email")]));

        let i = one("INSERT INTO t SELECT email FROM customers");
        assert_eq!(i.kind, "INSERT");
        assert_eq!(i.class, Class::Write);
        assert_eq!(i.writes, vec![rel("t")]);
        assert_eq!(i.moved, srcs(&[&cust("email")]));

        let i = one("INSERT INTO orders (id, status) VALUES ($1, 'x') RETURNING id, status");
        assert_eq!(i.moved, vec![]);
        assert_eq!(
            i.outputs
                .iter()
                .map(|o| o.sources.clone())
                .collect::<Vec<_>>(),
            vec![srcs(&["public.orders.id"]), srcs(&["public.orders.status"])]
        );

        let i = one("INSERT INTO orders (id, status) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET status = excluded.status || (SELECT email FROM customers LIMIT 1) RETURNING *");
        assert!(i.moved.contains(&src(&cust("email"))));
        assert_eq!(i.outputs.len(), 4);

        let i = one(
            "UPDATE orders SET status = c.email FROM customers c WHERE c.id = orders.customer_id",
        );
        assert_eq!(i.kind, "UPDATE");
        assert_eq!(i.writes, vec![rel("public.orders")]);
        assert_eq!(i.moved, srcs(&[&cust("email")]));
        assert!(!i.unbounded_write);
        assert_eq!(i.reads, vec![rel(C)]);

        let i = one("UPDATE customers SET notes = card_number, phone = phone || '' WHERE id = 1 RETURNING email");
        assert_eq!(i.moved, srcs(&[&cust("card_number")]));
        assert_eq!(i.outputs[0].sources, srcs(&[&cust("email")]));

        let i = one("DELETE FROM orders");
        assert!(i.unbounded_write);
        assert_eq!(i.kind, "DELETE");
        assert_eq!(i.writes, vec![rel("public.orders")]);
        let i = one("UPDATE orders SET status = 'x'");
        assert!(i.unbounded_write);
        let i = one("DELETE FROM orders o USING customers c WHERE c.id = o.customer_id AND c.email = $1 RETURNING o.*");
        assert!(!i.unbounded_write);
        assert_eq!(i.outputs.len(), 4);
        assert!(i.predicates.contains(&src(&cust("email"))));

        let i = one("MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET status = c.email WHEN NOT MATCHED THEN INSERT (id, status) VALUES (c.id, c.phone)");
        assert_eq!(i.kind, "MERGE");
        assert_eq!(i.writes, vec![rel("public.orders")]);
        assert_eq!(
            sorted(i.moved),
            sorted(srcs(&[&cust("email"), &cust("id"), &cust("phone")]))
        );

        let i = one("CREATE VIEW v AS SELECT email FROM customers");
        assert_eq!(i.kind, "CREATE VIEW");
        assert_eq!(i.class, Class::Ddl);
        assert_eq!(i.moved, srcs(&[&cust("email")]));
        let i = one("CREATE MATERIALIZED VIEW v AS SELECT phone FROM customers");
        assert_eq!(i.kind, "CREATE MATERIALIZED VIEW");
        assert_eq!(i.moved, srcs(&[&cust("phone")]));

        let i = one("WITH d AS (DELETE FROM orders RETURNING status) SELECT * FROM d");
        assert_eq!(i.class, Class::Write);
        assert_eq!(i.writes, vec![rel("public.orders")]);
        assert_eq!(i.outputs[0].sources, srcs(&["public.orders.status"]));

        let i = one("TRUNCATE orders, customers");
        assert_eq!(i.class, Class::Write);
        assert_eq!(i.writes, vec![rel("public.orders"), rel(C)]);
    }

    #[test]
    fn copy() {
        let i = one("COPY (SELECT email FROM customers) TO '/tmp/x'");
        assert_eq!(i.class, Class::Copy);
        assert_eq!(i.copy_to_stdout, Some(false));
        assert_eq!(i.moved, srcs(&[&cust("email")]));

        let i = one("COPY customers TO STDOUT");
        assert_eq!(i.copy_to_stdout, Some(true));
        assert_eq!(i.reads, vec![rel(C)]);
        assert_eq!(i.outputs.len(), 7);
        assert!(i.moved.is_empty());

        let i = one("COPY customers (email) TO PROGRAM 'gzip > /tmp/x'");
        assert_eq!(i.copy_to_stdout, Some(false));
        assert_eq!(i.moved, srcs(&[&cust("email")]));

        let i = one("COPY orders FROM STDIN");
        assert_eq!(i.class, Class::Copy);
        assert_eq!(i.writes, vec![rel("public.orders")]);
        assert_eq!(i.copy_from_stdin, Some(true));
        assert_eq!(i.copy_to_stdout, None);
        let i = one("COPY orders FROM PROGRAM 'cat /etc/passwd'");
        assert_eq!(i.copy_from_stdin, Some(false));
    }

    #[test]
    fn do_blocks_are_opaque() {
        for sql in [
            "DO $$ BEGIN END $$",
            "  /* x */ -- y\n do language plpgsql $f$ BEGIN PERFORM 1; END $f$;",
            "DO 'BEGIN END'",
        ] {
            let i = one(sql);
            assert_eq!(i.kind, "DO");
            assert_eq!(i.class, Class::Admin);
            assert!(i.opaque);
        }
        let v = analyze(
            "SELECT 1; DO $$ BEGIN END $$; SELECT email FROM customers",
            &TestSchema,
        )
        .expect("analyzes");
        let kinds: Vec<&str> = v.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["SELECT", "DO", "SELECT"]);
        assert_eq!(v[2].outputs[0].sources, srcs(&[&cust("email")]));
    }

    #[test]
    fn prepare_execute_declare_fetch() {
        let v = analyze(
            "PREPARE p AS SELECT email FROM customers; EXECUTE p",
            &TestSchema,
        )
        .expect("analyzes");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].kind, "PREPARE");
        assert_eq!(v[0].class, Class::Session);
        assert_eq!(v[0].inner_class, Some(Class::Read));
        assert_eq!(v[0].name.as_deref(), Some("p"));
        assert!(v[0].outputs_known);
        assert_eq!(v[0].outputs[0].sources, srcs(&[&cust("email")]));
        assert_eq!(v[0].reads, vec![rel(C)]);
        assert_eq!(v[1].kind, "EXECUTE");
        assert_eq!(v[1].class, Class::Read);
        assert!(!v[1].outputs_known);
        assert!(v[1].outputs.is_empty());
        assert_eq!(v[1].name.as_deref(), Some("p"));

        let i = one("DECLARE c CURSOR FOR SELECT phone FROM customers");
        assert_eq!(i.kind, "DECLARE");
        assert_eq!(i.class, Class::Read);
        assert_eq!(i.name.as_deref(), Some("c"));
        assert_eq!(i.outputs[0].sources, srcs(&[&cust("phone")]));

        let i = one("FETCH 10 FROM c");
        assert_eq!(i.kind, "FETCH");
        assert!(!i.outputs_known);
        assert_eq!(i.name.as_deref(), Some("c"));
    }

    #[test]
    fn classes() {
        let cases = [
            ("SELECT 1", Class::Read, "SELECT"),
            ("SHOW search_path", Class::Read, "SHOW"),
            (
                "EXPLAIN SELECT email FROM customers",
                Class::Read,
                "EXPLAIN",
            ),
            (
                "EXPLAIN ANALYZE DELETE FROM orders",
                Class::Write,
                "EXPLAIN",
            ),
            ("CREATE TABLE t (a int)", Class::Ddl, "CREATE TABLE"),
            (
                "ALTER TABLE orders ADD COLUMN x int",
                Class::Ddl,
                "ALTER TABLE",
            ),
            ("DROP TABLE orders", Class::Ddl, "DROP"),
            (
                "CREATE INDEX ON orders (status)",
                Class::Ddl,
                "CREATE INDEX",
            ),
            ("COMMENT ON TABLE orders IS 'x'", Class::Ddl, "COMMENT"),
            ("SET search_path = public", Class::Session, "SET"),
            ("SET ROLE admin", Class::Session, "SET ROLE"),
            ("RESET ALL", Class::Session, "RESET"),
            ("DISCARD ALL", Class::Session, "DISCARD"),
            ("DEALLOCATE p", Class::Session, "DEALLOCATE"),
            ("LISTEN ch", Class::Session, "LISTEN"),
            ("NOTIFY ch", Class::Session, "NOTIFY"),
            ("CLOSE c", Class::Session, "CLOSE"),
            ("BEGIN", Class::Transaction, "BEGIN"),
            ("START TRANSACTION", Class::Transaction, "START TRANSACTION"),
            ("COMMIT", Class::Transaction, "COMMIT"),
            ("ROLLBACK", Class::Transaction, "ROLLBACK"),
            ("SAVEPOINT s", Class::Transaction, "SAVEPOINT"),
            ("RELEASE SAVEPOINT s", Class::Transaction, "RELEASE"),
            ("GRANT SELECT ON orders TO bob", Class::Admin, "GRANT"),
            ("REVOKE SELECT ON orders FROM bob", Class::Admin, "REVOKE"),
            ("CREATE ROLE bob", Class::Admin, "CREATE ROLE"),
            ("DROP ROLE bob", Class::Admin, "DROP ROLE"),
            ("VACUUM orders", Class::Admin, "VACUUM"),
            ("CREATE EXTENSION dblink", Class::Admin, "CREATE EXTENSION"),
        ];
        for (sql, class, kind) in cases {
            let i = one(sql);
            assert_eq!((i.class, i.kind), (class, kind), "{sql}");
        }
        let i = one("EXPLAIN DELETE FROM orders");
        assert_eq!(i.class, Class::Read);
        assert!(i.writes.is_empty());
        assert_eq!(i.inner_class, Some(Class::Write));
        let i = one("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$");
        assert_eq!(i.kind, "CREATE FUNCTION");
        assert!(i.opaque);
        assert_eq!(Class::Transaction.as_str(), "transaction");
    }

    #[test]
    fn parse_errors_carry_no_sql() {
        for sql in [
            "SELEKT secret_value FROM customers",
            "SELECT 'unterminated secret_value",
            "SELECT * FROM customers WHERE secret_value = ",
        ] {
            let e = analyze(sql, &TestSchema).expect_err(sql);
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("secret_value"), "{shown}");
            assert!(!shown.contains("customers"), "{shown}");
            assert!(matches!(e, AnalyzeError::Parse(_)), "{shown}");
        }
        assert_eq!(analyze("", &TestSchema), Ok(vec![]));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(analyze(&sql, &TestSchema), Err(AnalyzeError::TooDeep));
        let sql = format!("SELECT {}", "NOT ".repeat(5000));
        assert!(analyze(&sql, &TestSchema).is_err());
        let sql = "SELECT * FROM (".repeat(300) + "SELECT 1" + &") s".repeat(300);
        assert!(analyze(&sql, &TestSchema).is_err());
        // Long flat operator chains are fine up to the limit, refused after.
        let sql = format!("SELECT 1{}", " + 1".repeat(3000));
        assert!(analyze(&sql, &TestSchema).is_ok());
        let sql = format!("SELECT 1{}", " + 1".repeat(100_000));
        assert_eq!(analyze(&sql, &TestSchema), Err(AnalyzeError::TooComplex));
        // Moderate nesting still works.
        let sql = format!(
            "SELECT {}email{} FROM customers",
            "lower(".repeat(40),
            ")".repeat(40)
        );
        assert_eq!(outs(&sql), vec![srcs(&[&cust("email")])]);
    }

    #[test]
    fn adversarial_shapes_fit_a_small_stack() {
        // Tokio workers and test threads get 2 MiB; the analyzer must fit.
        let inputs: Vec<String> = vec![
            format!("SELECT {}1{}", "(".repeat(199), ")".repeat(199)),
            format!("SELECT {}1{}", "lower(".repeat(199), ")".repeat(199)),
            format!("SELECT {}1", "- ".repeat(3000)),
            format!("SELECT 1{}", "::int".repeat(3000)),
            format!("SELECT 1{}", "::int".repeat(390)),
            format!("SELECT true{}", " IN (true)".repeat(390)),
            format!("SELECT now(){}", " AT TIME ZONE 'utc'".repeat(1000)),
            format!("SELECT 'a'{}", " LIKE 'b'".repeat(1000)),
            format!("SELECT 1{}", " BETWEEN 1 AND 2".repeat(1000)),
            format!("SELECT {}1", "NOT ".repeat(190)),
            format!("SELECT 1{}", "::int".repeat(200)),
            format!("SELECT 1{}", "::int".repeat(1000)),
            format!("SELECT {}1{}", "ARRAY[".repeat(300), "]".repeat(300)),
            "SELECT * FROM (".repeat(199) + "SELECT 1" + &") s".repeat(199),
            "SELECT ".to_string() + &"(SELECT ".repeat(150) + "1" + &")".repeat(150),
            format!("SELECT 1 WHERE {}", vec!["a = 1"; 1900].join(" OR ")),
            format!("SELECT {}", vec!["email"; 20_000].join(" || ")),
            format!("SELECT {}", vec!["$1"; 50_000].join(", ")),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                inputs
                    .iter()
                    .map(|sql| analyze(sql, &TestSchema).map(|v| v.len()))
                    .collect::<Vec<_>>()
            })
            .expect("thread starts");
        let results = handle.join().expect("no stack overflow or panic");
        // Chains the parser builds iteratively are analyzed; deep nesting
        // and oversized chains are refused.
        for i in [3, 4, 5, 6, 7, 8, 9, 10, 11, 15, 17] {
            assert!(results[i].is_ok(), "{i}: {:?}", results[i]);
        }
        for i in [0, 1, 2, 12, 13, 14] {
            assert_eq!(results[i], Err(AnalyzeError::TooDeep), "{i}");
        }
        assert_eq!(results[16], Err(AnalyzeError::TooComplex));
    }

    #[test]
    fn lateral_and_composites() {
        let o = outs("SELECT s.x FROM customers c, LATERAL (SELECT c.email AS x) s");
        assert_eq!(o, vec![srcs(&[&cust("email")])]);
        let o = outs("SELECT (c).email FROM customers c");
        assert_eq!(o, vec![srcs(&["public.customers.*"])]);
        let o = outs("SELECT x.e FROM (SELECT * FROM (SELECT email AS e FROM customers) a) x");
        assert_eq!(o, vec![srcs(&[&cust("email")])]);
        let i = one("SELECT * FROM (SELECT * FROM mystery) x");
        assert!(!i.outputs_known);
        assert_eq!(i.outputs[0].sources, srcs(&["mystery.*"]));
        let o = outs("SELECT x.anything FROM (SELECT * FROM mystery) x");
        assert_eq!(o, vec![srcs(&["mystery.*"])]);
    }

    #[test]
    fn nested_recursive_ctes_are_bounded() {
        let mut q = "SELECT 1".to_string();
        for i in 0..12 {
            q = format!("WITH RECURSIVE r{i}(n) AS (SELECT 1 UNION ALL SELECT n FROM r{i}, ({q}) s) SELECT n FROM r{i}");
        }
        // Either an answer or a refusal; never a hang or a crash.
        let _ = analyze(&q, &TestSchema);
    }

    const FRAGMENTS: &[&str] = &[
        "SELECT",
        "*",
        "email",
        "c.*",
        "FROM",
        "customers",
        "c",
        "orders",
        "o",
        "WHERE",
        "JOIN",
        "ON",
        "USING",
        "(",
        ")",
        ",",
        ";",
        "=",
        "||",
        "::text",
        "$1",
        "'x'",
        "E'\\''",
        "$$a$$",
        "WITH",
        "RECURSIVE",
        "AS",
        "UNION",
        "ALL",
        "VALUES",
        "INSERT",
        "INTO",
        "UPDATE",
        "SET",
        "DELETE",
        "RETURNING",
        "COPY",
        "TO",
        "STDOUT",
        "DO",
        "PREPARE",
        "EXECUTE",
        "LATERAL",
        "row_to_json(c)",
        "count(*)",
        "OVER",
        "PARTITION",
        "BY",
        "ORDER",
        "GROUP",
        "/*",
        "*/",
        "--",
        "\n",
        "NATURAL",
        "EXISTS",
        "IN",
        "CASE",
        "WHEN",
        "THEN",
        "END",
        "\"Q\"",
        "1",
        "generate_series(1,2)",
        "LIMIT",
        "DECLARE",
        "CURSOR",
        "FOR",
        "FETCH",
        "MERGE",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,200}") {
            let _ = analyze(&s, &TestSchema);
        }

        #[test]
        fn never_panics_on_fragments(idx in proptest::collection::vec(0..FRAGMENTS.len(), 0..40)) {
            let sql: Vec<&str> = idx.iter().map(|i| FRAGMENTS[*i]).collect();
            let _ = analyze(&sql.join(" "), &TestSchema);
        }
    }
}
