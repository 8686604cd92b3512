//! Inline masking of result rows.
//!
//! Data teams write rules (`rules`); pgveil reads each database's catalog
//! (`catalog`) to learn where result columns come from; each result of a
//! covered identity gets a plan (`plan`) that rewrites the values a rule
//! covers with a masking function (`value`) or a value detector (`detect`).
//!
//! The rule set and the catalogs are shared, read-mostly snapshots: a
//! reload swaps an `Arc`, and a session picks up the new snapshot at its
//! next result. A reload that fails keeps the rules in force.
//!
//! A result column that is an expression (OID 0 in its RowDescription, such
//! as `lower(email)`) is traced through the statement's lineage, which the
//! policy's analysis provides (see [`lineage`]).
//!
//! Limits of this version: binary COPY TO STDOUT is refused for covered
//! identities (text and CSV are masked: see [`copy`]).

pub mod catalog;
pub mod copy;
pub mod detect;
pub mod fixtures;
pub mod lineage;
pub mod lint;
pub mod plan;
pub mod rules;
pub mod value;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::auth::Login;
use crate::backend::ServerTarget;
use crate::policy::analyze::{Output, Source};
use catalog::{Catalog, CatalogError};
use plan::{Field, Plan};
use rules::{RuleError, RuleSet};

/// Time a catalog read may take before it counts as failed.
const CATALOG_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the rule directory is checked for changes.
pub const RULES_POLL: Duration = Duration::from_secs(2);

/// Names, sizes and modification times of a directory's rule files: what
/// changes when a file is edited, added or removed.
pub fn dir_signature(dir: &Path) -> Vec<(PathBuf, u64, Option<std::time::SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sig: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    sig.sort();
    sig
}

/// The masking state of the gateway, shared by all sessions.
#[derive(Debug)]
pub struct Masking {
    dir: PathBuf,
    rules: RwLock<Arc<RuleSet>>,
    catalogs: Mutex<HashMap<String, (Arc<Catalog>, Instant)>>,
    refresh: Duration,
    enforce: bool,
}

impl Masking {
    /// Loads the rule directory; any bad file is an error.
    pub fn load(dir: &Path, refresh: Duration, enforce: bool) -> Result<Self, RuleError> {
        let rules = RuleSet::load_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            rules: RwLock::new(Arc::new(rules)),
            catalogs: Mutex::new(HashMap::new()),
            refresh,
            enforce,
        })
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The rule directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// False in dry-run mode: plans are made and recorded, rows pass
    /// unchanged.
    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// How often catalogs are read again.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Reads the rule directory again. On error the old rules stay.
    pub fn reload(&self) -> Result<usize, RuleError> {
        let rules = RuleSet::load_dir(&self.dir)?;
        let count = rules.rules.len() + rules.detects.len();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        Ok(count)
    }

    /// The catalog of `database`, read now if it is missing or older than
    /// the refresh interval.
    pub async fn catalog(
        &self,
        database: &str,
        target: &ServerTarget,
        login: &Login,
    ) -> Result<Arc<Catalog>, CatalogError> {
        if let Some((cat, at)) = self.cached(database) {
            if at.elapsed() < self.refresh {
                return Ok(cat);
            }
        }
        self.read_catalog(database, target, login).await
    }

    /// Reads the catalog of `database` now and keeps it.
    pub async fn read_catalog(
        &self,
        database: &str,
        target: &ServerTarget,
        login: &Login,
    ) -> Result<Arc<Catalog>, CatalogError> {
        let read = async {
            let mut conn = target
                .connect(login, database, &[])
                .await
                .map_err(|e| CatalogError::Server(e.to_string()))?;
            Catalog::read(&mut conn).await
        };
        let catalog = tokio::time::timeout(CATALOG_READ_TIMEOUT, read)
            .await
            .map_err(|_| CatalogError::Server("timed out".into()))??;
        let catalog = Arc::new(catalog);
        self.catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(database.to_owned(), (catalog.clone(), Instant::now()));
        Ok(catalog)
    }

    /// Keeps `catalog` as the catalog of `database`, as a read would (for
    /// tools and benchmarks that have no server).
    pub fn insert_catalog(&self, database: &str, catalog: Catalog) {
        self.catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(database.to_owned(), (Arc::new(catalog), Instant::now()));
    }

    /// The databases whose catalogs are kept.
    pub fn databases(&self) -> Vec<String> {
        let map = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }

    fn cached(&self, database: &str) -> Option<(Arc<Catalog>, Instant)> {
        let map = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        map.get(database).cloned()
    }
}

/// Masking as one session sees it.
pub struct SessionMask<'a> {
    /// The shared state.
    pub masking: &'a Masking,
    /// Where to read the catalog again after DDL.
    pub target: &'a ServerTarget,
    /// pgveil's own login for catalog reads.
    pub login: &'a Login,
    /// The session's server database.
    pub database: String,
    /// The identity's groups.
    pub groups: Vec<String>,
}

impl SessionMask<'_> {
    /// The plan for a result with `fields`, or `None` when nothing in it
    /// is masked for this identity. `lineage` is what the statement's
    /// analysis says the columns are computed from, when it is known.
    ///
    /// Without lineage that fits the result (a FETCH or an EXECUTE of SQL
    /// level, whose rows come from elsewhere; a statement that was not
    /// analyzed), every computed column counts as untraced: for a covered
    /// identity it is redacted.
    pub fn plan(&self, fields: &[Field], lineage: Option<&[Output]>) -> Option<Arc<Plan>> {
        let (rules, catalog) = self.snapshot();
        if !rules.covers_any(&self.groups) {
            return None;
        }
        let untraced: Vec<Output>;
        let lineage = match lineage.filter(|l| l.len() == fields.len()) {
            Some(l) => l,
            None => {
                untraced = fields
                    .iter()
                    .map(|f| Output {
                        name: String::from_utf8_lossy(&f.name).into_owned(),
                        sources: vec![Source::Unknown],
                    })
                    .collect();
                &untraced
            }
        };
        let plan = Plan::with_lineage(fields, Some(lineage), &rules, &catalog, &self.groups);
        plan.masks().then(|| Arc::new(plan))
    }

    /// The rules and the session database's catalog in force now (an empty
    /// catalog if it was never read: every table is then unknown, which
    /// masks for covered identities).
    pub fn snapshot(&self) -> (Arc<RuleSet>, Arc<Catalog>) {
        let catalog = self
            .masking
            .cached(&self.database)
            .map(|(c, _)| c)
            .unwrap_or_default();
        (self.masking.rules(), catalog)
    }

    /// Whether any rule in force covers this identity.
    pub fn covered(&self) -> bool {
        self.masking.rules().covers_any(&self.groups)
    }

    /// Reads the session's catalog again (after DDL passed through).
    pub async fn refresh(&self) {
        if let Err(e) = self
            .masking
            .read_catalog(&self.database, self.target, self.login)
            .await
        {
            tracing::warn!(error = %e, "masking catalog refresh failed");
        }
    }
}
