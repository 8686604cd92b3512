//! Compaction of spool segments into Parquet, and the two archive schemas.
//!
//! The schemas live here only: [`SESSION_COLUMNS`] and
//! [`STATEMENT_COLUMNS`] give each column's name, type and meaning, build
//! the Arrow schemas, and render the Markdown table that README shows
//! ([`schema_markdown`]). Types are chosen for DuckDB, Spark and Trino:
//! strings are Utf8, lists are List<Utf8>, times are Timestamp(µs, UTC), and
//! counters are Int64 (Spark has no unsigned integers; values above
//! `i64::MAX` are clamped).
//!
//! Files go to `<archive>/<table>/date=YYYY-MM-DD/` (the UTC date of
//! `started_at`), named `<UTC time>-<instance>-<segment id>.parquet` so that
//! names are unique per instance and sort by time. The name derives from the
//! segment, so compacting the same segment again (after a crash between
//! publishing and deleting it) replaces the file instead of duplicating rows.
//! Each file is written under a hidden `.tmp-` name, fsynced, renamed and
//! its directory fsynced.
//!
//! Limits: a segment's rows are held in memory while it is compacted (the
//! segment size limits bound that).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use uuid::Uuid;

use super::record::{Entry, SessionRecord, StatementRecord};
use super::spool::{sync_dir, Finish};
use super::AuditError;

/// Directory (and table name) of session rows.
pub const SESSIONS_TABLE: &str = "sessions";
/// Directory (and table name) of statement rows.
pub const STATEMENTS_TABLE: &str = "statements";
/// Prefix of files being written; DuckDB's `*.parquet` glob skips them.
pub const TMP_PREFIX: &str = ".tmp-";
/// ZSTD level: a good ratio at little CPU for text-heavy rows.
const ZSTD_LEVEL: i32 = 3;
/// Timezone of every timestamp column.
const UTC: &str = "UTC";

/// The type of an archive column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Utf8.
    String,
    /// Int64.
    Int64,
    /// Timestamp(Microsecond, "UTC").
    Timestamp,
    /// List<Utf8>.
    StringList,
}

impl ColumnType {
    fn arrow(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Int64 => DataType::Int64,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            Self::StringList => DataType::List(Arc::new(list_item())),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int64 => "int64",
            Self::Timestamp => "timestamp (µs, UTC)",
            Self::StringList => "list of string",
        }
    }
}

fn list_item() -> Field {
    Field::new("item", DataType::Utf8, true)
}

/// One column of an archive table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Column name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may be null.
    pub nullable: bool,
    /// What it holds, for README.
    pub meaning: &'static str,
}

const fn col(name: &'static str, ty: ColumnType, nullable: bool, meaning: &'static str) -> Column {
    Column {
        name,
        ty,
        nullable,
        meaning,
    }
}

use ColumnType::{Int64 as I64, String as Str, StringList as List, Timestamp as Ts};

/// Columns of `sessions`, one row per connection attempt.
pub const SESSION_COLUMNS: &[Column] = &[
    col("session_id", Str, false, "UUIDv7 of the session"),
    col("instance", Str, false, "gateway instance that carried it"),
    col("started_at", Ts, false, "when the client connected"),
    col(
        "ended_at",
        Ts,
        false,
        "when it ended (for gateway_restart: last time seen)",
    ),
    col("client_addr", Str, false, "client address, ip:port"),
    col("tls_version", Str, true, "TLS version towards the client"),
    col("auth_method", Str, false, "trust or oidc"),
    col("issuer", Str, true, "token issuer"),
    col("subject", Str, true, "token subject"),
    col("user_name", Str, false, "user name as proven"),
    col("groups", List, false, "groups of the identity"),
    col("server_role", Str, true, "role pgveil logged in as"),
    col("database", Str, true, "database on the server"),
    col(
        "application_name",
        Str,
        true,
        "the client's application_name",
    ),
    col("outcome", Str, false, "established or refused"),
    col("refusal_reason", Str, true, "why the attempt was refused"),
    col("statements", I64, false, "statements recorded"),
    col(
        "bytes_from_client",
        I64,
        false,
        "bytes received from the client",
    ),
    col("bytes_to_client", I64, false, "bytes sent to the client"),
    col(
        "end_reason",
        Str,
        false,
        "terminate, client_closed, refused, gateway_restart, ...",
    ),
];

/// Columns of `statements`, one row per statement.
pub const STATEMENT_COLUMNS: &[Column] = &[
    col("session_id", Str, false, "UUIDv7 of the session"),
    col("seq", I64, false, "position in the session, from 1"),
    col("user_name", Str, false, "user name of the session"),
    col("groups", List, false, "groups of the session's identity"),
    col("started_at", Ts, false, "when it was forwarded"),
    col(
        "duration_us",
        I64,
        false,
        "microseconds from forwarding to completion",
    ),
    col("protocol", Str, false, "query, execute or function_call"),
    col(
        "fingerprint",
        Str,
        true,
        "16 hex digits naming the text with literals replaced by ?",
    ),
    col(
        "text",
        Str,
        true,
        "text with literals replaced by ? (or as statement_text says)",
    ),
    col(
        "parameters",
        List,
        true,
        "sizes of the bind parameters, with parameters = redacted",
    ),
    col(
        "class",
        Str,
        true,
        "read, write, ddl, copy, session, transaction, admin",
    ),
    col(
        "relations",
        List,
        false,
        "relations it reads or writes, schema.name",
    ),
    col("functions", List, false, "functions it calls"),
    col(
        "decision",
        Str,
        false,
        "allowed, masked, refused, held, approved, would_refuse",
    ),
    col("rules", List, false, "rules that decided it"),
    col(
        "masked_columns",
        List,
        false,
        "result columns masked, as column(rule)",
    ),
    col("rows", I64, false, "rows returned or affected"),
    col(
        "bytes_sent",
        I64,
        false,
        "bytes of the server's answer sent on",
    ),
    col("sqlstate", Str, true, "SQLSTATE if it failed"),
    col(
        "error_message",
        Str,
        true,
        "error message, quoted parts replaced by ?",
    ),
];

fn schema(columns: &[Column]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// The Arrow schema of `sessions`.
pub fn sessions_schema() -> SchemaRef {
    schema(SESSION_COLUMNS)
}

/// The Arrow schema of `statements`.
pub fn statements_schema() -> SchemaRef {
    schema(STATEMENT_COLUMNS)
}

/// Both schemas as Markdown tables (name, type, meaning), for README.
pub fn schema_markdown() -> String {
    let mut out = String::new();
    for (table, columns) in [
        (SESSIONS_TABLE, SESSION_COLUMNS),
        (STATEMENTS_TABLE, STATEMENT_COLUMNS),
    ] {
        out.push_str(&format!(
            "### `{table}`\n\n| name | type | meaning |\n| --- | --- | --- |\n"
        ));
        for c in columns {
            let null = if c.nullable { ", nullable" } else { "" };
            out.push_str(&format!(
                "| `{}` | {}{null} | {} |\n",
                c.name,
                c.ty.describe(),
                c.meaning
            ));
        }
        out.push('\n');
    }
    out
}

/// One cell, before it is appended to its column.
enum Value<'a> {
    Str(Option<&'a str>),
    Int(u64),
    Ts(i64),
    List(Option<&'a [String]>),
}

fn session_values(r: &SessionRecord) -> Vec<Value<'_>> {
    use Value::*;
    vec![
        Str(None), // session_id, filled from the formatted id
        Str(Some(&r.instance)),
        Ts(r.started_at),
        Ts(r.ended_at),
        Str(Some(&r.client_addr)),
        Str(r.tls_version.as_deref()),
        Str(Some(&r.auth_method)),
        Str(r.issuer.as_deref()),
        Str(r.subject.as_deref()),
        Str(Some(&r.user_name)),
        List(Some(&r.groups)),
        Str(r.server_role.as_deref()),
        Str(r.database.as_deref()),
        Str(r.application_name.as_deref()),
        Str(Some(r.outcome.as_str())),
        Str(r.refusal_reason.as_deref()),
        Int(r.statements),
        Int(r.bytes_from_client),
        Int(r.bytes_to_client),
        Str(Some(&r.end_reason)),
    ]
}

fn statement_values(r: &StatementRecord) -> Vec<Value<'_>> {
    use Value::*;
    vec![
        Str(None), // session_id, filled from the formatted id
        Int(r.seq),
        Str(Some(&r.user_name)),
        List(Some(&r.groups)),
        Ts(r.started_at),
        Int(r.duration_us),
        Str(Some(r.protocol.as_str())),
        Str(r.fingerprint.as_deref()),
        Str(r.text.as_deref()),
        List(r.parameters.as_deref()),
        Str(r.class.as_deref()),
        List(Some(&r.relations)),
        List(Some(&r.functions)),
        Str(Some(r.decision.as_str())),
        List(Some(&r.rules)),
        List(Some(&r.masked_columns)),
        Int(r.rows),
        Int(r.bytes_sent),
        Str(r.sqlstate.as_deref()),
        Str(r.error_message.as_deref()),
    ]
}

enum Builder {
    Str(StringBuilder),
    Int(Int64Builder),
    Ts(TimestampMicrosecondBuilder),
    List(ListBuilder<StringBuilder>),
}

impl Builder {
    fn new(ty: ColumnType, capacity: usize) -> Self {
        match ty {
            ColumnType::String => Self::Str(StringBuilder::with_capacity(capacity, capacity * 16)),
            ColumnType::Int64 => Self::Int(Int64Builder::with_capacity(capacity)),
            ColumnType::Timestamp => {
                Self::Ts(TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(UTC))
            }
            ColumnType::StringList => {
                Self::List(ListBuilder::new(StringBuilder::new()).with_field(list_item()))
            }
        }
    }

    fn append(&mut self, value: Value<'_>) -> Result<(), ArrowError> {
        match (self, value) {
            (Self::Str(b), Value::Str(v)) => b.append_option(v),
            (Self::Int(b), Value::Int(v)) => b.append_value(i64::try_from(v).unwrap_or(i64::MAX)),
            (Self::Ts(b), Value::Ts(v)) => b.append_value(v),
            (Self::List(b), Value::List(Some(items))) => {
                for item in items {
                    b.values().append_value(item);
                }
                b.append(true);
            }
            (Self::List(b), Value::List(None)) => b.append(false),
            _ => {
                return Err(ArrowError::SchemaError(
                    "value does not fit its column".into(),
                ))
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Ts(b) => Arc::new(b.finish()),
            Self::List(b) => Arc::new(b.finish()),
        }
    }
}

fn batch<'a, R: 'a>(
    schema: SchemaRef,
    columns: &[Column],
    rows: &'a [R],
    values: impl Fn(&'a R) -> (Uuid, Vec<Value<'a>>),
) -> Result<RecordBatch, ArrowError> {
    let mut builders: Vec<Builder> = columns
        .iter()
        .map(|c| Builder::new(c.ty, rows.len()))
        .collect();
    let mut id = String::with_capacity(36);
    for row in rows {
        let (session_id, cells) = values(row);
        if cells.len() != builders.len() {
            return Err(ArrowError::SchemaError(
                "row does not fit the schema".into(),
            ));
        }
        id.clear();
        id.push_str(
            session_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
        );
        for (i, (builder, cell)) in builders.iter_mut().zip(cells).enumerate() {
            let cell = if i == 0 { Value::Str(Some(&id)) } else { cell };
            builder.append(cell)?;
        }
    }
    let arrays = builders.iter_mut().map(Builder::finish).collect();
    RecordBatch::try_new(schema, arrays)
}

/// `sessions` rows as one Arrow batch.
pub fn sessions_batch(rows: &[SessionRecord]) -> Result<RecordBatch, ArrowError> {
    batch(sessions_schema(), SESSION_COLUMNS, rows, |r| {
        (r.session_id, session_values(r))
    })
}

/// `statements` rows as one Arrow batch.
pub fn statements_batch(rows: &[StatementRecord]) -> Result<RecordBatch, ArrowError> {
    batch(statements_schema(), STATEMENT_COLUMNS, rows, |r| {
        (r.session_id, statement_values(r))
    })
}

/// Rows that a segment contributes.
#[derive(Debug, Default)]
pub struct Rows {
    /// Sessions that closed (or were ended by a [`Finish`]).
    pub sessions: Vec<SessionRecord>,
    /// Statements, without duplicates of one `(session_id, seq)`.
    pub statements: Vec<StatementRecord>,
}

/// Session state folded over one or more segments in order.
#[derive(Debug, Default)]
pub struct Fold {
    open: HashMap<Uuid, SessionRecord>,
    last_seen: i64,
}

impl Fold {
    /// Takes the entries of the next segment and returns its rows.
    pub fn apply(&mut self, entries: Vec<Entry>) -> Rows {
        let mut rows = Rows::default();
        let mut seen = HashSet::new();
        for entry in entries {
            self.last_seen = self.last_seen.max(entry.latest_time());
            match entry {
                Entry::SessionOpened(s) => {
                    self.open.insert(s.session_id, s);
                }
                Entry::SessionClosed(s) => {
                    self.open.remove(&s.session_id);
                    rows.sessions.push(s);
                }
                Entry::Statement(s) => {
                    if let Some(open) = self.open.get_mut(&s.session_id) {
                        note_statement(open, &s);
                    }
                    if seen.insert((s.session_id, s.seq)) {
                        rows.statements.push(s);
                    }
                }
            }
        }
        rows
    }

    /// Ends every session still open; `ended_at` of `None` means the last
    /// time any entry was seen.
    pub fn finish(&mut self, end_reason: &str, ended_at: Option<i64>) -> Vec<SessionRecord> {
        let ended_at = ended_at.unwrap_or(self.last_seen);
        let mut ended: Vec<_> = self.open.drain().map(|(_, s)| s).collect();
        ended.sort_by_key(|s| (s.started_at, s.session_id));
        for s in &mut ended {
            s.ended_at = ended_at.max(s.started_at);
            s.end_reason = end_reason.to_owned();
        }
        ended
    }
}

/// Counts a statement into its open session's totals, so that a session
/// ended by restart or shutdown still shows what it did.
pub fn note_statement(session: &mut SessionRecord, statement: &StatementRecord) {
    session.statements += 1;
    session.bytes_to_client = session.bytes_to_client.saturating_add(statement.bytes_sent);
}

/// Where and how Parquet files are written.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// `<dir>/archive`.
    pub root: PathBuf,
    /// Instance name in file names.
    pub instance: String,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Directory of upload markers, when uploads are configured: a marker
    /// is made before a file appears, so that no file escapes upload.
    pub upload_markers: Option<PathBuf>,
}

impl Publisher {
    /// Writes `rows` as files named after `segment`; returns the paths of
    /// the files published.
    pub fn publish(&self, segment: Uuid, rows: &Rows) -> Result<Vec<PathBuf>, AuditError> {
        let stem = self.file_stem(segment);
        let mut published = Vec::new();
        for (date, part) in by_date(&rows.sessions, |s| s.started_at) {
            let batch = sessions_batch(&part).map_err(|e| self.arrow_error(&date, e))?;
            published.push(self.write(SESSIONS_TABLE, &date, &stem, &batch)?);
        }
        for (date, part) in by_date(&rows.statements, |s| s.started_at) {
            let batch = statements_batch(&part).map_err(|e| self.arrow_error(&date, e))?;
            published.push(self.write(STATEMENTS_TABLE, &date, &stem, &batch)?);
        }
        Ok(published)
    }

    fn arrow_error(&self, date: &str, e: ArrowError) -> AuditError {
        AuditError::Parquet {
            path: self.root.join(date),
            message: e.to_string(),
        }
    }

    /// `<UTC time of the segment>-<instance>-<segment id>`.
    fn file_stem(&self, segment: Uuid) -> String {
        let millis = segment.get_timestamp().map_or(0, |t| {
            let (secs, nanos) = t.to_unix();
            i64::try_from(secs).unwrap_or(0) * 1000 + i64::from(nanos / 1_000_000)
        });
        let time = chrono::DateTime::from_timestamp_millis(millis)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%S%.3fZ");
        format!("{time}-{}-{}", self.instance, segment.simple())
    }

    fn write(
        &self,
        table: &str,
        date: &str,
        stem: &str,
        batch: &RecordBatch,
    ) -> Result<PathBuf, AuditError> {
        let dir = self.root.join(table).join(format!("date={date}"));
        std::fs::create_dir_all(&dir).map_err(|e| AuditError::io("creating", &dir, e))?;
        let name = format!("{stem}.parquet");
        let tmp = dir.join(format!("{TMP_PREFIX}{name}"));
        let path = dir.join(&name);
        let result = self.write_file(&tmp, batch).and_then(|()| {
            if let Some(markers) = &self.upload_markers {
                let rel = format!("{table}/date={date}/{name}");
                super::upload::make_marker(markers, &rel)?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| AuditError::io("renaming", &tmp, e))?;
            sync_dir(&dir).map_err(|e| AuditError::io("syncing", &dir, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| path)
    }

    fn write_file(&self, tmp: &Path, batch: &RecordBatch) -> Result<(), AuditError> {
        let parquet_error = |e: parquet::errors::ParquetError| AuditError::Parquet {
            path: tmp.to_owned(),
            message: e.to_string(),
        };
        let file = File::create(tmp).map_err(|e| AuditError::io("creating", tmp, e))?;
        let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(parquet_error)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_created_by(format!("pgveil {}", env!("CARGO_PKG_VERSION")))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(parquet_error)?;
        writer.write(batch).map_err(parquet_error)?;
        let file = writer.into_inner().map_err(parquet_error)?;
        file.sync_all()
            .map_err(|e| AuditError::io("syncing", tmp, e))
    }
}

/// Rows grouped by the UTC date (`YYYY-MM-DD`) of their start.
fn by_date<R: Clone>(rows: &[R], time: impl Fn(&R) -> i64) -> BTreeMap<String, Vec<R>> {
    let mut out: BTreeMap<String, Vec<R>> = BTreeMap::new();
    for row in rows {
        let date = chrono::DateTime::from_timestamp_micros(time(row))
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        out.entry(date).or_default().push(row.clone());
    }
    out
}

/// Applies a [`Finish`] to a fold: the rows of sessions it ends.
pub fn finish_rows(fold: &mut Fold, finish: Finish) -> Vec<SessionRecord> {
    fold.finish(finish.end_reason, Some(finish.ended_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_lists_every_column_of_both_tables() {
        let md = schema_markdown();
        let (sessions, statements) = md.split_once("### `statements`").unwrap();
        for (columns, schema, section) in [
            (SESSION_COLUMNS, sessions_schema(), sessions),
            (STATEMENT_COLUMNS, statements_schema(), statements),
        ] {
            assert_eq!(columns.len(), schema.fields().len());
            for c in columns {
                let row = section
                    .lines()
                    .find(|l| l.starts_with(&format!("| `{}` |", c.name)))
                    .unwrap_or_else(|| panic!("{} missing", c.name));
                assert!(row.contains(c.meaning), "{row}");
            }
        }
        let rows = md.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, SESSION_COLUMNS.len() + STATEMENT_COLUMNS.len());
    }

    #[test]
    fn readme_documents_both_tables_as_they_are() {
        let readme = include_str!("../../README.md");
        let md = schema_markdown();
        if !readme.contains(&md) {
            panic!("README.md must hold the archive schema exactly as:\n{md}");
        }
    }

    #[test]
    fn record_fields_match_the_columns() {
        // A record's serde fields and the table's columns name the same
        // things, so that a field added to one is not forgotten in the other.
        let id = Uuid::now_v7();
        for (json, columns) in [
            (
                serde_json::to_value(crate::audit::record::tests::session(id, 0)).unwrap(),
                SESSION_COLUMNS,
            ),
            (
                serde_json::to_value(crate::audit::record::tests::statement(id, 1, 0)).unwrap(),
                STATEMENT_COLUMNS,
            ),
        ] {
            let mut fields: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
            let mut names: Vec<_> = columns.iter().map(|c| c.name.to_owned()).collect();
            fields.sort();
            names.sort();
            assert_eq!(fields, names);
        }
    }
}
