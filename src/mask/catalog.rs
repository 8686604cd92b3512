//! The catalog map: where each column of the server's relations comes from.
//!
//! A RowDescription names a result column's table OID and column number
//! when the column is a plain reference. This module reads, with pgveil's
//! own connection, every column of every relation of one database (plain
//! tables, partitioned and foreign tables, views, materialized views) and
//! resolves views to the base columns they read, so that a rule on a base
//! column also covers every view of it.
//!
//! View resolution uses the server's dependency records (`pg_depend` of each
//! view's rewrite rule), which list the base columns a view reads but not
//! which output column each feeds. A view column is resolved to the base
//! columns of the same name that the view reads. A base column the view
//! reads under another name (renamed, or inside an expression) cannot be
//! placed, so it is attached to every column of that view: masking such a
//! view errs towards masking too much, never too little.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::ServerConn;
use crate::mask::rules::{ColumnName, TableName};
use crate::policy::analyze::{ColumnRef, RelName};
use crate::wire::{self, tag};

/// Largest message accepted from the server while reading the catalog.
const MAX_CATALOG_MESSAGE: usize = 64 << 20;
/// Bound on rounds of view-of-view resolution.
const MAX_VIEW_DEPTH: usize = 64;

const COLUMNS_SQL: &str = "SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname, c.relkind, \
     a.atttypid \
     FROM pg_catalog.pg_attribute a \
     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE a.attnum > 0 AND NOT a.attisdropped \
     AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
     AND n.nspname NOT LIKE 'pg\\_toast%'";

const VIEW_DEPS_SQL: &str = "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid \
     FROM pg_catalog.pg_rewrite r \
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
     AND d.objid = r.oid \
     WHERE d.refclassid = 'pg_catalog.pg_class'::regclass \
     AND d.refobjsubid > 0 AND d.refobjid <> r.ev_class";

/// A failure to read the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The connection failed.
    #[error("catalog read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the query or answered out of protocol.
    #[error("catalog read failed: {0}")]
    Server(String),
}

/// One column of a relation and the columns it comes from.
#[derive(Debug, Clone)]
pub struct Column {
    /// The column itself.
    pub name: ColumnName,
    /// Base columns it is resolved to (for a table column, just itself).
    pub origins: Vec<ColumnName>,
    /// Type OID.
    pub type_oid: u32,
}

/// Every column of one database, by (table OID, column number).
#[derive(Debug, Default)]
pub struct Catalog {
    columns: HashMap<(u32, i16), Column>,
    relations: HashSet<u32>,
    /// Each relation's columns by name, in column order.
    tables: HashMap<TableName, Vec<(i16, u32)>>,
    /// Distinguishes catalogs read at different times (0: never read).
    generation: u64,
}

/// The generation of the next catalog read.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Catalog {
    /// The column a RowDescription field names.
    pub fn column(&self, table_oid: u32, attnum: i16) -> Option<&Column> {
        self.columns.get(&(table_oid, attnum))
    }

    /// Whether the relation was known when the catalog was read.
    pub fn knows_relation(&self, table_oid: u32) -> bool {
        self.relations.contains(&table_oid)
    }

    /// The column a statement names (`schema.table.column`); an unqualified
    /// relation is looked up as the default search path would find it.
    pub fn column_by_name(&self, r: &ColumnRef) -> Option<&Column> {
        let table = self.table_name(&r.relation)?;
        let (oid, attnum) = self.tables.get(&table)?.iter().find_map(|(attnum, oid)| {
            let c = self.columns.get(&(*oid, *attnum))?;
            (c.name.column == r.column).then_some((*oid, *attnum))
        })?;
        self.columns.get(&(oid, attnum))
    }

    /// Every column of the relation with this OID.
    pub fn columns_of(&self, table_oid: u32) -> impl Iterator<Item = &Column> {
        self.columns
            .iter()
            .filter(move |((oid, _), _)| *oid == table_oid)
            .map(|(_, c)| c)
    }

    /// Every column of a relation, in order.
    pub fn relation_columns(&self, r: &RelName) -> Vec<&Column> {
        let Some(table) = self.table_name(r) else {
            return Vec::new();
        };
        self.tables
            .get(&table)
            .into_iter()
            .flatten()
            .filter_map(|(attnum, oid)| self.columns.get(&(*oid, *attnum)))
            .collect()
    }

    /// A relation name as the server would resolve it: schema-qualified
    /// names as they are, others in `public`, then `pg_catalog`.
    fn table_name(&self, r: &RelName) -> Option<TableName> {
        let candidates: Vec<&str> = match &r.schema {
            Some(s) => vec![s.as_str()],
            None => vec!["public", "pg_catalog"],
        };
        candidates.into_iter().find_map(|schema| {
            let t = TableName {
                schema: schema.to_owned(),
                table: r.name.clone(),
            };
            self.tables.contains_key(&t).then_some(t)
        })
    }

    /// Which read of the catalog this is: analyses made against another
    /// generation are stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every column, for the rule lint.
    pub fn columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.values()
    }

    /// Reads the catalog over an established server connection.
    pub async fn read(conn: &mut ServerConn) -> Result<Self, CatalogError> {
        let columns = simple_query(conn, COLUMNS_SQL).await?;
        let deps = simple_query(conn, VIEW_DEPS_SQL).await?;
        Self::from_rows(&columns, &deps)
    }

    /// Builds the map from the rows of the two catalog queries.
    pub fn from_rows(columns: &[Row], deps: &[Row]) -> Result<Self, CatalogError> {
        let mut catalog = Catalog {
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..Catalog::default()
        };
        let mut views: HashMap<u32, Vec<i16>> = HashMap::new();
        for row in columns {
            let [oid, attnum, schema, table, column, kind, type_oid] = row.as_slice() else {
                return Err(CatalogError::Server("unexpected catalog row".into()));
            };
            let (oid, attnum) = (parse_num::<u32>(oid)?, parse_num::<i16>(attnum)?);
            let name = ColumnName {
                schema: text(schema)?,
                table: text(table)?,
                column: text(column)?,
            };
            let is_view = matches!(kind.as_deref(), Some("v" | "m"));
            if is_view {
                views.entry(oid).or_default().push(attnum);
            }
            let origins = if is_view {
                Vec::new()
            } else {
                vec![name.clone()]
            };
            catalog.relations.insert(oid);
            let type_oid = parse_num::<u32>(type_oid)?;
            let table = TableName {
                schema: name.schema.clone(),
                table: name.table.clone(),
            };
            catalog.tables.entry(table).or_default().push((attnum, oid));
            catalog.columns.insert(
                (oid, attnum),
                Column {
                    name,
                    origins,
                    type_oid,
                },
            );
        }
        let mut reads: HashMap<u32, Vec<(u32, i16)>> = HashMap::new();
        for row in deps {
            let [view, base, attnum] = row.as_slice() else {
                return Err(CatalogError::Server("unexpected dependency row".into()));
            };
            reads
                .entry(parse_num(view)?)
                .or_default()
                .push((parse_num(base)?, parse_num(attnum)?));
        }
        catalog.resolve_views(&views, &reads);
        for cols in catalog.tables.values_mut() {
            cols.sort_unstable();
        }
        Ok(catalog)
    }

    /// Gives each view column the origins of the base columns it reads,
    /// repeating until views of views settle.
    fn resolve_views(
        &mut self,
        views: &HashMap<u32, Vec<i16>>,
        reads: &HashMap<u32, Vec<(u32, i16)>>,
    ) {
        for _ in 0..MAX_VIEW_DEPTH {
            let mut changed = false;
            for (view, attnums) in views {
                let Some(read) = reads.get(view) else {
                    continue;
                };
                for &(base, base_att) in read {
                    let Some(source) = self.columns.get(&(base, base_att)) else {
                        continue;
                    };
                    let (source_name, source_origins) =
                        (source.name.column.clone(), source.origins.clone());
                    let same_name: Vec<i16> = attnums
                        .iter()
                        .copied()
                        .filter(|a| {
                            self.columns
                                .get(&(*view, *a))
                                .is_some_and(|c| c.name.column == source_name)
                        })
                        .collect();
                    // Unplaceable: attach to every column of the view.
                    let targets = if same_name.is_empty() {
                        attnums.clone()
                    } else {
                        same_name
                    };
                    for a in targets {
                        if let Some(col) = self.columns.get_mut(&(*view, a)) {
                            for o in &source_origins {
                                if !col.origins.contains(o) {
                                    col.origins.push(o.clone());
                                    changed = true;
                                }
                            }
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }
}

impl crate::policy::analyze::Schema for Catalog {
    fn resolve(&self, name: &RelName) -> Option<RelName> {
        self.table_name(name).map(|t| RelName {
            schema: Some(t.schema),
            name: t.table,
        })
    }

    fn columns(&self, name: &RelName) -> Option<Vec<String>> {
        let cols = self.relation_columns(name);
        (!cols.is_empty()).then(|| cols.iter().map(|c| c.name.column.clone()).collect())
    }
}

/// One result row in text format; `None` is SQL NULL.
pub type Row = Vec<Option<String>>;

fn text(v: &Option<String>) -> Result<String, CatalogError> {
    v.clone()
        .ok_or_else(|| CatalogError::Server("unexpected NULL in catalog row".into()))
}

fn parse_num<T: std::str::FromStr>(v: &Option<String>) -> Result<T, CatalogError> {
    v.as_deref()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CatalogError::Server("unexpected number in catalog row".into()))
}

/// Runs one simple query and returns its rows in text format.
pub async fn simple_query(conn: &mut ServerConn, sql: &str) -> Result<Vec<Row>, CatalogError> {
    let mut out = BytesMut::new();
    wire::put_message(&mut out, tag::QUERY, |b| wire::put_cstr(b, sql.as_bytes()));
    conn.stream.write_all(&out).await?;
    conn.stream.flush().await?;
    let mut rows = Vec::new();
    let mut failure = None;
    loop {
        let frame = loop {
            match wire::next_frame(&mut conn.leftover, MAX_CATALOG_MESSAGE) {
                Ok(Some(frame)) => break frame,
                Ok(None) => {}
                Err(e) => return Err(CatalogError::Server(e.to_string())),
            }
            if conn.stream.read_buf(&mut conn.leftover).await? == 0 {
                return Err(CatalogError::Server("server closed the connection".into()));
            }
        };
        match frame.tag() {
            tag::DATA_ROW => rows.push(
                parse_text_row(frame.body())
                    .ok_or_else(|| CatalogError::Server("malformed DataRow".into()))?,
            ),
            tag::ERROR_RESPONSE => {
                let fields = wire::parse_error_fields(frame.body()).unwrap_or_default();
                failure = Some(format!("server error {}", fields.code));
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    match failure {
        Some(f) => Err(CatalogError::Server(f)),
        None => Ok(rows),
    }
}

/// Splits a DataRow body into text values.
fn parse_text_row(body: &[u8]) -> Option<Row> {
    let fields = crate::mask::plan::split_data_row(body)?;
    Some(
        fields
            .into_iter()
            .map(|f| f.map(|v| String::from_utf8_lossy(v).into_owned()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[&str]) -> Row {
        v.iter().map(|s| Some((*s).to_owned())).collect()
    }

    #[test]
    fn views_resolve_to_base_columns() {
        let columns = [
            row(&["10", "1", "public", "customers", "id", "r", "25"]),
            row(&["10", "2", "public", "customers", "email", "r", "25"]),
            // v1: SELECT id, email FROM customers
            row(&["20", "1", "public", "v1", "id", "v", "25"]),
            row(&["20", "2", "public", "v1", "email", "v", "25"]),
            // v2: SELECT id, lower(email) AS contact FROM customers
            row(&["30", "1", "public", "v2", "id", "v", "25"]),
            row(&["30", "2", "public", "v2", "contact", "v", "25"]),
            // v3: SELECT * FROM v1 (a view of a view)
            row(&["40", "1", "public", "v3", "id", "v", "25"]),
            row(&["40", "2", "public", "v3", "email", "v", "25"]),
        ];
        let deps = [
            row(&["20", "10", "1"]),
            row(&["20", "10", "2"]),
            row(&["30", "10", "1"]),
            row(&["30", "10", "2"]),
            row(&["40", "20", "1"]),
            row(&["40", "20", "2"]),
        ];
        let cat = Catalog::from_rows(&columns, &deps).unwrap();
        let origins = |oid, att| {
            let mut o: Vec<String> = cat
                .column(oid, att)
                .unwrap()
                .origins
                .iter()
                .map(ToString::to_string)
                .collect();
            o.sort();
            o
        };
        assert_eq!(origins(20, 2), ["public.customers.email"]);
        assert_eq!(origins(20, 1), ["public.customers.id"]);
        assert_eq!(origins(40, 2), ["public.customers.email"]);
        // The renamed email is attached to every column of v2.
        assert!(origins(30, 2).contains(&"public.customers.email".to_owned()));
        assert!(origins(30, 1).contains(&"public.customers.email".to_owned()));
        assert!(cat.knows_relation(30));
        assert!(!cat.knows_relation(99));
    }
}
