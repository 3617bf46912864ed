//! The agent's control API: HTTP/1.1 with JSON bodies on a Unix socket
//! that only its owner may use (mode 0600). A thin adapter from routes to
//! [`Agent`] methods:
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /v1/vms` ([`VmSpec`]) | 201 [`VmInfo`](manifest::agent::VmInfo) (its `socket` is ready) |
//! | `GET /v1/vms` | 200 `[VmInfo]` |
//! | `GET /v1/vms/{id}` | 200 [`VmInfo`](manifest::agent::VmInfo) |
//! | `DELETE /v1/vms/{id}` | 200 [`VmInfo`](manifest::agent::VmInfo) (its last counters) |
//! | `GET /v1/tiers` | 200 [`HostTiers`](manifest::agent::HostTiers) |
//! | `GET /metrics` | 200 Prometheus text |
//! | `GET /healthz` | 200 `{"status":"ok","vms":N}` |
//!
//! Errors answer 400 (malformed body, bad id), 404 (unknown VM or image),
//! 405, 409 (the id is taken) or 500, each with an [`ApiError`] body.
//! [`client`] is the other end (`imagefs vm`, the tests).

pub mod client;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use manifest::agent::{ApiError, VmSpec};
use tokio::sync::oneshot;

use crate::agent::{Agent, AgentError, ErrorKind};

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiServeError {
    /// The socket could not be made.
    #[error("{what} {}", path.display())]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something else already listens there.
    #[error("another process already answers on {}", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
}

/// The API being served; [`ApiHandle::stop`] (or drop) ends it.
#[derive(Debug)]
pub struct ApiHandle {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl ApiHandle {
    /// Stops answering, waits for requests under way, removes the socket.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ApiHandle {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Serves the API for `agent` on the Unix socket `path` (made mode 0600;
/// a stale socket there is replaced, a live one is refused), on threads
/// of its own.
pub fn serve_api(path: &Path, agent: Arc<Agent>) -> Result<ApiHandle, ApiServeError> {
    let err = |what| {
        let path = path.to_path_buf();
        move |source| ApiServeError::Socket { what, path, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err("creating the directory of"))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ApiServeError::InUse {
            path: path.to_path_buf(),
        });
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing the stale socket")(e)),
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(err("listening on"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("making private"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(err("setting up"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("imagefs-api")
        .enable_all()
        .build()
        .map_err(err("starting the runtime for"))?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::from_std(std_listener).map_err(err("setting up"))?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(agent);
    let thread = std::thread::Builder::new()
        .name("imagefs-api-main".into())
        .spawn(move || {
            runtime.block_on(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!("the control API failed: {e}");
                }
            });
        })
        .map_err(err("starting the thread of"))?;
    Ok(ApiHandle {
        stop: Some(stop),
        thread: Some(thread),
        path: path.to_path_buf(),
    })
}

fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/vms", get(list).post(start))
        .route("/v1/vms/{id}", get(show).delete(stop))
        .route("/v1/tiers", get(tiers))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .with_state(agent)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ApiError { error: message })).into_response()
}

fn agent_error(e: &AgentError) -> Response {
    let status = match e.kind() {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, crate::error_chain(e))
}

/// Runs a blocking agent call off the runtime's threads.
async fn blocking<T: Send + 'static>(
    agent: Arc<Agent>,
    call: impl FnOnce(&Agent) -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || call(&agent))
        .await
        .map_err(|e| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the call failed: {e}"),
            )
        })
}

/// Runs `call` on a blocking thread and answers `status` with its value as
/// JSON, or its error with the error's status.
async fn json<T: serde::Serialize + Send + 'static>(
    agent: Arc<Agent>,
    status: StatusCode,
    call: impl FnOnce(&Agent) -> Result<T, AgentError> + Send + 'static,
) -> Response {
    match blocking(agent, call).await {
        Ok(Ok(value)) => (status, axum::Json(value)).into_response(),
        Ok(Err(e)) => agent_error(&e),
        Err(r) => r,
    }
}

async fn start(State(agent): State<Arc<Agent>>, body: Bytes) -> Response {
    let spec: VmSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad VM spec: {e}")),
    };
    json(agent, StatusCode::CREATED, move |a| a.start_vm(spec)).await
}

async fn list(State(agent): State<Arc<Agent>>) -> Response {
    json(agent, StatusCode::OK, |a| Ok(a.list())).await
}

async fn show(State(agent): State<Arc<Agent>>, UrlPath(id): UrlPath<String>) -> Response {
    json(agent, StatusCode::OK, move |a| a.show(&id)).await
}

async fn stop(State(agent): State<Arc<Agent>>, UrlPath(id): UrlPath<String>) -> Response {
    json(agent, StatusCode::OK, move |a| a.stop_vm(&id)).await
}

async fn tiers(State(agent): State<Arc<Agent>>) -> Response {
    json(agent, StatusCode::OK, |a| Ok(a.host_tiers())).await
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    match blocking(agent, |a| a.prometheus()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(r) => r,
    }
}

async fn healthz(State(agent): State<Arc<Agent>>) -> Response {
    json(agent, StatusCode::OK, |a| {
        Ok(serde_json::json!({ "status": "ok", "vms": a.vm_count() }))
    })
    .await
}
