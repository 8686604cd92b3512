//! Upload of published Parquet files to an S3-compatible object store.
//!
//! Runs as one tokio task, off the relay path. Each file goes to
//! `<prefix>/<path under the archive root>`, so the bucket holds the same
//! Hive-style layout as the local archive. A failed put is retried with
//! exponential backoff (250 ms doubling to 30 s) for as long as the gateway
//! runs; the local copy is deleted only after a successful put, unless
//! `keep_local` is set.
//!
//! Which files still need uploading is recorded by an empty marker file per
//! file in `<dir>/upload-pending/`, made before the Parquet file appears and
//! removed after its put; markers left at startup are queued again, so a
//! file is uploaded at least once (an interrupted put may repeat, which
//! replaces the object with identical content).
//!
//! TLS uses rustls with the ring provider, the crate's only one, through a
//! reqwest client built here (object_store's own `aws` feature would bring
//! aws-lc-rs). Credentials come only from the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
//!
//! Limits: a file is read into memory and sent with one PUT (files are
//! bounded by `file_max_bytes`); no multipart upload.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::client::{ClientOptions, HttpClient, HttpConnector};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use tokio::sync::mpsc;

use super::spool::sync_dir;
use super::AuditError;
use crate::config::S3Config;

/// First delay after a failed upload.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest delay between upload attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Time to connect to the object store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for one request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Separator standing for `/` in marker file names.
const MARKER_SEP: char = '~';

/// Records that the file at `rel` (relative to the archive root) awaits
/// upload.
pub fn make_marker(markers: &Path, rel: &str) -> Result<(), AuditError> {
    std::fs::create_dir_all(markers).map_err(|e| AuditError::io("creating", markers, e))?;
    let path = markers.join(rel.replace('/', &MARKER_SEP.to_string()));
    std::fs::File::create(&path).map_err(|e| AuditError::io("creating", &path, e))?;
    sync_dir(markers).map_err(|e| AuditError::io("syncing", markers, e))
}

/// Files awaiting upload (relative to `root`), from the markers; markers
/// whose file is gone are removed.
pub fn pending_uploads(markers: &Path, root: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(markers) else {
        return Vec::new();
    };
    let mut pending = Vec::new();
    for item in dir.flatten() {
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let rel = name.replace(MARKER_SEP, "/");
        if root.join(&rel).is_file() {
            pending.push(rel);
        } else {
            let _ = std::fs::remove_file(item.path());
        }
    }
    // File names start with their time, so this uploads oldest first.
    pending.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    pending
}

/// The S3 store of `[audit.s3]`, with credentials from the environment.
pub fn s3_store(config: &S3Config) -> Result<Arc<dyn ObjectStore>, AuditError> {
    let store = s3_builder(config)
        .build()
        .map_err(|e| AuditError::ObjectStore(e.to_string()))?;
    Ok(Arc::new(store))
}

fn s3_builder(config: &S3Config) -> AmazonS3Builder {
    // A few quick retries inside object_store; the uploader's own loop
    // keeps trying after that, with its longer backoff.
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(60),
    };
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_allow_http(config.allow_http)
        .with_retry(retry)
        .with_http_connector(RingConnector {
            ca_file: config.ca_file.clone(),
            allow_http: config.allow_http,
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder
}

/// Builds reqwest clients on pgveil's rustls configuration (ring).
#[derive(Debug)]
struct RingConnector {
    ca_file: Option<PathBuf>,
    allow_http: bool,
}

impl HttpConnector for RingConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: String| object_store::Error::Generic {
            store: "S3",
            source: e.into(),
        };
        let tls = crate::tls::verifying_client_config(self.ca_file.as_deref())
            .map_err(|e| generic(e.to_string()))?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(!self.allow_http)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| generic(e.to_string()))?;
        Ok(HttpClient::new(client))
    }
}

/// The upload task's state.
#[derive(Debug)]
pub struct Uploader {
    /// Where files go.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix, without slashes at either end.
    pub prefix: String,
    /// The local archive root.
    pub root: PathBuf,
    /// The marker directory.
    pub markers: PathBuf,
    /// Keep local files after upload.
    pub keep_local: bool,
}

impl Uploader {
    /// Uploads `initial`, then every path received, until the channel
    /// closes and the queue is empty. Cancel safe: a file whose upload is
    /// cut off keeps its marker and is uploaded at the next start.
    pub async fn run(self, initial: Vec<String>, mut rx: mpsc::UnboundedReceiver<String>) {
        let mut queue: VecDeque<String> = initial.into();
        let mut delay = BACKOFF_MIN;
        let mut open = true;
        loop {
            while let Ok(rel) = rx.try_recv() {
                queue.push_back(rel);
            }
            let Some(rel) = queue.front().cloned() else {
                if !open {
                    return;
                }
                match rx.recv().await {
                    Some(rel) => queue.push_back(rel),
                    None => open = false,
                }
                continue;
            };
            match self.upload(&rel).await {
                Ok(()) => {
                    queue.pop_front();
                    delay = BACKOFF_MIN;
                }
                Err(e) => {
                    tracing::warn!(
                        file = rel,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "audit upload failed"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The object key of a file.
    pub fn key(&self, rel: &str) -> Result<ObjectPath, AuditError> {
        let key = if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        ObjectPath::parse(&key).map_err(|e| AuditError::ObjectStore(e.to_string()))
    }

    async fn upload(&self, rel: &str) -> Result<(), AuditError> {
        let path = self.root.join(rel);
        let marker = self.markers.join(rel.replace('/', &MARKER_SEP.to_string()));
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(file = rel, "audit file vanished before upload");
                let _ = tokio::fs::remove_file(&marker).await;
                return Ok(());
            }
            Err(e) => return Err(AuditError::io("reading", &path, e)),
        };
        let key = self.key(rel)?;
        self.store
            .put(&key, PutPayload::from(bytes))
            .await
            .map_err(|e| AuditError::ObjectStore(e.to_string()))?;
        tracing::debug!(file = rel, "audit file uploaded");
        let _ = tokio::fs::remove_file(&marker).await;
        if !self.keep_local {
            tokio::fs::remove_file(&path)
                .await
                .map_err(|e| AuditError::io("removing", &path, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    use crate::audit::tests::TempDir;

    fn uploader(root: &Path, store: Arc<dyn ObjectStore>, keep_local: bool) -> Uploader {
        Uploader {
            store,
            prefix: "audit/gw".into(),
            root: root.join("archive"),
            markers: root.join("upload-pending"),
            keep_local,
        }
    }

    fn publish(root: &Path, rel: &str, body: &[u8]) {
        let path = root.join("archive").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        make_marker(&root.join("upload-pending"), rel).unwrap();
        std::fs::write(path, body).unwrap();
    }

    #[tokio::test]
    async fn files_go_under_the_same_key_and_leave_local_disk() {
        let tmp = TempDir::new("upload");
        let tmp = &tmp.0;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let a = "statements/date=2026-01-02/20260102T000000.000Z-gw-a.parquet";
        let b = "sessions/date=2026-01-02/20260102T000001.000Z-gw-b.parquet";
        publish(tmp, a, b"first");
        publish(tmp, b, b"second");
        // A marker whose file is gone is dropped, not retried forever.
        make_marker(
            &tmp.join("upload-pending"),
            "sessions/date=2026-01-01/gone.parquet",
        )
        .unwrap();

        let up = uploader(tmp, store.clone(), false);
        let initial = pending_uploads(&up.markers, &up.root);
        assert_eq!(initial, vec![a.to_owned(), b.to_owned()]);
        let (tx, rx) = mpsc::unbounded_channel();
        drop(tx);
        up.run(initial, rx).await;

        for (rel, body) in [(a, &b"first"[..]), (b, &b"second"[..])] {
            let key = ObjectPath::parse(format!("audit/gw/{rel}")).unwrap();
            let got = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], body);
            assert!(!tmp.join("archive").join(rel).exists());
        }
        assert_eq!(
            std::fs::read_dir(tmp.join("upload-pending"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn s3_client_builds_on_ring_and_reports_a_refused_connection() {
        // A loopback port with nothing listening: the put must fail with an
        // error (no crypto-provider panic, no hang). Explicit test
        // credentials keep object_store from asking an instance-metadata
        // endpoint.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = S3Config {
            bucket: "audit".into(),
            prefix: String::new(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: "us-east-1".into(),
            allow_http: true,
            ca_file: None,
            keep_local: false,
        };
        let store = s3_builder(&config)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        let key = ObjectPath::parse("sessions/date=2026-01-01/x.parquet").unwrap();
        let put = store.put(&key, PutPayload::from(b"x".to_vec()));
        let result = tokio::time::timeout(Duration::from_secs(20), put).await;
        assert!(matches!(result, Ok(Err(_))), "{result:?}");
    }

    #[tokio::test]
    async fn keep_local_keeps_the_file_but_not_the_marker() {
        let tmp = TempDir::new("keep");
        let tmp = &tmp.0;
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let rel = "sessions/date=2026-01-02/x.parquet";
        publish(tmp, rel, b"body");
        let up = uploader(tmp, store.clone(), true);
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(rel.to_owned()).unwrap();
        drop(tx);
        up.run(Vec::new(), rx).await;
        assert!(tmp.join("archive").join(rel).exists());
        assert!(pending_uploads(&tmp.join("upload-pending"), &tmp.join("archive")).is_empty());
        let key = ObjectPath::parse(format!("audit/gw/{rel}")).unwrap();
        assert!(store.head(&key).await.is_ok());
    }
}
