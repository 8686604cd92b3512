//! OIDC token verification: trusted issuers, their keys, and the checks a
//! token must pass before its identity is believed.
//!
//! Each issuer's discovery document and key set (JWKS) are fetched over
//! HTTPS at start and kept in memory. Keys are fetched again on an interval,
//! and when a token names a key id that is not known yet (rate-limited, so a
//! stream of junk tokens cannot make pgveil hammer the provider). A provider
//! that is unreachable at start is retried in the background; one that goes
//! down later does not stop tokens signed with keys already fetched.
//!
//! A token passes when its signature verifies with a published asymmetric
//! key of its issuer, under the algorithm that key allows (never the header
//! alone: `none` and HMAC are refused outright); `iss` is exactly a trusted
//! issuer; `aud` holds an accepted audience; `exp`, `nbf` and `iat` are within
//! the leeway; and the required scopes are present. Both OAuth 2 JWT access
//! tokens (`typ` `at+jwt`) and ID tokens pass these checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::CoreProviderMetadata;
use openidconnect::IssuerUrl;
use serde_json::Value;

use super::http::Https;
use crate::config::IssuerConfig;

/// Largest token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Least time between two key fetches triggered by unknown key ids.
const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
/// First delay before retrying an issuer that could not be reached.
const RETRY_START: Duration = Duration::from_secs(1);
/// Longest delay between retries.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// `typ` header values accepted (case-insensitive); absent is accepted too.
const ACCEPTED_TYPES: [&str; 3] = ["jwt", "at+jwt", "application/at+jwt"];

/// Why a token was refused. The text is safe to show the client and to log:
/// it never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or too large.
    #[error("not a well-formed token")]
    Malformed,
    /// `alg` is `none`, HMAC, or not allowed for the key.
    #[error("signature algorithm not accepted")]
    Algorithm,
    /// `iss` names no trusted issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// The issuer's keys have not been fetched yet.
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
    /// No published key has the token's key id.
    #[error("unknown signing key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed.
    #[error("expired")]
    Expired,
    /// `nbf` or `iat` lies in the future.
    #[error("not valid yet")]
    NotYetValid,
    /// `aud` holds no accepted audience.
    #[error("wrong audience")]
    Audience,
    /// A required claim is missing or has the wrong form.
    #[error("missing or invalid claim {0}")]
    Claim(&'static str),
    /// A required scope is missing.
    #[error("missing required scope")]
    Scope,
    /// `typ` names another kind of token.
    #[error("not an access or ID token")]
    Type,
}

impl TokenError {
    /// Short machine-readable reason for events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownIssuer => "unknown_issuer",
            Self::KeysUnavailable => "keys_unavailable",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "wrong_audience",
            Self::Claim(_) => "claim",
            Self::Scope => "scope",
            Self::Type => "token_type",
        }
    }
}

/// What a verified token proves.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The issuer.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The user name from the configured claim.
    pub user: String,
    /// Groups from the configured claim.
    pub groups: Vec<String>,
    /// When the token expires.
    pub expires_at: SystemTime,
}

/// One key ready for verification, with the only algorithm it allows.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The keys of one issuer, by key id (keys without an id under "").
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<Key>>,
}

/// One trusted issuer with its cached keys.
pub struct Issuer {
    config: IssuerConfig,
    http: Https,
    jwks_uri: RwLock<Option<String>>,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When an unknown key id last caused a fetch.
    last_kid_fetch: Mutex<Option<Instant>>,
    leeway: Duration,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

/// Why an issuer's keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Discovery failed.
    #[error("discovery of {issuer} failed: {message}")]
    Discovery {
        /// The issuer.
        issuer: String,
        /// What failed.
        message: String,
    },
    /// The key set could not be fetched or read.
    #[error("key set of {issuer}: {message}")]
    Keys {
        /// The issuer.
        issuer: String,
        /// What failed.
        message: String,
    },
}

impl Issuer {
    /// An issuer whose keys are not fetched yet.
    pub fn new(config: IssuerConfig, leeway: Duration) -> Result<Self, crate::tls::TlsError> {
        let http = Https::new(config.ca_file.as_deref())?;
        Ok(Self {
            config,
            http,
            jwks_uri: RwLock::new(None),
            keys: RwLock::new(None),
            last_kid_fetch: Mutex::new(None),
            leeway,
        })
    }

    /// The issuer URL.
    pub fn url(&self) -> &str {
        &self.config.issuer
    }

    /// Number of usable keys held.
    pub fn key_count(&self) -> usize {
        read(&self.keys).as_ref().map_or(0, |k| k.keys.len())
    }

    /// Fetches discovery (once) and the key set, replacing the cached keys.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let set = if let Some(file) = &self.config.jwks_file {
            let text = tokio::fs::read(file)
                .await
                .map_err(|e| self.keys_error(e))?;
            parse_key_set(&text).map_err(|e| self.keys_error(e))?
        } else {
            let uri = self.jwks_uri().await?;
            let body = self.http.get(&uri).await.map_err(|e| self.keys_error(e))?;
            parse_key_set(&body).map_err(|e| self.keys_error(e))?
        };
        let count = set.keys.len();
        *write(&self.keys) = Some(Arc::new(set));
        Ok(count)
    }

    async fn jwks_uri(&self) -> Result<String, FetchError> {
        if let Some(uri) = read(&self.jwks_uri).clone() {
            return Ok(uri);
        }
        let discovery_error = |message: String| FetchError::Discovery {
            issuer: self.config.issuer.clone(),
            message,
        };
        let url = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| discovery_error(e.to_string()))?;
        // openidconnect checks that the document names this exact issuer.
        let metadata = CoreProviderMetadata::discover_async(url, &self.http)
            .await
            .map_err(|e| discovery_error(error_chain(&e)))?;
        let uri = metadata.jwks_uri().url().to_string();
        *write(&self.jwks_uri) = Some(uri.clone());
        Ok(uri)
    }

    fn keys_error(&self, e: impl std::fmt::Display) -> FetchError {
        FetchError::Keys {
            issuer: self.config.issuer.clone(),
            message: e.to_string(),
        }
    }

    /// Keeps the keys fresh: retries quickly until the first fetch works,
    /// then refreshes on the configured interval. Runs until dropped.
    pub async fn keep_fresh(self: Arc<Self>) {
        let mut delay = RETRY_START;
        loop {
            match self.refresh().await {
                Ok(count) => {
                    tracing::info!(issuer = %self.config.issuer, keys = count, "issuer keys fetched");
                    delay = RETRY_START;
                    tokio::time::sleep(self.config.key_refresh).await;
                }
                Err(e) => {
                    // Keys already held stay in force.
                    tracing::error!(error = %e, retry_in = ?delay, "cannot fetch issuer keys");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// The key for `kid`, fetching the key set again (rate-limited) if
    /// the id is not known.
    async fn key(&self, kid: &str) -> Result<Arc<Key>, TokenError> {
        if let Ok(Some(key)) = self.cached_key(kid) {
            return Ok(key);
        }
        let may_refetch = {
            let mut last = lock(&self.last_kid_fetch);
            let due = last.is_none_or(|t| t.elapsed() >= UNKNOWN_KID_REFETCH);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if may_refetch {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "key refetch for an unknown key id failed");
            }
        }
        self.cached_key(kid)?.ok_or(TokenError::UnknownKey)
    }

    fn cached_key(&self, kid: &str) -> Result<Option<Arc<Key>>, TokenError> {
        let keys = read(&self.keys);
        let set = keys.as_ref().ok_or(TokenError::KeysUnavailable)?;
        Ok(set.keys.get(kid).cloned())
    }

    /// Verifies a token whose unverified `iss` names this issuer.
    async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Algorithm)?;
        if let Some(typ) = &header.typ {
            if !ACCEPTED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(typ)) {
                return Err(TokenError::Type);
            }
        }
        let key = self.key(header.kid.as_deref().unwrap_or("")).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map_err(|e| map_jwt_error(&e))?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Value) -> Result<Verified, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if let Some(iat) = claims.get("iat") {
            let iat = iat.as_f64().ok_or(TokenError::Claim("iat"))?;
            if iat > (now + self.leeway).as_secs_f64() {
                return Err(TokenError::NotYetValid);
            }
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or(TokenError::Claim("exp"))?;
        let subject = claim_str(claims, "sub").ok_or(TokenError::Claim("sub"))?;
        let user = match &self.config.username_claim {
            Some(name) => claim_at(claims, name)
                .and_then(Value::as_str)
                .map(str::to_owned),
            None => ["preferred_username", "email", "sub"]
                .iter()
                .find_map(|name| claim_str(claims, name)),
        }
        .filter(|u| !u.is_empty())
        .ok_or(TokenError::Claim("user name"))?;
        let groups = match claim_at(claims, &self.config.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(TokenError::Claim("groups"))?,
            Some(_) => return Err(TokenError::Claim("groups")),
        };
        if !self.config.required_scopes.is_empty() {
            let scopes = scopes(claims);
            if !self
                .config
                .required_scopes
                .iter()
                .all(|s| scopes.contains(&s.as_str()))
            {
                return Err(TokenError::Scope);
            }
        }
        Ok(Verified {
            issuer: self.config.issuer.clone(),
            subject,
            user,
            groups,
            expires_at: UNIX_EPOCH + Duration::from_secs_f64(exp.max(0.0)),
        })
    }
}

/// All trusted issuers.
#[derive(Debug, Default)]
pub struct Verifier {
    issuers: Vec<Arc<Issuer>>,
}

impl Verifier {
    /// A verifier for `issuers`.
    pub fn new(issuers: Vec<Arc<Issuer>>) -> Self {
        Self { issuers }
    }

    /// The issuers.
    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// Verifies a token sent as a password.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let iss = unverified_issuer(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        issuer.verify(token).await
    }
}

/// Reads `iss` from the payload without verifying anything, only to choose
/// which issuer's keys verify the token.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    claim_str(&claims, "iss").ok_or(TokenError::Claim("iss"))
}

/// Builds the usable keys of a JWKS document: asymmetric signing keys only,
/// each with the algorithms it allows.
fn parse_key_set(body: &[u8]) -> Result<KeySet, String> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(algorithms) = key_algorithms(jwk) else {
            continue;
        };
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let kid = jwk.common.key_id.clone().unwrap_or_default();
        keys.insert(
            kid,
            Arc::new(Key {
                decoding,
                algorithms,
            }),
        );
    }
    if keys.is_empty() {
        return Err("no usable signing key in the key set".into());
    }
    Ok(KeySet { keys })
}

/// The algorithms a key allows: its own `alg` if it states one, else those
/// of its type and curve. Symmetric keys allow none.
fn key_algorithms(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type),
        Some(stated) => {
            let alg = by_type
                .iter()
                .copied()
                .find(|a| same_algorithm(*a, stated))?;
            Some(vec![alg])
        }
    }
}

fn same_algorithm(alg: Algorithm, stated: jsonwebtoken::jwk::KeyAlgorithm) -> bool {
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    matches!(
        (alg, stated),
        (Algorithm::RS256, K::RS256)
            | (Algorithm::RS384, K::RS384)
            | (Algorithm::RS512, K::RS512)
            | (Algorithm::PS256, K::PS256)
            | (Algorithm::PS384, K::PS384)
            | (Algorithm::PS512, K::PS512)
            | (Algorithm::ES256, K::ES256)
            | (Algorithm::ES384, K::ES384)
            | (Algorithm::EdDSA, K::EdDSA)
    )
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
        ErrorKind::MissingRequiredClaim(c) => TokenError::Claim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "sub",
        }),
        _ => TokenError::Malformed,
    }
}

/// A claim by key, or by dotted path when no key has the whole name
/// (`realm_access.roles`; `cognito:groups` and URL-named claims are keys).
fn claim_at<'v>(claims: &'v Value, name: &str) -> Option<&'v Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(claims, |v, part| v.get(part))
}

fn claim_str(claims: &Value, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Scopes from `scope` (space-separated) or `scp` (a list or a string).
fn scopes(claims: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// The locks guard plain replacements of whole values; a poisoned lock still
// holds a consistent value.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_paths() {
        let claims: Value = serde_json::json!({
            "realm_access": {"roles": ["a", "b"]},
            "cognito:groups": ["c"],
            "https://example.com/groups": ["d"],
        });
        assert_eq!(
            claim_at(&claims, "realm_access.roles"),
            Some(&serde_json::json!(["a", "b"]))
        );
        assert_eq!(
            claim_at(&claims, "cognito:groups"),
            Some(&serde_json::json!(["c"]))
        );
        assert_eq!(
            claim_at(&claims, "https://example.com/groups"),
            Some(&serde_json::json!(["d"]))
        );
        assert_eq!(claim_at(&claims, "missing.path"), None);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_not_usable() {
        let set = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"h"}]}"#;
        assert!(parse_key_set(set).is_err());
    }

    #[test]
    fn a_key_allows_only_its_own_algorithm() {
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","kid":"e","alg":"ES256",
                "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#,
        )
        .unwrap();
        assert_eq!(key_algorithms(&jwk), Some(vec![Algorithm::ES256]));
        let mut mislabelled = jwk.clone();
        mislabelled.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::RS256);
        assert_eq!(key_algorithms(&mislabelled), None);
    }

    #[test]
    fn junk_tokens_are_malformed() {
        for junk in ["", "a.b", "a.b.c.d", "!!!.???.###", "e30.e30.sig"] {
            let err = unverified_issuer(junk).unwrap_err();
            assert!(
                matches!(err, TokenError::Malformed | TokenError::Claim("iss")),
                "{junk}"
            );
        }
    }

    #[test]
    fn scopes_from_either_claim() {
        let claims = serde_json::json!({"scope": "db:read db:write", "scp": ["x"]});
        assert_eq!(scopes(&claims), vec!["db:read", "db:write", "x"]);
    }
}
