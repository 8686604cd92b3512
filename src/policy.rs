//! The decision point before a statement is forwarded.
//!
//! Every Query and every Parse passes through [`Policy::decide`] before the
//! server sees it. This version holds no rules: every statement is allowed,
//! and the relay's refusal path (an ErrorResponse in order, discard until
//! Sync in the extended protocol) is exercised by its unit tests. Statement
//! parsing, lineage and rule files plug in here.

use crate::session::Identity;

/// What happens to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Allow,
    /// Answer with 42501 instead of forwarding it.
    Refuse {
        /// Name of the rule that refused it.
        rule: String,
        /// Message for the client: what was refused and what to do.
        message: String,
    },
}

/// The statement policy in force.
#[derive(Debug, Default)]
pub struct Policy {
    #[cfg(test)]
    refuse_containing: Option<String>,
}

impl Policy {
    /// A policy with no rules: everything is allowed.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Decides one statement text (a whole Query string or a Parse).
    pub fn decide(&self, _identity: &Identity, _sql: &[u8]) -> Decision {
        #[cfg(test)]
        if let Some(needle) = &self.refuse_containing {
            if _sql.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Decision::Refuse {
                    rule: "test".into(),
                    message: format!("statements containing {needle:?} are refused"),
                };
            }
        }
        Decision::Allow
    }

    /// A policy for the relay's own tests that refuses any statement
    /// containing `needle`.
    #[cfg(test)]
    pub fn refusing(needle: &str) -> Self {
        Self {
            refuse_containing: Some(needle.to_owned()),
        }
    }
}
