//! Micro-benchmarks of inline masking: the DataRow rewrite of a result plan
//! and each masking function on one value.
//!
//! `cargo bench --bench masking` (about a minute and a half). Every
//! benchmark runs twice, once reporting rows (or values) per second and once
//! bytes per second, because criterion prints one throughput unit per
//! benchmark. Bytes are those of the input as the server sent it: the
//! DataRow bodies, or the values alone.
//!
//! Rows and values come in batches of `BATCH`, with varied contents, so that
//! one measured iteration is long enough to time and the branch predictor
//! does not see one value over and over.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{Criterion, Throughput};
use pgveil::mask::catalog::{Catalog, Row};
use pgveil::mask::plan::{split_data_row, Field, Plan};
use pgveil::mask::rules::RuleSet;
use pgveil::mask::value::{mask_value, oid, Format, MaskFn};

/// Rows or values per measured iteration.
const BATCH: usize = 1000;

/// Environment variable the hash rules read their key from.
const KEY_ENV: &str = "PGVEIL_BENCH_MASK_KEY";

/// OID of the benchmark's table in the fake catalog.
const TABLE: u32 = 16_401;

/// Rules of the five-column row: what a covered analyst sees.
const ROW_RULES: &str = r#"
[[rule]]
name = "email-hash"
columns = ["public.customers.email"]
function = "hash"
key_env = "PGVEIL_BENCH_MASK_KEY"
only_groups = ["analysts"]

[[rule]]
name = "name-partial"
columns = ["customers.full_name"]
function = "partial"
first = 1
only_groups = ["analysts"]

[[rule]]
name = "ssn-redact"
columns = ["customers.ssn"]
function = "redact"
only_groups = ["analysts"]
"#;

/// One rule per masking function, in the order of the benchmark groups;
/// parsed by the rule loader so the functions are built as in production.
const FUNCTION_RULES: &str = r##"
[[rule]]
name = "redact"
column_pattern = "^redact$"
function = "redact"

[[rule]]
name = "null"
column_pattern = "^null$"
function = "null"

[[rule]]
name = "partial"
column_pattern = "^partial$"
function = "partial"
first = 1
last = 2

[[rule]]
name = "email"
column_pattern = "^email$"
function = "email"

[[rule]]
name = "hash"
column_pattern = "^hash$"
function = "hash"
key_env = "PGVEIL_BENCH_MASK_KEY"

[[rule]]
name = "fixed"
column_pattern = "^fixed$"
function = "fixed"
value = "hidden"

[[rule]]
name = "replace"
column_pattern = "^replace$"
function = "replace"
pattern = "[0-9]"
replacement = "#"

[[rule]]
name = "truncate"
column_pattern = "^truncate$"
function = "truncate"
part = "month"

[[rule]]
name = "round"
column_pattern = "^round$"
function = "round"
digits = 1

[[rule]]
name = "bucket"
column_pattern = "^bucket$"
function = "bucket"
width = 1000
"##;

const FIRST: [&str; 8] = ["Ada", "Ben", "Cleo", "Dev", "Elena", "Femi", "Gus", "Hana"];
const LAST: [&str; 7] = [
    "Abbott", "Baker", "Carter", "Dalton", "Ellis", "Fischer", "Grant",
];

fn main() {
    // Before criterion or anything else can start a thread: the rule loader
    // reads the hash key from the environment.
    std::env::set_var(KEY_ENV, "bench-only-key-not-a-secret-0123");

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();
    bench_rows(&mut c);
    bench_functions(&mut c);
    c.final_summary();
}

/// Text form of one benchmark row: id, email, full_name, ssn, created_at.
fn row_text(i: usize) -> [String; 5] {
    let (f, l) = (FIRST[i % FIRST.len()], LAST[(i / 3) % LAST.len()]);
    [
        (i + 1).to_string(),
        format!("{}.{}.{i}@example.com", f.to_lowercase(), l.to_lowercase()),
        format!("{f} {l}"),
        format!(
            "{:03}-{:02}-{:04}",
            1 + i % 665,
            1 + i % 99,
            1 + (i * 7919) % 9999
        ),
        format!(
            "2024-{:02}-{:02} {:02}:17:42.{:06}+00",
            1 + i % 12,
            1 + i % 28,
            i % 24,
            i
        ),
    ]
}

/// The same row in binary format.
fn row_binary(i: usize) -> Vec<Vec<u8>> {
    let [_, email, name, ssn, _] = row_text(i);
    let id = i32::try_from(i + 1).expect("row id fits int4");
    // timestamptz: microseconds since 2000-01-01 UTC, about 24 years later.
    let micros = 757_382_400_000_000_i64 + i64::try_from(i).expect("small") * 61_000_123;
    vec![
        id.to_be_bytes().to_vec(),
        email.into_bytes(),
        name.into_bytes(),
        ssn.into_bytes(),
        micros.to_be_bytes().to_vec(),
    ]
}

/// A DataRow body: value count, then each value with its length.
fn data_row<V: AsRef<[u8]>>(values: &[V]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(values.len()).expect("few columns"));
    for v in values {
        let v = v.as_ref();
        b.put_i32(i32::try_from(v.len()).expect("small value"));
        b.put_slice(v);
    }
    b.to_vec()
}

fn fields(format: i16) -> Vec<Field> {
    let cols = [
        ("id", oid::INT4),
        ("email", oid::TEXT),
        ("full_name", oid::TEXT),
        ("ssn", oid::TEXT),
        ("created_at", oid::TIMESTAMPTZ),
    ];
    cols.iter()
        .zip(1..)
        .map(|((name, type_oid), attnum)| Field {
            name: name.as_bytes().to_vec(),
            table_oid: TABLE,
            attnum,
            type_oid: *type_oid,
            format,
        })
        .collect()
}

fn catalog() -> Catalog {
    let columns: Vec<Row> = fields(0)
        .iter()
        .map(|f| {
            let name = String::from_utf8(f.name.clone()).expect("ASCII name");
            [
                TABLE.to_string(),
                f.attnum.to_string(),
                "public".into(),
                "customers".into(),
                name,
                "r".into(),
                f.type_oid.to_string(),
            ]
            .into_iter()
            .map(Some)
            .collect()
        })
        .collect();
    Catalog::from_rows(&columns, &[]).expect("catalog rows are well formed")
}

fn rules(text: &str) -> RuleSet {
    let mut set = RuleSet::default();
    set.add_file(Path::new("bench.toml"), text)
        .expect("benchmark rules load");
    set
}

/// Runs `f` over the batch under both throughput units.
fn twice<F: FnMut()>(c: &mut Criterion, group: &str, rows: u64, bytes: u64, mut f: F) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(rows));
    g.bench_function("rows", |b| b.iter(&mut f));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("bytes", |b| b.iter(&mut f));
    g.finish();
}

fn bench_rows(c: &mut Criterion) {
    let rules = rules(ROW_RULES);
    let catalog = catalog();
    let analyst = ["analysts".to_owned()];
    for (label, format) in [("text", 0_i16), ("binary", 1)] {
        let bodies: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| match format {
                0 => data_row(&row_text(i)),
                _ => data_row(&row_binary(i)),
            })
            .collect();
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        let fields = fields(format);
        let masked = Plan::build(&fields, &rules, &catalog, &analyst);
        assert_eq!(
            masked.masked.len(),
            3,
            "email, full_name and ssn are masked"
        );
        // Same rows for an identity no rule covers: the cost of splitting
        // and re-framing alone, the floor under the masked figure.
        let clear = Plan::build(&fields, &rules, &catalog, &[]);
        assert!(!clear.masks());
        check_masked(&masked, &bodies[0]);

        let mut out = BytesMut::with_capacity(bytes * 2);
        for (name, plan) in [("masked", &masked), ("unmasked", &clear)] {
            twice(
                c,
                &format!("datarow_{label}/{name}"),
                BATCH as u64,
                bytes as u64,
                || {
                    out.clear();
                    for body in &bodies {
                        plan.rewrite(black_box(body), &mut out)
                            .expect("row matches the plan");
                    }
                    black_box(&out);
                },
            );
        }
        twice(
            c,
            &format!("datarow_{label}/split_only"),
            BATCH as u64,
            bytes as u64,
            || {
                for body in &bodies {
                    black_box(split_data_row(black_box(body)).expect("well-formed row"));
                }
            },
        );
    }
}

/// The masked row keeps id and created_at and changes the three others.
fn check_masked(plan: &Plan, body: &[u8]) {
    let mut out = BytesMut::new();
    plan.rewrite(body, &mut out).expect("row matches the plan");
    // Message header: tag byte and length.
    let after = split_data_row(&out[5..]).expect("rewritten row is well formed");
    let before = split_data_row(body).expect("well-formed row");
    assert_eq!(after[0], before[0]);
    assert_eq!(after[4], before[4]);
    for i in 1..4 {
        assert_ne!(after[i], before[i], "column {i} is masked");
    }
}

fn bench_functions(c: &mut Criterion) {
    let set = rules(FUNCTION_RULES);
    for rule in &set.rules {
        let (type_oid, values) = function_input(&rule.name);
        let f: &MaskFn = &rule.function;
        // Every value must give a masked result (NULL only for `null`), so
        // the figures are not those of a parse failure.
        for v in &values {
            let out = mask_value(f, type_oid, Format::Text, v);
            assert_eq!(out.is_none(), rule.name == "null", "{}: {v:?}", rule.name);
        }
        let bytes: usize = values.iter().map(Vec::len).sum();
        twice(
            c,
            &format!("mask_value/{}", rule.name),
            values.len() as u64,
            bytes as u64,
            || {
                for v in &values {
                    black_box(mask_value(f, type_oid, Format::Text, black_box(v)));
                }
            },
        );
    }
}

/// A representative column type and a batch of text values for a function.
fn function_input(function: &str) -> (u32, Vec<Vec<u8>>) {
    let text = |col: usize| -> Vec<Vec<u8>> {
        (0..BATCH)
            .map(|i| row_text(i)[col].clone().into_bytes())
            .collect()
    };
    let numeric = || -> Vec<Vec<u8>> {
        (0..BATCH)
            .map(|i| format!("{}.{:02}", (i * 7919) % 250_000, i % 100).into_bytes())
            .collect()
    };
    match function {
        "redact" | "null" | "replace" => (oid::TEXT, text(3)),
        "partial" => (oid::TEXT, text(2)),
        "email" | "hash" | "fixed" => (oid::TEXT, text(1)),
        "truncate" => (oid::TIMESTAMPTZ, text(4)),
        "round" | "bucket" => (oid::NUMERIC, numeric()),
        other => panic!("no input for function {other}"),
    }
}
