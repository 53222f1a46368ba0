//! Where finished recordings are kept (README "Recordings"), through the `object_store` crate:
//! the local filesystem (`recording.dir`) by default, or an S3-compatible bucket
//! (`recording.store = "s3://bucket/prefix"`, `recording.s3_endpoint` and `recording.s3_region`
//! as settings, credentials from the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`).
//!
//! A recording's key is `<client id>/<CallSid>.ogg` under the store's root (the bucket's prefix,
//! or `recording.dir`); the `recordings` row holds that key.

use std::{ops::Range, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, PutPayload, RetryConfig,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    local::LocalFileSystem,
    path::Path as Key,
    prefix::PrefixStore,
};

use crate::config::RecordingSettings;

/// One request to the object store gives up after this long (the recording then waits in the
/// local spool and is tried again).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The store of the recordings.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The directory, when the store is the local filesystem (its files are synced to disk
    /// before a recording is called ready).
    local: Option<PathBuf>,
    /// What the store is, for logs: `file:<dir>` or `s3://bucket/prefix` (never a credential).
    pub describe: String,
}

/// Why the store could not be set up (a configuration error: the service does not start).
#[derive(Debug, thiserror::Error)]
#[error("recording.store: {0}")]
pub struct StorageError(String);

/// A fault of the store: `NotFound`, or anything else (the store is down, full, refusing).
#[derive(Debug)]
pub enum Fault {
    /// No such object.
    NotFound,
    /// Another failure (already logged with its detail).
    Other(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::NotFound => f.write_str("not found"),
            Fault::Other(e) => f.write_str(e),
        }
    }
}

impl From<object_store::Error> for Fault {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Fault::NotFound,
            e => Fault::Other(describe(&e)),
        }
    }
}

/// An object store error for logs: its kind and message, without the response body an S3
/// server may add (a `SignatureDoesNotMatch` body holds the access key id and the signed
/// request, session token included).
fn describe(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let kind = match e {
        E::PermissionDenied { .. } => "permission denied",
        E::Unauthenticated { .. } => "unauthenticated",
        E::Precondition { .. } => "precondition failed",
        E::NotSupported { .. } | E::NotImplemented => "not supported",
        _ => "error",
    };
    let text = e.to_string();
    // The body follows the status (`…: 403 Forbidden: <?xml …`); an XML or JSON document is
    // cut off, and the rest bounded.
    let cut = ["<?xml", "<Error", "{\""]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    let mut text = text[..cut].trim_end_matches([' ', ':']).to_string();
    if text.len() > 300 {
        let mut end = 300;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    format!("{kind}: {text}")
}

/// `s3://bucket/prefix` read: the bucket and the prefix (possibly empty).
pub fn parse_s3(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or("must be empty (the local directory) or s3://bucket/prefix")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !valid_bucket {
        return Err(
            "the bucket must be 3 to 63 lowercase letters, digits, dots or hyphens".to_string(),
        );
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err("the prefix must not hold empty, `.` or `..` parts".to_string());
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl Storage {
    /// From `[recording]`: `store` empty is the directory `dir` (created if missing).
    pub fn new(r: &RecordingSettings, dir: PathBuf) -> Result<Self, StorageError> {
        // A few quick retries inside one attempt; the spool retries for longer.
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
        };
        if r.store.is_empty() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| StorageError(format!("cannot create {}: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| StorageError(format!("{}: {e}", dir.display())))?;
            return Ok(Self {
                store: Arc::new(fs),
                describe: format!("file:{}", dir.display()),
                local: Some(dir),
            });
        }
        let (bucket, prefix) = parse_s3(&r.store).map_err(StorageError)?;
        // The environment's client settings (AWS_ALLOW_HTTP, proxies…) are kept; only the
        // timeouts are set on top.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}s", REQUEST_TIMEOUT.as_secs()),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "5s",
            )
            .with_retry(retry);
        if !r.s3_endpoint.is_empty() {
            // An S3-compatible service (MinIO, Ceph, R2…): path-style requests, plain HTTP
            // allowed when the endpoint says so.
            builder = builder
                .with_endpoint(&r.s3_endpoint)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(r.s3_endpoint.starts_with("http://"));
        }
        if !r.s3_region.is_empty() {
            builder = builder.with_region(&r.s3_region);
        }
        let s3 = builder
            .build()
            .map_err(|e| StorageError(format!("S3 store: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix.as_str()))
        };
        Ok(Self {
            store,
            local: None,
            describe: format!("s3://{bucket}/{prefix}"),
        })
    }

    /// The local file of `key`, when the store is the local filesystem.
    pub fn local_file(&self, key: &str) -> Option<PathBuf> {
        self.local.as_ref().map(|d| d.join(key))
    }

    /// Stores `bytes` at `key` (replacing what was there). On the local filesystem the file is
    /// synced to disk before this returns.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), Fault> {
        self.store
            .put(&Key::from(key), PutPayload::from_bytes(bytes))
            .await?;
        if let Some(file) = self.local_file(key) {
            let synced = async { tokio::fs::File::open(&file).await?.sync_all().await }.await;
            synced.map_err(|e| Fault::Other(format!("sync: {e}")))?;
        }
        Ok(())
    }

    /// The size of the object at `key`.
    pub async fn size(&self, key: &str) -> Result<u64, Fault> {
        Ok(self.store.head(&Key::from(key)).await?.size)
    }

    /// The bytes `range` of `key`, as a stream.
    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> Result<BoxStream<'static, Result<Bytes, object_store::Error>>, Fault> {
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(range)),
            ..Default::default()
        };
        Ok(self
            .store
            .get_opts(&Key::from(key), options)
            .await?
            .into_stream())
    }

    /// The whole object at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, Fault> {
        Ok(self.store.get(&Key::from(key)).await?.bytes().await?)
    }

    /// Deletes `key`; one already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), Fault> {
        match self.store.delete(&Key::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_logged_without_the_response_body() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://h/b/k in 1ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIASECRET</AWSAccessKeyId></Error>".into(),
        };
        let d = describe(&e);
        assert!(d.contains("403 Forbidden"), "{d}");
        assert!(!d.contains("AKIASECRET") && !d.contains("<"), "{d}");
        let long = object_store::Error::Generic {
            store: "S3",
            source: "é".repeat(400).into(),
        };
        assert!(describe(&long).chars().count() < 320);
    }

    #[test]
    fn s3_urls_are_read_and_bad_ones_refused() {
        assert_eq!(
            parse_s3("s3://calls/warmline/rec").unwrap(),
            ("calls".into(), "warmline/rec".into())
        );
        assert_eq!(parse_s3("s3://calls").unwrap(), ("calls".into(), "".into()));
        assert_eq!(
            parse_s3("s3://calls/").unwrap(),
            ("calls".into(), "".into())
        );
        assert_eq!(
            parse_s3("s3://my.calls-1/a/").unwrap(),
            ("my.calls-1".into(), "a".into())
        );
        for bad in [
            "calls",
            "file:///tmp",
            "s3://",
            "s3://Calls/x",
            "s3://ab",
            "s3://calls/../x",
            "s3://calls/a//b",
            "s3://calls_1/x",
        ] {
            assert!(parse_s3(bad).is_err(), "{bad} accepted");
        }
    }
}
