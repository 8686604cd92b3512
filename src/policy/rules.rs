//! Policy rule files: which statements a group may run.
//!
//! A policy directory holds `*.toml` files, read in file-name order, each
//! with `[[policy]]` tables. A rule applies to the identities its groups
//! say, matches a statement by any of its conditions (a rule without
//! conditions matches every statement), and has an action: allow, refuse or
//! review. The first rule that applies and matches decides; a statement no
//! rule matches is allowed, subject to the masking defaults.

use std::path::Path;

use serde::Deserialize;

use crate::mask::rules::{RuleError, Scope};
use crate::policy::analyze::{Class, RelName, StatementInfo};

/// What a rule does with a statement it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward it (and stop looking at later rules).
    Allow,
    /// Answer with 42501.
    Refuse,
    /// Hold it for just-in-time approval. Approvals do not exist in this
    /// version, so it is refused with a message that says so.
    Review,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    groups: Option<Vec<String>>,
    except_groups: Option<Vec<String>>,
    classes: Option<Vec<Class>>,
    except_classes: Option<Vec<Class>>,
    relations: Option<Vec<String>>,
    functions: Option<Vec<String>>,
    #[serde(default)]
    unbounded_writes: bool,
    #[serde(default)]
    unparsed: bool,
    action: Action,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policy: Vec<RawPolicy>,
}

/// A compiled policy rule.
#[derive(Debug)]
pub struct PolicyRule {
    /// Its name, as in the file.
    pub name: String,
    /// Who it applies to.
    pub scope: Scope,
    classes: Vec<Class>,
    except_classes: Option<Vec<Class>>,
    relations: Vec<Glob>,
    functions: Vec<Glob>,
    unbounded_writes: bool,
    unparsed: bool,
    /// What it does.
    pub action: Action,
    /// Extra text for the client.
    pub message: Option<String>,
}

/// The loaded policy rules, in order.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// The rules, in file-name order, then file order.
    pub rules: Vec<PolicyRule>,
}

/// Why a rule matched, for the client's message.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    /// The rule.
    pub rule: &'a PolicyRule,
    /// What about the statement matched.
    pub reason: String,
}

impl PolicySet {
    /// Loads every `*.toml` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, RuleError> {
        let mut set = PolicySet::default();
        for (path, text) in crate::mask::rules::read_rule_files(dir)? {
            set.add_file(&path, &text)?;
        }
        Ok(set)
    }

    /// Parses one file's text into this set.
    pub fn add_file(&mut self, path: &Path, text: &str) -> Result<(), RuleError> {
        let raw: RawFile = crate::mask::rules::parse_rule_file(path, text)?;
        for r in raw.policy {
            let name = r.name.clone();
            let invalid = |problem: String| RuleError::Invalid {
                path: path.to_owned(),
                rule: name.clone(),
                problem,
            };
            if self.rules.iter().any(|x| x.name == name) {
                return Err(invalid("another rule has the same name".into()));
            }
            let rule = compile(r).map_err(invalid)?;
            self.rules.push(rule);
        }
        Ok(())
    }

    /// Whether any rule applies to an identity with `groups`.
    pub fn applies_to(&self, groups: &[String]) -> bool {
        self.rules.iter().any(|r| r.scope.covers(groups))
    }

    /// The first rule that applies to `groups` and matches the statements
    /// (`None`: they could not be parsed).
    pub fn first_match<'a>(
        &'a self,
        groups: &[String],
        statements: Option<&[StatementInfo]>,
    ) -> Option<Matched<'a>> {
        self.rules
            .iter()
            .filter(|r| r.scope.covers(groups))
            .find_map(|rule| {
                rule.matches(statements)
                    .map(|reason| Matched { rule, reason })
            })
    }
}

impl PolicyRule {
    fn has_conditions(&self) -> bool {
        !self.classes.is_empty()
            || self.except_classes.is_some()
            || !self.relations.is_empty()
            || !self.functions.is_empty()
            || self.unbounded_writes
            || self.unparsed
    }

    /// Why the rule matches, or `None`.
    fn matches(&self, statements: Option<&[StatementInfo]>) -> Option<String> {
        let Some(statements) = statements else {
            // An unparsed statement is matched only by rules that say so or
            // that match everything: nothing else about it is known.
            return (self.unparsed || !self.has_conditions())
                .then(|| "the statement could not be parsed".to_owned());
        };
        if !self.has_conditions() {
            return Some("every statement".into());
        }
        for s in statements {
            if self.classes.contains(&s.class) {
                return Some(format!("{} statements", s.class.as_str()));
            }
            if let Some(allowed) = &self.except_classes {
                if !allowed.contains(&s.class) {
                    return Some(format!("{} statements", s.class.as_str()));
                }
            }
            if let Some(rel) = s
                .reads
                .iter()
                .chain(&s.writes)
                .find(|r| self.relations.iter().any(|g| g.matches_relation(r)))
            {
                return Some(format!("relation {}", display_rel(rel)));
            }
            if let Some(f) = s
                .functions
                .iter()
                .find(|f| self.functions.iter().any(|g| g.matches_function(f)))
            {
                return Some(format!("function {f}"));
            }
            if self.unbounded_writes && s.unbounded_write {
                return Some(format!("{} without WHERE", s.kind));
            }
        }
        None
    }
}

/// `schema.name` or `name`, as the audit trail and messages show it.
pub fn display_rel(r: &RelName) -> String {
    match &r.schema {
        Some(s) => format!("{s}.{}", r.name),
        None => r.name.clone(),
    }
}

fn compile(r: RawPolicy) -> Result<PolicyRule, String> {
    if r.name.is_empty() || r.name.len() > 100 || r.name.chars().any(char::is_control) {
        return Err("a rule name is 1 to 100 printable characters".into());
    }
    let scope = match (r.groups, r.except_groups) {
        (None, None) => Scope::Everyone,
        (Some(g), None) if g.is_empty() => return Err("`groups` is empty".into()),
        (Some(g), None) => Scope::Only(g),
        (None, Some(g)) => Scope::Except(g),
        (Some(_), Some(_)) => return Err("give `groups` or `except_groups`, not both".into()),
    };
    if r.classes.is_some() && r.except_classes.is_some() {
        return Err("give `classes` or `except_classes`, not both".into());
    }
    let globs = |v: Option<Vec<String>>| -> Result<Vec<Glob>, String> {
        v.unwrap_or_default().iter().map(|p| Glob::new(p)).collect()
    };
    Ok(PolicyRule {
        name: r.name,
        scope,
        classes: r.classes.unwrap_or_default(),
        except_classes: r.except_classes,
        relations: globs(r.relations)?,
        functions: globs(r.functions)?,
        unbounded_writes: r.unbounded_writes,
        unparsed: r.unparsed,
        action: r.action,
        message: r.message,
    })
}

/// A name pattern: `*` matches any run of characters. Names are compared
/// as PostgreSQL folds them (lower case unless quoted in the statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    /// Compiles a pattern; an empty one is an error.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let p = pattern.trim();
        if p.is_empty() {
            return Err("an empty name pattern".into());
        }
        Ok(Self(p.to_lowercase()))
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.to_lowercase().as_bytes())
    }

    /// A relation matches `schema.name` patterns; a pattern without a
    /// schema matches the name in any schema.
    fn matches_relation(&self, r: &RelName) -> bool {
        if self.0.contains('.') {
            let schema = r.schema.as_deref().unwrap_or("public");
            self.matches(&format!("{schema}.{}", r.name))
        } else {
            self.matches(&r.name)
        }
    }

    /// A function matches with or without its schema.
    fn matches_function(&self, f: &str) -> bool {
        let bare = f.rsplit('.').next().unwrap_or(f);
        self.matches(f) || self.matches(bare)
    }
}

/// Iterative `*` matching, linear in practice for rule-sized patterns.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Glob::new("lo_*").unwrap().matches("lo_export"));
        assert!(Glob::new("*stat*").unwrap().matches("pg_stats"));
        assert!(!Glob::new("hr.*").unwrap().matches("public.x"));
        let g = Glob::new("hr.*").unwrap();
        assert!(g.matches_relation(&RelName {
            schema: Some("hr".into()),
            name: "salaries".into()
        }));
        let g = Glob::new("pg_read_file").unwrap();
        assert!(g.matches_function("pg_catalog.pg_read_file"));
    }

    #[test]
    fn bad_policies_name_file_and_rule() {
        let mut set = PolicySet::default();
        let err = set
            .add_file(
                Path::new("p/ro.toml"),
                "[[policy]]\nname = \"ro\"\nclasses = [\"read\"]\nexcept_classes = [\"read\"]\naction = \"refuse\"\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p/ro.toml") && err.contains("rule \"ro\"") && err.contains("not both")
        );
        let err = set
            .add_file(
                Path::new("p/x.toml"),
                "[[policy]]\nname = \"x\"\naction = \"deny\"\n",
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("p/x.toml") && err.contains("deny"), "{err}");
    }
}
