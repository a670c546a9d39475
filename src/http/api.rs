//! The JSON API under `/api`: what the wire serves, over HTTP, for scripts
//! and the console. Every endpoint runs the same SQL and table functions a
//! client would (`workbench.runs`, `run()`, `preview()`, `lineage()`) in a
//! session of the caller, so grants, masks and row filters apply as on the
//! wire. Callers log in with HTTP Basic as the config's `users:` (with no
//! users configured the server is local-trust, as on the wire).

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde::Deserialize;

use super::HttpState;
use crate::governance::{Access, AccessError, Principal};
use crate::pipeline::PipelineError;

/// An API error: status and a JSON body saying what and what to do.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// Status and message, for pages that show them their own way.
    pub(super) fn parts(self) -> (StatusCode, String) {
        (self.status, self.message)
    }

    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Basic realm=\"workbench\"".parse().expect("a header value"));
        }
        response
    }
}

/// The HTTP status of a pipeline error.
fn pipeline_status(err: &PipelineError) -> StatusCode {
    match err {
        PipelineError::UnknownDataset(_) | PipelineError::UnknownRun(_) => StatusCode::NOT_FOUND,
        PipelineError::Upload { message, .. } if message.contains("exists already") => StatusCode::CONFLICT,
        PipelineError::Upload { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        PipelineError::Locked { .. } => StatusCode::CONFLICT,
        PipelineError::Meta(_) | PipelineError::Coordination(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<PipelineError> for ApiError {
    fn from(err: PipelineError) -> ApiError {
        ApiError::new(pipeline_status(&err), err.to_string())
    }
}

impl From<DataFusionError> for ApiError {
    fn from(err: DataFusionError) -> ApiError {
        let mut current: &DataFusionError = &err;
        loop {
            match current {
                DataFusionError::External(inner) => {
                    if let Some(denied) = inner.downcast_ref::<AccessError>() {
                        return ApiError::new(StatusCode::FORBIDDEN, denied.to_string());
                    }
                    if let Some(failed) = inner.downcast_ref::<PipelineError>() {
                        return ApiError::new(pipeline_status(failed), failed.to_string());
                    }
                    match inner.downcast_ref::<DataFusionError>() {
                        Some(df) => current = df,
                        None => break,
                    }
                }
                DataFusionError::Context(_, inner) => current = inner,
                DataFusionError::Plan(_) | DataFusionError::SQL(..) | DataFusionError::SchemaError(..) => {
                    return ApiError::new(StatusCode::BAD_REQUEST, err.strip_backtrace());
                }
                _ => break,
            }
        }
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.strip_backtrace())
    }
}

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run_detail))
        .route("/api/datasets/{name}/runs", post(start_run))
        .route("/api/datasets/{name}/preview", get(preview))
        // The body is spooled to disk under upload_max_size by the handler itself.
        .route("/api/datasets/{name}/files/{file}", put(upload).layer(DefaultBodyLimit::disable()))
        .route("/api/lineage", get(lineage))
        .route("/api/tables/{table}/validations", post(validate))
        .route("/api/validations/{id}", get(validation))
}

/// Who calls: `None` under local trust (no users configured).
pub(super) struct Caller {
    pub(super) access: Option<Arc<Access>>,
}

impl Caller {
    pub(super) fn may(&self, check: impl FnOnce(&Principal) -> bool) -> bool {
        match &self.access {
            None => true,
            Some(access) => access.principal().is_some_and(|p| check(&p)),
        }
    }
}

pub(super) async fn login(state: &HttpState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    if state.users.is_empty() {
        return Ok(Caller { access: None });
    }
    let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "log in with HTTP Basic as one of the config's users");
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    let encoded = value.strip_prefix("Basic ").ok_or_else(unauthorized)?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| unauthorized())?;
    let text = String::from_utf8(decoded).map_err(|_| unauthorized())?;
    let (name, password) = text.split_once(':').ok_or_else(unauthorized)?;
    login_with(state, name, password).await
}

/// Check `name`'s `password` against the config's users.
pub(super) async fn login_with(state: &HttpState, name: &str, password: &str) -> Result<Caller, ApiError> {
    let user = state.users.iter().find(|u| u.name == name).cloned();
    let password = password.to_string();
    // PBKDF2 is CPU work: off the async threads. An unknown user costs the same.
    let known = tokio::task::spawn_blocking(move || match &user {
        Some(user) => user.secret.verify(&password),
        None => {
            let _ = crate::config::ScramSecret::derive(&password, crate::config::SCRAM_ITERATIONS);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !known {
        tracing::warn!(user = %name, "HTTP login failed");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, format!("password authentication failed for user \"{name}\"")));
    }
    let access = Arc::new(Access::default());
    access.set(Principal::new(state.policy.clone(), name));
    Ok(Caller { access: Some(access) })
}

/// A caller logged in as `name` (already checked).
pub(super) fn caller_as(state: &HttpState, name: &str) -> Caller {
    if state.users.is_empty() {
        return Caller { access: None };
    }
    let access = Arc::new(Access::default());
    access.set(Principal::new(state.policy.clone(), name));
    Caller { access: Some(access) }
}

pub(super) fn session(state: &HttpState, caller: &Caller) -> Result<SessionContext, ApiError> {
    match &caller.access {
        None => Ok(state.engine.session()),
        Some(access) => state.engine.client_session(access.clone()).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The rows of `sql`, as JSON objects.
pub(super) async fn rows(ctx: &SessionContext, sql: &str) -> Result<serde_json::Value, ApiError> {
    let bytes = rows_json(ctx, sql).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The rows of `sql` as the text of a JSON array of objects, written once
/// by Arrow's JSON writer (large answers are not parsed back to be sent).
async fn rows_json(ctx: &SessionContext, sql: &str) -> Result<Vec<u8>, ApiError> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&datafusion::arrow::array::RecordBatch> = batches.iter().collect();
    writer.write_batches(&refs).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    writer.finish().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let bytes = writer.into_inner();
    Ok(if bytes.is_empty() { b"[]".to_vec() } else { bytes })
}

pub(super) fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn known_dataset(state: &HttpState, name: &str) -> Result<Arc<crate::pipeline::Pipeline>, ApiError> {
    let pipeline = state.pipeline.clone().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this server runs without specs"))?;
    if pipeline.project().dataset(name).is_none() {
        return Err(PipelineError::UnknownDataset(name.to_string()).into());
    }
    Ok(pipeline)
}

#[derive(Deserialize)]
struct RunsQuery {
    dataset: Option<String>,
    limit: Option<u32>,
}

async fn runs(State(state): State<HttpState>, headers: HeaderMap, Query(q): Query<RunsQuery>) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = login(&state, &headers).await?;
    let ctx = session(&state, &caller)?;
    let filter = match &q.dataset {
        Some(d) => format!("WHERE CAST(datasets AS TEXT) LIKE {}", quote(&format!("%\"{d}\"%"))),
        None => String::new(),
    };
    let sql = format!(
        "SELECT id, datasets, trigger, status, started_at, finished_at, error, rows_in, rows_out, rows_rejected, attempt, retry_of \
         FROM workbench.runs {filter} ORDER BY started_at DESC LIMIT {}",
        q.limit.unwrap_or(50).min(1000)
    );
    Ok(Json(rows(&ctx, &sql).await?))
}

async fn run_detail(State(state): State<HttpState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = login(&state, &headers).await?;
    let ctx = session(&state, &caller)?;
    let run = rows(&ctx, &format!("SELECT * FROM workbench.runs WHERE id = {}", quote(&id))).await?;
    let Some(run) = run.as_array().and_then(|r| r.first()).cloned() else {
        return Err(PipelineError::UnknownRun(id).into());
    };
    let steps = rows(&ctx, &format!("SELECT * FROM workbench.run_steps WHERE run_id = {} ORDER BY seq", quote(&id))).await?;
    let validations = rows(&ctx, &format!("SELECT * FROM workbench.validations WHERE run_id = {} ORDER BY validated_at", quote(&id))).await?;
    Ok(Json(serde_json::json!({ "run": run, "steps": steps, "validations": validations })))
}

async fn start_run(State(state): State<HttpState>, headers: HeaderMap, Path(name): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = login(&state, &headers).await?;
    known_dataset(&state, &name)?;
    let ctx = session(&state, &caller)?;
    Ok(Json(serde_json::json!({ "steps": rows(&ctx, &format!("SELECT * FROM run({})", quote(&name))).await? })))
}

/// Check a table's declared expectations now (as `validate()` does); the
/// answer carries the call's `validation_id`, its Data Docs page's id.
async fn validate(State(state): State<HttpState>, headers: HeaderMap, Path(table): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = login(&state, &headers).await?;
    let ctx = session(&state, &caller)?;
    let results = rows(&ctx, &format!("SELECT * FROM validate({})", quote(&table))).await?;
    let id = results.as_array().and_then(|r| r.first()).map(|r| r["validation_id"].clone()).unwrap_or_default();
    Ok(Json(serde_json::json!({ "validation_id": id, "results": results })))
}

/// The results of one `validate()` call.
async fn validation(State(state): State<HttpState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = login(&state, &headers).await?;
    let ctx = session(&state, &caller)?;
    let results = rows(&ctx, &format!("SELECT * FROM workbench.validations WHERE validation_id = {} ORDER BY validated_at", quote(&id))).await?;
    let table = results.as_array().and_then(|r| r.first()).map(|r| r["table_name"].as_str().unwrap_or_default().to_string());
    match table {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no validate() call has id {id}"))),
        Some(table) if !table.split_once('.').is_some_and(|(layer, name)| caller.may(|p| p.can_read(layer, name))) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, format!("you may not read {table}")))
        }
        Some(_) => Ok(Json(serde_json::json!({ "validation_id": id, "results": results }))),
    }
}

#[derive(Deserialize)]
struct PreviewQuery {
    file: Option<String>,
    limit: Option<u32>,
}

async fn preview(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<PreviewQuery>,
) -> Result<axum::response::Response, ApiError> {
    let caller = login(&state, &headers).await?;
    known_dataset(&state, &name)?;
    let ctx = session(&state, &caller)?;
    let sql = match (&q.file, q.limit) {
        (Some(file), limit) => format!("SELECT * FROM preview({}, {}, {})", quote(&name), quote(file), limit.unwrap_or(100).min(10_000)),
        (None, Some(limit)) => format!("SELECT * FROM preview({}) LIMIT {}", quote(&name), limit.min(10_000)),
        (None, None) => format!("SELECT * FROM preview({}) LIMIT 100", quote(&name)),
    };
    let mut body = b"{\"rows\":".to_vec();
    body.extend(rows_json(&ctx, &sql).await?);
    body.push(b'}');
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn upload(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path((name, file)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    // Who and what first: nothing is read of a body that would be refused.
    let caller = login(&state, &headers).await?;
    let pipeline = known_dataset(&state, &name)?;
    if !caller.may(|p| p.can_upload(&name)) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("you may not upload landing files of dataset {name} (needs `upload: [{name}]`)")));
    }
    let spooled = super::spool::spool(body.into_data_stream(), state.upload_limit).await?;
    let stored = pipeline.upload_file(&name, &file, spooled.read().await?).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "path": stored.path,
            "sha256": stored.sha256,
            "bytes": stored.bytes,
            "rows": stored.rows,
            "already_ingested": stored.already_ingested,
        })),
    ))
}

#[derive(Deserialize)]
struct LineageQuery {
    table: String,
    direction: Option<String>,
    /// `openlineage`: the OpenLineage run events of the latest runs that
    /// read or wrote the table, instead of edges.
    format: Option<String>,
}

async fn lineage(State(state): State<HttpState>, headers: HeaderMap, Query(q): Query<LineageQuery>) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = login(&state, &headers).await?;
    let ctx = session(&state, &caller)?;
    match q.format.as_deref() {
        None | Some("edges") => {
            let direction = q.direction.unwrap_or_else(|| "both".into());
            Ok(Json(rows(&ctx, &format!("SELECT * FROM lineage({}, {})", quote(&q.table), quote(&direction))).await?))
        }
        Some("openlineage") => {
            // The lineage table function checks the caller may read the table.
            rows(&ctx, &format!("SELECT * FROM lineage({}, 'up') LIMIT 1", quote(&q.table))).await?;
            let name = q.table.rsplit('.').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(".");
            let candidates = rows(
                &ctx,
                &format!(
                    "SELECT openlineage FROM workbench.runs WHERE CAST(openlineage AS TEXT) LIKE {} ORDER BY started_at DESC LIMIT 200",
                    quote(&format!("%{name}%"))
                ),
            )
            .await?;
            let mentions = |event: &serde_json::Value| {
                ["inputs", "outputs"].iter().any(|side| {
                    event[side].as_array().is_some_and(|list| list.iter().any(|d| d["name"] == name.as_str()))
                })
            };
            let events: Vec<serde_json::Value> = candidates
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["openlineage"].as_str().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()))
                .filter(mentions)
                .take(20)
                .collect();
            Ok(Json(serde_json::Value::Array(events)))
        }
        Some(other) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("unknown lineage format '{other}'; use edges or openlineage"))),
    }
}

async fn openapi() -> impl IntoResponse {
    let text = |description: &str| serde_json::json!({ "description": description, "content": { "application/json": {} } });
    let errors = serde_json::json!({
        "401": { "description": "no or wrong HTTP Basic login" },
        "403": { "description": "the user's roles do not allow it" },
        "404": { "description": "no such dataset or run" },
    });
    let with = |ok: serde_json::Value| {
        let mut responses = errors.clone();
        responses.as_object_mut().expect("an object").extend(ok.as_object().expect("an object").clone());
        responses
    };
    let name = serde_json::json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    Json(serde_json::json!({
        "openapi": "3.0.3",
        "info": { "title": "Workbench", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": { "basic": { "type": "http", "scheme": "basic" } } },
        "security": [{ "basic": [] }],
        "paths": {
            "/health": { "get": { "summary": "Liveness", "security": [], "responses": { "200": text("the process runs") } } },
            "/ready": { "get": { "summary": "Readiness: metadata store, Redis, lake", "security": [], "responses": { "200": text("ready"), "503": text("a check failed") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics (OpenMetrics text)", "security": [], "responses": { "200": { "description": "metrics" } } } },
            "/api/runs": { "get": {
                "summary": "Recent runs, newest first",
                "parameters": [
                    { "name": "dataset", "in": "query", "schema": { "type": "string" } },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "maximum": 1000 } }
                ],
                "responses": with(serde_json::json!({ "200": text("runs") }))
            } },
            "/api/runs/{id}": { "get": {
                "summary": "A run with its steps and validation results",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with(serde_json::json!({ "200": text("the run") }))
            } },
            "/api/datasets/{name}/runs": { "post": {
                "summary": "Run a dataset now (as run() does); waits for it",
                "parameters": [name.clone()],
                "responses": with(serde_json::json!({ "200": text("its steps"), "409": text("already running") }))
            } },
            "/api/datasets/{name}/preview": { "get": {
                "summary": "The tidy rows a run would write for a landing file, with failed expectations; writes nothing",
                "parameters": [name.clone(), { "name": "file", "in": "query", "schema": { "type": "string" } }, { "name": "limit", "in": "query", "schema": { "type": "integer" } }],
                "responses": with(serde_json::json!({ "200": text("rows") }))
            } },
            "/api/datasets/{name}/files/{file}": { "put": {
                "summary": "Upload a landing file (the body is the whole file: CSV, Excel, Parquet, JSON as the dataset reads)",
                "parameters": [name, { "name": "file", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                "responses": with(serde_json::json!({
                    "201": text("stored: path, sha256, bytes, rows"),
                    "409": text("a file of that name exists"),
                    "413": text("larger than upload_max_size"),
                    "422": text("not a file the dataset can read, or a bad name")
                }))
            } },
            "/api/tables/{table}/validations": { "post": {
                "summary": "Check the table's declared expectations now (as validate()); the answer's validation_id names its Data Docs page, /validations/{id}",
                "parameters": [{ "name": "table", "in": "path", "required": true, "schema": { "type": "string", "example": "silver.ledger" } }],
                "responses": with(serde_json::json!({ "200": text("validation_id and one result per expectation") }))
            } },
            "/api/validations/{id}": { "get": {
                "summary": "The results of one validate() call",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": with(serde_json::json!({ "200": text("the results") }))
            } },
            "/api/lineage": { "get": {
                "summary": "Lineage edges of a table (as lineage()), or with format=openlineage the OpenLineage run events of the latest runs that read or wrote it",
                "parameters": [
                    { "name": "table", "in": "query", "required": true, "schema": { "type": "string" } },
                    { "name": "direction", "in": "query", "schema": { "type": "string", "enum": ["up", "down", "both"] } },
                    { "name": "format", "in": "query", "schema": { "type": "string", "enum": ["edges", "openlineage"] } }
                ],
                "responses": with(serde_json::json!({ "200": text("edges") }))
            } }
        }
    }))
}
