//! The decision point before a statement is forwarded.
//!
//! Every Query and every Parse passes through [`Policy::decide`] before the
//! server sees it. For an identity that neither a policy rule nor a masking
//! rule concerns, nothing is parsed and the statement is forwarded. For the
//! others, the statement is parsed and analyzed (`analyze`, cached by its
//! text), the policy rules (`rules`) are applied in order, and for an
//! identity that masking rules cover, the masking defaults: statements that
//! would carry a covered value past the masking are refused.
//!
//! Limits: a server-side function that reads covered columns inside its
//! own body (a view-like SQL function, a PL/pgSQL function) is opaque to a
//! gateway: pgveil sees only its name and its result. Deny such functions
//! by name in a policy rule, or keep them out of reach with database
//! grants.

pub mod analyze;
pub mod fingerprint;
pub mod rules;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::mask::lineage::source_cover;
use crate::mask::SessionMask;
use crate::session::Identity;
use crate::wire::sqlstate::{self, SqlState};
use analyze::{AnalyzeError, StatementInfo};
use rules::{Action, PolicySet};

/// Statement texts kept in the analysis cache; it is emptied when full.
const CACHE_ENTRIES: usize = 4096;
/// Longest statement text that is cached.
const CACHE_MAX_TEXT: usize = 64 * 1024;

/// Server catalogs that hold copies of column values (statistics).
const LEAKY_CATALOGS: [&str; 6] = [
    "pg_stats",
    "pg_statistic",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic_ext_data",
    "pg_stat_statements",
];

/// Functions that read files, large objects or other databases, or run
/// SQL given to them as text, out of pgveil's sight.
const LEAKY_FUNCTIONS: [&str; 21] = [
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_file_*",
    "lo_*",
    "loread",
    "lowrite",
    "dblink*",
    "query_to_xml*",
    "cursor_to_xml*",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "ts_stat",
    "pg_logical_slot_*",
    "pg_logical_emit_message",
    "pg_import_system_collations",
];

/// Why a statement is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SQLSTATE the client gets: 42501 for every rule; pgveil's own
    /// conditions (an audit spool that cannot be written) have their own.
    pub code: SqlState,
    /// Name of the rule that refused it.
    pub rule: String,
    /// Message for the client: what was refused and what to do.
    pub message: String,
}

/// What happens to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Allow {
        /// The statement's analysis, when it was analyzed (masking uses
        /// its lineage).
        analysis: Option<Arc<[StatementInfo]>>,
        /// In dry-run mode: the refusal that enforcement would have made.
        would_refuse: Option<Refusal>,
    },
    /// Answer with 42501 instead of forwarding it.
    Refuse(Refusal),
}

impl Decision {
    fn allow(analysis: Option<Arc<[StatementInfo]>>) -> Self {
        Self::Allow {
            analysis,
            would_refuse: None,
        }
    }
}

type Analyzed = Result<Arc<[StatementInfo]>, AnalyzeError>;

/// The statement policy in force.
#[derive(Debug, Default)]
pub struct Policy {
    dir: Option<PathBuf>,
    rules: RwLock<Arc<PolicySet>>,
    enforce: bool,
    mask_enforce: bool,
    /// Analyses by statement text, each with the generation of the catalog
    /// it was made against (`*` expands from the catalog).
    cache: Mutex<HashMap<String, (u64, Analyzed)>>,
    #[cfg(test)]
    refuse_containing: Option<String>,
}

impl Policy {
    /// A policy with no rules: everything is allowed (masking defaults
    /// still apply when masking is configured).
    pub fn allow_all() -> Self {
        Self {
            enforce: true,
            mask_enforce: true,
            ..Self::default()
        }
    }

    /// Loads the policy rules of `dir` (if any). `enforce` false is the
    /// dry-run mode of the policy rules; `mask_enforce` that of the masking
    /// defaults.
    pub fn load(
        dir: Option<&Path>,
        enforce: bool,
        mask_enforce: bool,
    ) -> Result<Self, crate::mask::rules::RuleError> {
        let set = match dir {
            Some(d) => PolicySet::load_dir(d)?,
            None => PolicySet::default(),
        };
        Ok(Self {
            dir: dir.map(Path::to_owned),
            rules: RwLock::new(Arc::new(set)),
            enforce,
            mask_enforce,
            ..Self::default()
        })
    }

    /// The policy rule directory, when configured.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<PolicySet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the rule directory again; on error the old rules stay.
    pub fn reload(&self) -> Result<usize, crate::mask::rules::RuleError> {
        let Some(dir) = &self.dir else { return Ok(0) };
        let set = PolicySet::load_dir(dir)?;
        let count = set.rules.len();
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(count)
    }

    /// Decides one statement text (a whole Query string or a Parse).
    /// `want_analysis` asks for the analysis even where no rule needs it
    /// (the audit archive records classes and relations).
    pub fn decide(
        &self,
        identity: &Identity,
        sql: &[u8],
        mask: Option<&SessionMask>,
        want_analysis: bool,
    ) -> Decision {
        #[cfg(test)]
        if let Some(needle) = &self.refuse_containing {
            if sql.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Decision::Refuse(Refusal {
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    rule: "test".into(),
                    message: format!("statements containing {needle:?} are refused"),
                });
            }
        }
        let groups = &identity.groups;
        let set = self.rules();
        let masked = mask
            .map(|m| m.snapshot())
            .filter(|(r, _)| r.covers_any(groups));
        if !set.applies_to(groups) && masked.is_none() && !want_analysis {
            return Decision::allow(None);
        }
        let catalog = masked.as_ref().map(|(_, c)| c.clone()).unwrap_or_default();
        let analyzed = std::str::from_utf8(sql)
            .map_err(|_| AnalyzeError::Parse("not valid UTF-8".into()))
            .and_then(|sql| self.analyze(sql, &catalog));
        let parsed = analyzed.as_ref().ok();
        if let Some(m) = set.first_match(groups, parsed.map(|a| &a[..])) {
            let refusal = match m.rule.action {
                // An allowed unparsed statement is passed through as it is.
                Action::Allow if parsed.is_none() => return Decision::allow(None),
                Action::Allow => None,
                Action::Refuse => Some(Refusal {
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    rule: m.rule.name.clone(),
                    message: with_extra(
                        format!("{} are not allowed for you", m.reason),
                        m.rule.message.as_deref(),
                    ),
                }),
                Action::Review => Some(Refusal {
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    rule: m.rule.name.clone(),
                    message: with_extra(
                        format!(
                            "{} need approval, and this version of pgveil cannot hold \
                             statements for approval, so it refuses them",
                            m.reason
                        ),
                        m.rule.message.as_deref(),
                    ),
                }),
            };
            if let Some(refusal) = refusal {
                return self.enforced(refusal, self.enforce, analyzed.ok());
            }
        }
        let Some((rules, catalog)) = masked else {
            return Decision::allow(analyzed.ok());
        };
        let refusal = match &analyzed {
            Err(e) => Some(Refusal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                rule: "masking-default:unparsed".into(),
                message: format!(
                    "pgveil could not analyze this statement ({e}), and identities that \
                     masking rules cover may run only statements it can analyze"
                ),
            }),
            Ok(_) if changes_string_syntax(sql) => Some(Refusal {
                code: sqlstate::INSUFFICIENT_PRIVILEGE,
                rule: "masking-default:string-syntax".into(),
                message: "standard_conforming_strings may not be changed by identities that \
                          masking rules cover: pgveil reads statements with it on"
                    .into(),
            }),
            Ok(stmts) => masking_defaults(stmts, &rules, &catalog, groups),
        };
        match refusal {
            Some(r) => self.enforced(r, self.mask_enforce, analyzed.ok()),
            None => Decision::allow(analyzed.ok()),
        }
    }

    /// A refusal, or in dry-run mode an allowance that records it.
    fn enforced(
        &self,
        refusal: Refusal,
        enforce: bool,
        analysis: Option<Arc<[StatementInfo]>>,
    ) -> Decision {
        if enforce {
            return Decision::Refuse(refusal);
        }
        tracing::warn!(rule = %refusal.rule, "dry run: the statement would have been refused");
        Decision::Allow {
            analysis,
            would_refuse: Some(refusal),
        }
    }

    /// The analysis of `sql` against `catalog`, from the cache when it is
    /// there for this catalog. The cache is keyed by the statement's
    /// fingerprint: statements that differ only in literals share an entry.
    fn analyze(&self, sql: &str, catalog: &crate::mask::catalog::Catalog) -> Analyzed {
        let generation = catalog.generation();
        let key = (sql.len() <= CACHE_MAX_TEXT)
            .then(|| fingerprint::fingerprint(sql))
            .flatten();
        if let Some(key) = &key {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((g, hit)) = cache.get(key) {
                if *g == generation {
                    return hit.clone();
                }
            }
        }
        let analyzed: Analyzed = analyze::analyze(sql, catalog).map(Arc::from);
        if let Some(key) = key {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (generation, analyzed.clone()));
        }
        analyzed
    }

    /// A policy for the relay's own tests that refuses any statement
    /// containing `needle`.
    #[cfg(test)]
    pub fn refusing(needle: &str) -> Self {
        Self {
            refuse_containing: Some(needle.to_owned()),
            ..Self::allow_all()
        }
    }
}

fn with_extra(message: String, extra: Option<&str>) -> String {
    match extra {
        Some(extra) => format!("{message}. {extra}"),
        None => message,
    }
}

/// The masking defaults for an identity that masking rules cover: refuse
/// what would carry a covered value past the masking.
fn masking_defaults(
    stmts: &[StatementInfo],
    rules: &crate::mask::rules::RuleSet,
    catalog: &crate::mask::catalog::Catalog,
    groups: &[String],
) -> Option<Refusal> {
    let refuse = |rule: &str, message: String| {
        Some(Refusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            rule: format!("masking-default:{rule}"),
            message,
        })
    };
    let cover = |s| source_cover(s, rules, catalog, groups);
    for s in stmts {
        if s.opaque || matches!(s.kind, "CREATE FUNCTION" | "CREATE PROCEDURE") {
            return refuse(
                "opaque-code",
                format!(
                    "{} runs code that pgveil cannot inspect, which identities that masking \
                     rules cover may not do",
                    s.kind
                ),
            );
        }
        if let Some(rel) = s
            .reads
            .iter()
            .find(|r| LEAKY_CATALOGS.contains(&r.name.as_str()))
        {
            return refuse(
                "catalog",
                format!(
                    "{} holds copies of column values, which masking cannot cover",
                    rules::display_rel(rel)
                ),
            );
        }
        if let Some(f) = s.functions.iter().find(|f| leaky_function(f)) {
            return refuse(
                "function",
                format!(
                    "{f} reads data out of pgveil's sight (files, large objects, other \
                     databases, or SQL given as text)"
                ),
            );
        }
        if let Some(c) = s.moved.iter().find_map(cover) {
            return refuse(
                "copies-covered-data",
                format!(
                    "{} would copy values that masking rule \"{}\" covers to where masking \
                     does not apply",
                    s.kind,
                    c.name()
                ),
            );
        }
        if let Some(c) = s
            .predicates
            .iter()
            .filter_map(cover)
            .find(|c| !c.allows_predicates())
        {
            return refuse(
                "predicate",
                format!(
                    "filtering, joining, grouping or ordering on values that masking rule \
                     \"{}\" covers would reveal them",
                    c.name()
                ),
            );
        }
    }
    None
}

/// Whether a statement could turn off `standard_conforming_strings`, under
/// which the server would read `\'` in a string differently from pgveil's
/// parser. Any statement that names it is taken as doing so, except SHOW.
fn changes_string_syntax(sql: &[u8]) -> bool {
    const NAME: &[u8] = b"standard_conforming_strings";
    let names_it = sql
        .windows(NAME.len())
        .any(|w| w.eq_ignore_ascii_case(NAME));
    let show = sql
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(4)
        .copied()
        .collect::<Vec<u8>>()
        .eq_ignore_ascii_case(b"show");
    names_it && !show
}

/// Whether startup parameters set `standard_conforming_strings` (as a
/// parameter of its own, or inside `options`): refused for identities that
/// masking covers, for the reason [`changes_string_syntax`] gives.
pub fn startup_changes_string_syntax(params: &[(String, String)]) -> bool {
    params
        .iter()
        .any(|(k, v)| changes_string_syntax(k.as_bytes()) || changes_string_syntax(v.as_bytes()))
}

fn leaky_function(f: &str) -> bool {
    let bare = f.rsplit('.').next().unwrap_or(f);
    LEAKY_FUNCTIONS
        .iter()
        .filter_map(|p| rules::Glob::new(p).ok())
        .any(|g| g.matches(f) || g.matches(bare))
}
