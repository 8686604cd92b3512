//! HTTPS for the identity providers' discovery documents and key sets.
//!
//! Requests go over rustls (the `ring` provider, as everywhere in pgveil)
//! with certificate verification against the configured CA or the system
//! roots. Redirects are never followed and plain http is refused, so a
//! discovery document cannot send pgveil to fetch keys from elsewhere.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

use crate::tls::{self, TlsError};

/// Time limit for one request to an identity provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body accepted (discovery documents and key sets are small).
const MAX_BODY: usize = 1 << 20;

/// Why a request to an identity provider failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request could not be made or answered.
    #[error("{0}")]
    Request(String),
    /// The answer was too large.
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// An HTTPS client for one issuer.
#[derive(Clone)]
pub struct Https {
    client: reqwest::Client,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Https")
    }
}

impl Https {
    /// A client that trusts `ca_file`, or the system roots when absent.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let config = tls::verifying_client_config(ca_file)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| TlsError::Pem {
                what: "HTTPS client",
                path: String::new(),
                message: e.to_string(),
            })?;
        Ok(Self { client })
    }

    /// GETs `url` and returns the body of a 200 answer.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, HttpError> {
        let response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| HttpError::Request(describe(&e)))?;
        let status = response.status();
        if status != http::StatusCode::OK {
            return Err(HttpError::Request(format!(
                "HTTP status {status} from {url}"
            )));
        }
        read_body(response).await
    }

    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let request = self
            .client
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body);
        let response = request
            .send()
            .await
            .map_err(|e| HttpError::Request(describe(&e)))?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = read_body(response).await?;
        builder
            .body(body)
            .map_err(|e| HttpError::Request(e.to_string()))
    }
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError::Request(describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The error with its causes, which reqwest keeps apart.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl<'c> AsyncHttpClient<'c> for Https {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(Https::call(self, request))
    }
}
