//! The origin tier: where `convert` writes and the last tier a read falls
//! back to. [`open_origin`] turns a location into an [`Origin`]:
//!
//! - a plain path: a [`DirStore`];
//! - `file:///abs/path`: an [`ObjectOrigin`] over `object_store`'s local
//!   file system store, with the same layout (it reads a `DirStore`
//!   directory, and a `DirStore` reads what it writes);
//! - `s3://bucket/prefix`: an [`ObjectOrigin`] over S3 (AWS, or any S3
//!   service such as Garage), configured from the usual `AWS_*`
//!   variables; [`S3Settings`] gives the same settings explicitly.
//!
//! Every request is bounded ([`RequestLimits`]): an unreachable origin
//! fails within seconds with an error naming it, and never hangs a read.

mod listing;
mod object;
mod runtime;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

pub use object::{DEFAULT_DEDUP_REFRESH, ObjectOrigin, RequestError};
pub use runtime::RuntimeError;

use crate::catalog::Origin;
use crate::dir_store::DirStore;
use crate::store::StoreError;

/// Why an origin could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginError {
    /// The location is not a usable URL.
    #[error("`{url}` is not a valid origin: {reason}")]
    BadUrl {
        /// The location given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A request limit cannot work.
    #[error("origin {url}: {reason}")]
    BadLimits {
        /// The location.
        url: String,
        /// Which limit and why.
        reason: &'static str,
    },
    /// The URL scheme is not one this build knows.
    #[error(
        "`{url}`: unsupported origin scheme `{scheme}://` (use a directory path, \
         file:///absolute/path or s3://bucket/prefix)"
    )]
    UnsupportedScheme {
        /// The location given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The store at the location could not be opened or created.
    #[error("cannot open origin {url}: {source}")]
    Store {
        /// The location.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// The object store client could not be configured.
    #[error("cannot set up origin {url}: {source}")]
    Client {
        /// The location.
        url: String,
        /// The object store's error.
        source: object_store::Error,
    },
}

/// Time and retry bounds for every request to a remote origin.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestLimits {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for one whole request, body included.
    pub request_timeout: Duration,
    /// Retries after a failed request (connection refused, 5xx, timeout).
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
    /// First pause between retries (doubling, at most one second).
    pub initial_backoff: Duration,
    /// Most requests in flight to the origin at once, from all threads
    /// together; more wait their turn (within their time bound). Also the
    /// number of idle connections kept, so a burst of gets finds them
    /// open. At least 1.
    pub max_concurrent_requests: usize,
}

impl Default for RequestLimits {
    /// 3 s to connect, 30 s per request, 2 retries within 5 s: a refused
    /// connection fails in well under a second, a black hole in about
    /// 10 s, a stalled service in about 1.5 minutes. 16 requests at once:
    /// a start's prefetch keeps that many chunks coming without one
    /// host's burst looking like an attack to the service.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            max_retries: 2,
            retry_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(100),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
        }
    }
}

/// [`RequestLimits::max_concurrent_requests`] unless configured.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 16;

impl RequestLimits {
    fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_pool_max_idle_per_host(self.max_concurrent_requests)
    }

    /// Refuses limits no origin can work with.
    fn check(&self, url: &str) -> Result<(), OriginError> {
        if self.max_concurrent_requests == 0 {
            return Err(OriginError::BadLimits {
                url: url.to_owned(),
                reason: "max_concurrent_requests is 0 (at least 1 request must be allowed at a time)",
            });
        }
        Ok(())
    }

    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }

    /// The backstop for one operation: every attempt timing out, plus the
    /// pauses between them, plus a margin.
    fn op_timeout(&self) -> Duration {
        let attempts = u32::try_from(self.max_retries.saturating_add(1)).unwrap_or(u32::MAX);
        self.request_timeout
            .saturating_add(self.connect_timeout)
            .saturating_mul(attempts)
            .saturating_add(self.retry_timeout)
            .saturating_add(Duration::from_secs(5))
    }
}

/// Where an S3 origin is and how to reach it. Fields left `None` come from
/// the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
/// …), then from object_store's defaults (AWS, `us-east-1`).
///
/// `Debug` shows `***` for the secret key: settings end up in logs and
/// error reports.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (`""` for the bucket's root).
    pub prefix: String,
    /// Service URL, e.g. `http://127.0.0.1:3900` (plain `http://` is
    /// allowed). Requests use path-style addressing unless the environment
    /// asks for virtual-hosted style.
    pub endpoint: Option<String>,
    /// Region (Garage's is whatever its `s3_region` says, often `garage`).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Time and retry bounds.
    pub limits: RequestLimits,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so a new field cannot be forgotten here.
        let Self {
            bucket,
            prefix,
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            limits,
        } = self;
        f.debug_struct("S3Settings")
            .field("bucket", bucket)
            .field("prefix", prefix)
            .field("endpoint", endpoint)
            .field("region", region)
            .field("access_key_id", access_key_id)
            .field(
                "secret_access_key",
                &secret_access_key.as_ref().map(|_| "***"),
            )
            .field("limits", limits)
            .finish()
    }
}

impl S3Settings {
    /// Settings for `bucket` and `prefix`, everything else from the
    /// environment.
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        let prefix = self.prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// The endpoint in use: the explicit one, else the environment's.
    fn effective_endpoint(&self) -> Option<String> {
        self.endpoint.clone().or_else(|| {
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        })
    }
}

impl ObjectOrigin {
    /// An origin in an S3 bucket.
    pub fn s3(settings: &S3Settings) -> Result<Self, OriginError> {
        let url = settings.url();
        settings.limits.check(&url)?;
        if settings.bucket.is_empty() || settings.bucket.contains('/') {
            return Err(OriginError::BadUrl {
                url,
                reason: "the bucket name is empty or contains `/`",
            });
        }
        // reqwest is built with rustls but no bundled crypto provider (so no
        // aws-lc-rs C build); ring is it. Failing means one is already
        // installed, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let endpoint = settings.effective_endpoint();
        let allow_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_client_options(settings.limits.client_options().with_allow_http(allow_http))
            .with_retry(settings.limits.retry());
        if let Some(endpoint) = endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        // Without one, `from_env` has read AWS_REGION or AWS_DEFAULT_REGION.
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &settings.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &settings.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(|source| OriginError::Client {
            url: url.clone(),
            source,
        })?;
        Ok(Self::new(
            Arc::new(store),
            format!("s3://{}", settings.bucket),
            &settings.prefix,
            settings.limits.op_timeout(),
        )
        .with_max_concurrent_requests(settings.limits.max_concurrent_requests))
    }

    /// An origin in the local directory `root` through object_store's file
    /// system store, with files synced as they are written. `create` makes
    /// the directory (as a [`DirStore`] would); otherwise it must already
    /// be a store.
    pub fn local(root: &Path, create: bool) -> Result<Self, OriginError> {
        Self::local_with(root, create, &RequestLimits::default())
    }

    /// [`ObjectOrigin::local`] with `limits` (only the operation bound and
    /// the number of requests at once apply to a local directory).
    pub fn local_with(
        root: &Path,
        create: bool,
        limits: &RequestLimits,
    ) -> Result<Self, OriginError> {
        let url = format!("file://{}", root.display());
        limits.check(&url)?;
        if !root.is_absolute() {
            return Err(OriginError::BadUrl {
                url,
                reason: "a file:// origin needs an absolute path",
            });
        }
        let opened = if create {
            DirStore::create(root)
        } else {
            DirStore::open(root)
        };
        opened.map_err(|source| OriginError::Store {
            url: url.clone(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(root)
            .map_err(|source| OriginError::Client {
                url: url.clone(),
                source,
            })?
            .with_fsync(true);
        Ok(Self::new(Arc::new(store), url, "", limits.op_timeout())
            .with_max_concurrent_requests(limits.max_concurrent_requests))
    }
}

/// Opens (or with `create`, creates) the origin at `location`: a directory
/// path, `file:///absolute/path` or `s3://bucket/prefix` (see the module
/// documentation for the environment an S3 origin reads).
pub fn open_origin(location: &str, create: bool) -> Result<Arc<dyn Origin>, OriginError> {
    open_origin_with(location, create, &RequestLimits::default())
}

/// [`open_origin`] with `limits` for a remote (`s3://`) or `file://`
/// origin; a plain directory path ignores them.
pub fn open_origin_with(
    location: &str,
    create: bool,
    limits: &RequestLimits,
) -> Result<Arc<dyn Origin>, OriginError> {
    let Some((scheme, rest)) = location.split_once("://") else {
        if location.is_empty() {
            return Err(OriginError::BadUrl {
                url: String::new(),
                reason: "the location is empty",
            });
        }
        let opened = if create {
            DirStore::create(location)
        } else {
            DirStore::open(location)
        };
        let store = opened.map_err(|source| OriginError::Store {
            url: location.to_owned(),
            source,
        })?;
        return Ok(Arc::new(store));
    };
    match scheme {
        "file" => {
            if !rest.starts_with('/') {
                return Err(OriginError::BadUrl {
                    url: location.to_owned(),
                    reason: "use file:///absolute/path (three slashes, no host)",
                });
            }
            Ok(Arc::new(ObjectOrigin::local_with(
                Path::new(rest),
                create,
                limits,
            )?))
        }
        "s3" => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(OriginError::BadUrl {
                    url: location.to_owned(),
                    reason: "no bucket name (use s3://bucket/prefix)",
                });
            }
            Ok(Arc::new(ObjectOrigin::s3(&S3Settings {
                limits: limits.clone(),
                ..S3Settings::new(bucket, prefix)
            })?))
        }
        _ => Err(OriginError::UnsupportedScheme {
            url: location.to_owned(),
            scheme: scheme.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests;
