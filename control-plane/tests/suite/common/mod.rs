//! Shared harness: one catalog service per test, on a temp SQLite file or a fresh Postgres
//! schema, driven through the real router with `oneshot`.
#![allow(dead_code, missing_docs)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use toolmesh::{AppState, ServeConfig};
use tower::ServiceExt as _;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// Stamp out a `sqlite` and a `postgres` test from one async fn taking a [`TestApp`].
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::common::TestApp::sqlite().await;
                    super::$name(&app).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = $crate::common::TestApp::postgres().await {
                        super::$name(&app).await;
                    }
                }
            }
        )*
    };
}

pub struct TestApp {
    pub state: AppState,
    pub router: axum::Router,
    pub config: ServeConfig,
    pub db_url: String,
    pub backend: &'static str,
    _dir: tempfile::TempDir,
    _schema: Option<SchemaGuard>,
}

/// Drops the Postgres schema even when the test panicked.
pub struct SchemaGuard {
    base_url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.base_url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            // Bounded: a connection of the app that still holds a lock in the schema (its pool
            // closes in the background) would make DROP wait forever and hang the test. A
            // schema left behind is only litter in the test database.
            rt.block_on(async {
                let cleanup = async {
                    let pool = sqlx::PgPool::connect(&url).await.ok()?;
                    let mut conn = pool.acquire().await.ok()?;
                    let _ = sqlx::query("SET lock_timeout = '5s'")
                        .execute(&mut *conn)
                        .await;
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut *conn)
                        .await;
                    drop(conn);
                    pool.close().await;
                    Some(())
                };
                if tokio::time::timeout(Duration::from_secs(20), cleanup)
                    .await
                    .is_err()
                {
                    eprintln!("warning: the test schema {schema} was not dropped in 20 s");
                }
            });
        })
        .join();
    }
}

pub fn postgres_base_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

impl TestApp {
    fn config(dir: &std::path::Path, db_url: &str) -> ServeConfig {
        let mut c = ServeConfig::with_data_dir(dir);
        c.store.database_url = Some(db_url.to_string());
        c.admin_token = Some(TOKEN.to_string());
        c.discovery_timeout_secs = 10;
        c.discovery_interval_secs = 0;
        c.discovery_watch = false;
        c.public_mcp_url = "http://mcp.example:8080/".into();
        c
    }

    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("catalog.db").display()
        );
        Self::start(dir, db_url, "sqlite", None).await
    }

    /// A fresh schema on the test Postgres; `None` (with a loud message) when Postgres is not
    /// reachable, unless `CI=true`, where that is a failure.
    pub async fn postgres() -> Option<Self> {
        let base = postgres_base_url();
        let pool = match tokio::time::timeout(
            Duration::from_secs(10),
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&base),
        )
        .await
        {
            Ok(Ok(p)) => p,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and Postgres at {base} is unreachable: {why}");
                }
                eprintln!(
                    "\n!!!!! SKIPPING the Postgres half of this test: {base} is unreachable ({why}).\n!!!!! Start Postgres or set DATABASE_URL; with CI=true this fails.\n"
                );
                return None;
            }
        };
        let schema = format!("tm_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .expect("create schema");
        pool.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let db_url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let guard = SchemaGuard {
            base_url: base,
            schema,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        Some(Self::start(dir, db_url, "postgres", Some(guard)).await)
    }

    async fn start(
        dir: tempfile::TempDir,
        db_url: String,
        backend: &'static str,
        schema: Option<SchemaGuard>,
    ) -> Self {
        let config = Self::config(dir.path(), &db_url);
        let state = toolmesh::build_state(&config).await.expect("build state");
        assert_eq!(state.store.backend_name(), backend);
        Self {
            router: toolmesh::router(state.clone()),
            state,
            config,
            db_url,
            backend,
            _dir: dir,
            _schema: schema,
        }
    }

    /// Send a request with the admin token; returns status and JSON (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw(
            method,
            path,
            body.map(|b| b.to_string()),
            Some(TOKEN),
            "application/json",
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        self.raw_on(&self.router, method, path, body, token, content_type)
            .await
    }

    /// A router over the same store with another discovery timeout.
    pub fn router_with_discovery_timeout(&self, timeout: Duration) -> axum::Router {
        let settings = toolmesh::api::ApiSettings {
            discovery_timeout: timeout,
            ..(*self.state.settings).clone()
        };
        toolmesh::router(AppState {
            settings: std::sync::Arc::new(settings),
            ..self.state.clone()
        })
    }

    pub async fn raw_on(
        &self,
        router: &axum::Router,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
            .await
            .expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn version(&self) -> i64 {
        self.state.store.catalog_version().await.expect("version")
    }

    /// Run one SQL statement on the test database directly (to set up what the API would
    /// refuse, such as a catalog written under an older rule); returns the rows affected.
    pub async fn exec_sql(&self, sql: &str) -> u64 {
        if self.backend == "postgres" {
            let pool = sqlx::PgPool::connect(&self.db_url).await.expect("pg");
            let n = sqlx::query(sql)
                .execute(&pool)
                .await
                .expect("sql")
                .rows_affected();
            pool.close().await;
            n
        } else {
            let pool = sqlx::SqlitePool::connect(&self.db_url)
                .await
                .expect("sqlite");
            let n = sqlx::query(sql)
                .execute(&pool)
                .await
                .expect("sql")
                .rows_affected();
            pool.close().await;
            n
        }
    }

    /// The raw sealed credential column of an MCP server.
    pub async fn raw_credentials(&self, name: &str) -> Option<Vec<u8>> {
        let sql = "SELECT credential_headers FROM mcp_servers WHERE name = $1";
        if self.backend == "postgres" {
            let pool = sqlx::PgPool::connect(&self.db_url).await.expect("pg");
            let v: Option<Vec<u8>> = sqlx::query_scalar(sql)
                .bind(name)
                .fetch_one(&pool)
                .await
                .expect("row");
            pool.close().await;
            v
        } else {
            let pool = sqlx::SqlitePool::connect(&self.db_url)
                .await
                .expect("sqlite");
            let v: Option<Vec<u8>> = sqlx::query_scalar(sql)
                .bind(name)
                .fetch_one(&pool)
                .await
                .expect("row");
            pool.close().await;
            v
        }
    }
}

/// Assert an error answer: status, code and the field it names.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, field: Option<&str>) {
    assert_eq!(got.0, status, "status of {}", got.1);
    let err = &got.1["error"];
    assert!(err["code"].is_string(), "error code in {}", got.1);
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error message in {}",
        got.1
    );
    assert_eq!(err["field"].as_str(), field, "error field in {}", got.1);
}
