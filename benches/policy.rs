//! Micro-benchmarks of the statement decision: what policy costs each
//! statement on the relay's path.
//!
//! `cargo bench --bench policy`. The target is a decision for a statement
//! already in the analysis cache (what ORMs send again and again) of at most
//! 5 µs, for an identity that masking rules cover (the most work a decision
//! does: the cached analysis is checked against the rules and the catalog).

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use pgveil::auth::Login;
use pgveil::backend::ServerTarget;
use pgveil::mask::catalog::{Catalog, Row};
use pgveil::mask::{Masking, SessionMask};
use pgveil::policy::Policy;
use pgveil::session::{AuthKind, Identity};

const DB: &str = "bench";

/// The catalog of the sample schema's `customers` and `orders`.
fn catalog() -> Catalog {
    let mut rows: Vec<Row> = Vec::new();
    let customers = [
        ("id", 23),
        ("full_name", 25),
        ("email", 25),
        ("phone", 25),
        ("card_number", 25),
        ("national_id", 25),
        ("birth_date", 1082),
        ("city", 25),
        ("notes", 25),
        ("created_at", 1184),
        ("balance", 1700),
        ("is_active", 16),
        ("ip_address", 869),
        ("external_ref", 2950),
    ];
    let orders = [
        ("id", 20),
        ("customer_id", 23),
        ("ordered_at", 1184),
        ("amount", 1700),
        ("status", 25),
    ];
    for (oid, table, cols) in [
        (16_400, "customers", &customers[..]),
        (16_410, "orders", &orders[..]),
    ] {
        for (i, (name, ty)) in cols.iter().enumerate() {
            let row = [
                oid.to_string(),
                (i + 1).to_string(),
                "public".into(),
                table.into(),
                (*name).into(),
                "r".into(),
                ty.to_string(),
            ];
            rows.push(row.into_iter().map(Some).collect());
        }
    }
    Catalog::from_rows(&rows, &[]).expect("catalog")
}

fn identity(groups: &[&str]) -> Identity {
    Identity {
        user: "bench".into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        auth: AuthKind::Trust,
        issuer: None,
        subject: None,
        expires_at: None,
    }
}

fn main() {
    // Before any thread starts: the shipped rules read their hash key here.
    std::env::set_var("PGVEIL_MASK_KEY", "bench-key-0123456789abcdef");
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/masking-rules");
    let masking = Masking::load(rules.as_ref(), Duration::from_secs(60), true).expect("rules");
    masking.insert_catalog(DB, catalog());
    let target = ServerTarget::plain("127.0.0.1:1", Duration::from_secs(1));
    let login = Login {
        user: "bench".into(),
        password: None,
    };
    let mask = SessionMask {
        masking: &masking,
        target: &target,
        login: &login,
        database: DB.into(),
        groups: vec!["analysts".into()],
    };
    let policy = Policy::allow_all();
    let schema = catalog();
    let analyst = identity(&["analysts"]);
    let dba = identity(&["dba"]);
    let statements = [
        (
            "point lookup",
            "SELECT id, email, city FROM customers WHERE id = $1",
        ),
        (
            "join and aggregate",
            "SELECT c.city, count(o.id), sum(o.amount) FROM customers c \
             JOIN orders o ON o.customer_id = c.id \
             WHERE o.ordered_at >= $1 GROUP BY c.city ORDER BY 2 DESC LIMIT 10",
        ),
    ];
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    let mut group = c.benchmark_group("decide");
    for (name, sql) in statements {
        // The first decision fills the cache.
        let _ = policy.decide(&analyst, sql.as_bytes(), Some(&mask), false);
        group.bench_function(format!("cache hit, masked identity, {name}"), |b| {
            b.iter(|| {
                policy.decide(
                    black_box(&analyst),
                    black_box(sql.as_bytes()),
                    Some(&mask),
                    false,
                )
            })
        });
        group.bench_function(format!("no rules apply, {name}"), |b| {
            b.iter(|| {
                policy.decide(
                    black_box(&dba),
                    black_box(sql.as_bytes()),
                    Some(&mask),
                    false,
                )
            })
        });
        group.bench_function(format!("parse and analyze, {name}"), |b| {
            b.iter(|| pgveil::policy::analyze::analyze(black_box(sql), &schema))
        });
    }
    group.finish();
    c.final_summary();
}
