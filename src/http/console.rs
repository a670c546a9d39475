//! The web console: server-rendered HTML pages (no JavaScript, no front-end
//! build), drawn from the same SQL and table functions the wire serves, in
//! a session of the caller:
//! - `/` — datasets with their last run and freshness;
//! - `/datasets/{name}` — the spec, recent runs, a row-count history chart
//!   and an expectation pass-rate trend (SVG);
//! - `/runs/{id}` — the run's steps and its Data Docs: one row per
//!   expectation with success, observed value, unexpected counts and samples;
//! - `/lineage?table=` — the table's lineage graph, laid out and drawn as SVG.
//!
//! - `/datasets/{name}/upload` → `/datasets/{name}/preview?file=` → run:
//!   a file uploaded from the browser, its tidy rows with the expectations
//!   each fails, then a run of the dataset.
//!
//! Browsers log in with a form (`/login`): a random session cookie
//! (HttpOnly, SameSite=Strict, 8 h idle) and, per session, a token every
//! form carries (CSRF). Everything shown is HTML-escaped; pages fit a
//! 1024 px wide screen.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;

use super::HttpState;
use super::api::{ApiError, Caller, caller_as, login_with, quote, rows, session};

/// How long a browser stays logged in without coming back.
const SESSION_IDLE: Duration = Duration::from_secs(8 * 3600);
const COOKIE: &str = "wb_session";

/// A logged-in browser: who, and the token its forms must carry (CSRF).
#[derive(Debug, Clone)]
pub struct BrowserSession {
    user: String,
    csrf: String,
    seen: Instant,
}

pub fn routes(upload_limit: usize) -> Router<HttpState> {
    Router::new()
        .route("/", get(datasets))
        .route("/login", get(login_form).post(login_submit))
        .route("/logout", post(logout))
        .route("/datasets/{name}", get(dataset))
        .route("/datasets/{name}/upload", post(upload).layer(DefaultBodyLimit::max(upload_limit + 64 * 1024)))
        .route("/datasets/{name}/preview", get(preview))
        .route("/datasets/{name}/run", post(start_run))
        .route("/runs/{id}", get(run))
        .route("/validations/{id}", get(validation))
        .route("/lineage", get(lineage))
}

/// Why a page is not shown: not logged in (go to the login page), or an error.
pub enum ConsoleError {
    Login,
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(err: ApiError) -> ConsoleError {
        ConsoleError::Api(err)
    }
}

impl From<crate::pipeline::PipelineError> for ConsoleError {
    fn from(err: crate::pipeline::PipelineError) -> ConsoleError {
        ConsoleError::Api(err.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            ConsoleError::Login => Redirect::to("/login").into_response(),
            ConsoleError::Api(err) => {
                let (status, message) = err.parts();
                let body = format!("<p class=\"failed\">{}</p><p><a href=\"/\">Back to the datasets</a></p>", esc(&message));
                (status, page_html("Error", &body)).into_response()
            }
        }
    }
}

fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    hex::encode(bytes)
}

/// The browser's session from its cookie.
fn browser(state: &HttpState, headers: &HeaderMap) -> Result<(Caller, BrowserSession), ConsoleError> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .ok_or(ConsoleError::Login)?;
    let mut sessions = state.sessions.lock().expect("sessions");
    sessions.retain(|_, s| s.seen.elapsed() < SESSION_IDLE);
    let session = sessions.get_mut(&token).ok_or(ConsoleError::Login)?;
    session.seen = Instant::now();
    let session = session.clone();
    drop(sessions);
    Ok((caller_as(state, &session.user), session))
}

fn check_csrf(session: &BrowserSession, sent: &str) -> Result<(), ConsoleError> {
    if sent.len() == session.csrf.len() && sent.bytes().zip(session.csrf.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0 {
        Ok(())
    } else {
        Err(ConsoleError::Api(ApiError::new(StatusCode::FORBIDDEN, "the form's CSRF token does not match this session; reload the page and try again")))
    }
}

async fn login_form(State(state): State<HttpState>) -> Response {
    let password = if state.users.is_empty() {
        "<p>This server trusts local users: no password is needed.</p>"
    } else {
        "<label>Password <input type=\"password\" name=\"password\" required></label>"
    };
    page(
        "Log in",
        &format!(
            "<form method=\"post\" action=\"/login\" class=\"login\"><label>User <input name=\"user\" autocomplete=\"username\" required></label> \
             {password} <button type=\"submit\">Log in</button></form>"
        ),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    #[serde(default)]
    password: String,
}

async fn login_submit(State(state): State<HttpState>, Form(form): Form<LoginForm>) -> Response {
    if !state.users.is_empty() && login_with(&state, &form.user, &form.password).await.is_err() {
        let body = "<p class=\"failed\">Wrong user or password.</p><p><a href=\"/login\">Try again</a></p>";
        return (StatusCode::UNAUTHORIZED, page_html("Log in", body)).into_response();
    }
    let token = random_token();
    state.sessions.lock().expect("sessions").insert(
        token.clone(),
        BrowserSession { user: form.user.clone(), csrf: random_token(), seen: Instant::now() },
    );
    let secure = if state.https { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", SESSION_IDLE.as_secs());
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(state): State<HttpState>, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Result<Response, ConsoleError> {
    let (_, session) = browser(&state, &headers)?;
    check_csrf(&session, &form.csrf)?;
    state.sessions.lock().expect("sessions").retain(|_, s| s.csrf != session.csrf);
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

async fn upload(State(state): State<HttpState>, headers: HeaderMap, Path(name): Path<String>, mut form: Multipart) -> Result<Response, ConsoleError> {
    let (caller, session) = browser(&state, &headers)?;
    let bad = |message: String| ConsoleError::Api(ApiError::new(StatusCode::BAD_REQUEST, message));
    let mut csrf = None;
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(format!("reading the form: {e}")))? {
        match field.name() {
            Some("csrf") => csrf = Some(field.text().await.map_err(|e| bad(e.to_string()))?),
            Some("file") => {
                let file_name = field.file_name().unwrap_or_default().to_string();
                file = Some((file_name, super::spool::spool(field, state.upload_limit).await?));
            }
            _ => {}
        }
    }
    check_csrf(&session, csrf.as_deref().unwrap_or_default())?;
    let Some((file_name, spooled)) = file else { return Err(bad("choose a file to upload".into())) };
    let pipeline = state.pipeline.clone().ok_or_else(|| bad("this server runs without specs".into()))?;
    if !caller.may(|p| p.can_upload(&name)) {
        return Err(ConsoleError::Api(ApiError::new(StatusCode::FORBIDDEN, format!("you may not upload landing files of dataset {name}"))));
    }
    let stored = pipeline.upload_file(&name, &file_name, spooled.read().await?).await.map_err(ApiError::from)?;
    let to = format!("/datasets/{}/preview?file={}", url_part(&name), url_part(&stored.path));
    Ok(Redirect::to(&to).into_response())
}

/// `text` as one URL path segment or query value.
fn url_part(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[derive(Deserialize)]
struct PreviewQuery {
    file: String,
}

async fn preview(State(state): State<HttpState>, headers: HeaderMap, Path(name): Path<String>, Query(q): Query<PreviewQuery>) -> Result<Response, ConsoleError> {
    let (caller, session) = browser(&state, &headers)?;
    let ctx = session_of(&state, &caller)?;
    let preview = rows(&ctx, &format!("SELECT * FROM preview({}, {}, 200)", quote(&name), quote(&q.file))).await?;
    let list = preview.as_array().cloned().unwrap_or_default();
    let columns: Vec<String> = list.first().and_then(|r| r.as_object()).map(|o| o.keys().cloned().collect()).unwrap_or_default();
    let failing = list.iter().filter(|r| !text(&r["_expectations_failed"]).is_empty()).count();
    let mut body = format!(
        "<p>The tidy rows a run would write from <code>{}</code>; nothing has been written yet. \
         <strong class=\"{}\">{failing} of {} rows fail an expectation.</strong></p>",
        esc(&q.file),
        if failing > 0 { "failed" } else { "ok" },
        list.len()
    );
    body.push_str(&format!(
        "<form method=\"post\" action=\"/datasets/{}/run\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" id=\"run\">Run {} now</button></form>",
        esc(&url_part(&name)),
        esc(&session.csrf),
        esc(&name)
    ));
    body.push_str("<table class=\"preview\"><tr>");
    for c in &columns {
        body.push_str(&format!("<th>{}</th>", esc(c)));
    }
    body.push_str("</tr>");
    for r in &list {
        let failed = !text(&r["_expectations_failed"]).is_empty();
        body.push_str(if failed { "<tr class=\"failing\">" } else { "<tr>" });
        for c in &columns {
            let class = if c == "_expectations_failed" && failed { " class=\"failed\"" } else { "" };
            body.push_str(&format!("<td{class}>{}</td>", esc(&text(&r[c]))));
        }
        body.push_str("</tr>");
    }
    body.push_str("</table>");
    Ok(page(&format!("Preview of {name}"), &body))
}

async fn start_run(State(state): State<HttpState>, headers: HeaderMap, Path(name): Path<String>, Form(form): Form<CsrfForm>) -> Result<Response, ConsoleError> {
    let (caller, session) = browser(&state, &headers)?;
    check_csrf(&session, &form.csrf)?;
    let ctx = session_of(&state, &caller)?;
    let steps = rows(&ctx, &format!("SELECT run_id FROM run({})", quote(&name))).await?;
    let run_id = steps.as_array().and_then(|s| s.first()).map(|s| text(&s["run_id"])).unwrap_or_default();
    Ok(Redirect::to(&format!("/runs/{}", url_part(&run_id))).into_response())
}

fn session_of(state: &HttpState, caller: &Caller) -> Result<datafusion::prelude::SessionContext, ConsoleError> {
    Ok(session(state, caller)?)
}

/// `text` safe inside HTML text and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as text (strings without quotes, null as empty).
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn page(title: &str, body: &str) -> Response {
    page_html(title, body).into_response()
}

fn page_html(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · Workbench</title><style>{STYLE}</style></head><body>\
         <header><a href=\"/\">Workbench</a></header><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    ))
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}\
header{background:#1d2733;padding:10px 24px}header a{color:#fff;text-decoration:none;font-weight:600}\
main{max-width:980px;margin:0 auto;padding:16px 24px}table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0 20px}\
th,td{border-bottom:1px solid #dde2e8;padding:6px 8px;text-align:left;font-size:14px;vertical-align:top}th{background:#eef1f4}\
.login label{display:block;margin:8px 0}tr.failing td{background:#fdecea}\
.ok,.succeeded,.fresh,.true{color:#17803d;font-weight:600}.failed,.error,.false,.timed_out{color:#b42318;font-weight:600}\
.warn,.skipped,.cancelled,.never,.running{color:#b25e09;font-weight:600}pre{background:#fff;padding:12px;overflow:auto;font-size:13px}\
svg{background:#fff;display:block;margin:8px 0 20px;max-width:100%;height:auto}code{font-size:13px}";

fn status_cell(status: &str) -> String {
    format!("<td class=\"{}\">{}</td>", esc(status), esc(status))
}

async fn datasets(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ConsoleError> {
    let (caller, browser_session) = browser(&state, &headers)?;
    let ctx = session_of(&state, &caller)?;
    let datasets = rows(&ctx, "SELECT name, description, owner, schedule FROM workbench.datasets WHERE status = 'active' ORDER BY name").await?;
    let freshness = rows(&ctx, "SELECT dataset, state, last_success FROM workbench.freshness").await.unwrap_or(Value::Array(vec![]));
    let runs = rows(&ctx, "SELECT id, datasets, status, started_at FROM workbench.runs ORDER BY started_at DESC LIMIT 500").await?;
    let mut body = String::from("<table><tr><th>dataset</th><th>description</th><th>owner</th><th>schedule</th><th>last run</th><th>freshness</th><th>last success</th></tr>");
    for d in datasets.as_array().into_iter().flatten() {
        let name = text(&d["name"]);
        let last = runs
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| text(&r["datasets"]).contains(&format!("\"{name}\"")));
        let fresh = freshness.as_array().into_iter().flatten().find(|f| text(&f["dataset"]) == name);
        body.push_str(&format!(
            "<tr><td><a href=\"/datasets/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>{}{}<td>{}</td></tr>",
            esc(&name),
            esc(&name),
            esc(&text(&d["description"])),
            esc(&text(&d["owner"])),
            esc(&text(&d["schedule"])),
            match last {
                Some(r) => format!("<td class=\"{0}\"><a href=\"/runs/{1}\">{0}</a> {2}</td>", esc(&text(&r["status"])), esc(&text(&r["id"])), esc(&text(&r["started_at"]))),
                None => "<td>never run</td>".to_string(),
            },
            status_cell(&fresh.map(|f| text(&f["state"])).unwrap_or_default()),
            esc(&fresh.map(|f| text(&f["last_success"])).unwrap_or_default()),
        ));
    }
    body.push_str("</table>");
    body.push_str(&format!(
        "<form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Log out {}</button></form>",
        esc(&browser_session.csrf),
        esc(&browser_session.user)
    ));
    Ok(page("Datasets", &body))
}

async fn dataset(State(state): State<HttpState>, headers: HeaderMap, Path(name): Path<String>) -> Result<Response, ConsoleError> {
    let (caller, browser_session) = browser(&state, &headers)?;
    let ctx = session_of(&state, &caller)?;
    let spec = rows(&ctx, &format!("SELECT spec_text, spec_file, tables FROM workbench.datasets WHERE name = {}", quote(&name))).await?;
    let Some(spec) = spec.as_array().and_then(|s| s.first()).cloned() else {
        return Err(crate::pipeline::PipelineError::UnknownDataset(name).into());
    };
    let runs = rows(
        &ctx,
        &format!(
            "SELECT id, trigger, status, started_at, rows_out, error FROM workbench.runs WHERE CAST(datasets AS TEXT) LIKE {} ORDER BY started_at DESC LIMIT 30",
            quote(&format!("%\"{name}\"%"))
        ),
    )
    .await?;
    // Row counts silver received per successful run, oldest first.
    let history = rows(
        &ctx,
        &format!(
            "SELECT r.started_at, s.rows_out FROM workbench.run_steps s JOIN workbench.runs r ON r.id = s.run_id \
             WHERE s.layer = 'silver' AND s.table_name = {} AND s.status = 'ok' ORDER BY r.started_at DESC LIMIT 30",
            quote(&name)
        ),
    )
    .await?;
    let mut counts: Vec<f64> = history.as_array().into_iter().flatten().filter_map(|h| h["rows_out"].as_f64()).collect();
    counts.reverse();
    // The share of expectations that passed, per run, oldest first.
    let trend = rows(
        &ctx,
        &format!(
            "SELECT run_id, min(validated_at) AS at, avg(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS passed FROM workbench.validations \
             WHERE table_name = {} AND run_id IS NOT NULL GROUP BY run_id ORDER BY at DESC LIMIT 30",
            quote(&format!("silver.{name}"))
        ),
    )
    .await?;
    let mut passed: Vec<f64> = trend.as_array().into_iter().flatten().filter_map(|t| t["passed"].as_f64()).map(|p| p * 100.0).collect();
    passed.reverse();
    let mut body = format!("<p>{} · <a href=\"/lineage?table=silver.{}\">lineage</a></p>", esc(&text(&spec["spec_file"])), esc(&name));
    body.push_str(&format!(
        "<h2>Upload a landing file</h2><form method=\"post\" action=\"/datasets/{}/upload\" enctype=\"multipart/form-data\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"file\" name=\"file\" id=\"file\" required> \
         <button type=\"submit\" id=\"upload\">Upload and preview</button></form>\
         <p>The file is checked and stored; the next page shows its tidy rows and failed expectations before anything runs.</p>",
        esc(&url_part(&name)),
        esc(&browser_session.csrf)
    ));
    body.push_str("<h2>Rows written to silver, per run</h2>");
    body.push_str(&bar_chart(&counts, "rows", "row-count-history", None));
    body.push_str("<h2>Expectations passed, per run (%)</h2>");
    body.push_str(&bar_chart(&passed, "%", "pass-rate-trend", Some(100.0)));
    body.push_str("<h2>Recent runs</h2><table><tr><th>run</th><th>trigger</th><th>status</th><th>started</th><th>rows out</th><th>error</th></tr>");
    for r in runs.as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td><a href=\"/runs/{0}\"><code>{0}</code></a></td><td>{1}</td>{2}<td>{3}</td><td>{4}</td><td>{5}</td></tr>",
            esc(&text(&r["id"])),
            esc(&text(&r["trigger"])),
            status_cell(&text(&r["status"])),
            esc(&text(&r["started_at"])),
            esc(&text(&r["rows_out"])),
            esc(&text(&r["error"])),
        ));
    }
    body.push_str("</table>");
    let calls = rows(
        &ctx,
        &format!(
            "SELECT validation_id, table_name, min(validated_by) AS validated_by, min(validated_at) AS at, count(*) AS checks, \
             sum(CASE WHEN success THEN 1 ELSE 0 END) AS passed FROM workbench.validations \
             WHERE validation_id IS NOT NULL AND table_name IN ({}, {}, {}) GROUP BY validation_id, table_name ORDER BY at DESC LIMIT 20",
            quote(&format!("bronze.{name}")),
            quote(&format!("silver.{name}")),
            quote(&format!("quarantine.{name}")),
        ),
    )
    .await?;
    body.push_str("<h2>validate() calls</h2>");
    match calls.as_array().filter(|c| !c.is_empty()) {
        None => body.push_str(&format!("<p>None yet: <code>SELECT * FROM validate('silver.{}')</code> checks the table now and reports here.</p>", esc(&name))),
        Some(calls) => {
            body.push_str("<table id=\"validations\"><tr><th>report</th><th>table</th><th>by</th><th>at</th><th>passed</th></tr>");
            for c in calls {
                body.push_str(&format!(
                    "<tr><td><a href=\"/validations/{0}\"><code>{0}</code></a></td><td>{1}</td><td>{2}</td><td>{3}</td><td>{4} of {5}</td></tr>",
                    esc(&text(&c["validation_id"])),
                    esc(&text(&c["table_name"])),
                    esc(&text(&c["validated_by"])),
                    esc(&text(&c["at"])),
                    esc(&text(&c["passed"])),
                    esc(&text(&c["checks"])),
                ));
            }
            body.push_str("</table>");
        }
    }
    // Its tables as the lake holds them: many small files want `workbench optimize`.
    let mut tables: Vec<String> = spec["tables"]
        .as_str()
        .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .or_else(|| spec["tables"].as_array().map(|a| a.iter().map(text).collect()))
        .unwrap_or_default();
    tables.push(format!("silver.{name}__quarantine"));
    if !tables.is_empty() {
        let list = tables.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ");
        let storage = rows(&ctx, &format!("SELECT table_name, version, files, small_files, bytes, rows FROM storage() WHERE table_name IN ({list}) ORDER BY table_name")).await?;
        body.push_str("<h2>Tables in the lake</h2><table id=\"storage\"><tr><th>table</th><th>version</th><th>files</th><th>small files</th><th>bytes</th><th>rows</th></tr>");
        for t in storage.as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<tr><td><a href=\"/lineage?table={0}\">{1}</a></td><td>{2}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td></tr>",
                esc(&url_part(&text(&t["table_name"]))),
                esc(&text(&t["table_name"])),
                esc(&text(&t["version"])),
                esc(&text(&t["files"])),
                esc(&text(&t["small_files"])),
                esc(&text(&t["bytes"])),
                esc(&text(&t["rows"])),
            ));
        }
        body.push_str("</table><p>Many small files slow every query: <code>workbench optimize &lt;table&gt;</code> compacts them (or <code>maintenance:</code> in the spec, on a schedule).</p>");
    }
    body.push_str("<h2>Spec</h2>");
    body.push_str(&format!("<pre>{}</pre>", esc(&text(&spec["spec_text"]))));
    Ok(page(&format!("Dataset {name}"), &body))
}

/// Bars of `values` (oldest left) against `scale` (the largest value when
/// `None`), labelled with the scale's top, as SVG.
fn bar_chart(values: &[f64], unit: &str, id: &str, scale: Option<f64>) -> String {
    if values.is_empty() {
        return "<p>No runs yet.</p>".into();
    }
    let (width, height, left, bottom) = (900.0, 160.0, 60.0, 20.0);
    let max = scale.unwrap_or_else(|| values.iter().cloned().fold(0.0_f64, f64::max)).max(1.0);
    // At most 40 px a bar: a few runs do not fill the chart with one block.
    let step = ((width - left) / values.len() as f64).min(40.0);
    let mut svg = format!(
        "<svg id=\"{id}\" role=\"img\" aria-label=\"{id}\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"4\" y=\"14\" font-size=\"12\">{} {unit}</text><line x1=\"{left}\" y1=\"{}\" x2=\"{width}\" y2=\"{}\" stroke=\"#99a\"/>",
        format_number(max),
        height - bottom,
        height - bottom
    );
    for (i, v) in values.iter().enumerate() {
        let h = (v / max) * (height - bottom - 24.0);
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#3b6ea8\"><title>{} {unit}</title></rect>",
            left + i as f64 * step + 2.0,
            height - bottom - h,
            (step - 4.0).max(1.0),
            h,
            format_number(*v)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

async fn run(State(state): State<HttpState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ConsoleError> {
    let (caller, _) = browser(&state, &headers)?;
    let ctx = session_of(&state, &caller)?;
    let run = rows(&ctx, &format!("SELECT id, datasets, trigger, status, started_at, finished_at, error, attempt FROM workbench.runs WHERE id = {}", quote(&id))).await?;
    let Some(run) = run.as_array().and_then(|r| r.first()).cloned() else {
        return Err(crate::pipeline::PipelineError::UnknownRun(id).into());
    };
    let steps = rows(&ctx, &format!("SELECT seq, layer, table_name, rows_in, rows_out, rows_rejected, status, duration_ms, message FROM workbench.run_steps WHERE run_id = {} ORDER BY seq", quote(&id))).await?;
    let checks = rows(&ctx, &validation_sql(&format!("run_id = {}", quote(&id)))).await?;
    let mut body = format!(
        "<table><tr><th>datasets</th><th>trigger</th><th>status</th><th>started</th><th>finished</th><th>attempt</th></tr>\
         <tr><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td></tr></table>",
        esc(&text(&run["datasets"])),
        esc(&text(&run["trigger"])),
        status_cell(&text(&run["status"])),
        esc(&text(&run["started_at"])),
        esc(&text(&run["finished_at"])),
        esc(&text(&run["attempt"])),
    );
    if !text(&run["error"]).is_empty() {
        body.push_str(&format!("<pre class=\"failed\">{}</pre>", esc(&text(&run["error"]))));
    }
    body.push_str("<h2>Steps</h2><table><tr><th>#</th><th>table</th><th>rows in</th><th>rows out</th><th>rejected</th><th>status</th><th>ms</th><th>note</th></tr>");
    for s in steps.as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}.{}</td><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td></tr>",
            esc(&text(&s["seq"])),
            esc(&text(&s["layer"])),
            esc(&text(&s["table_name"])),
            esc(&text(&s["rows_in"])),
            esc(&text(&s["rows_out"])),
            esc(&text(&s["rows_rejected"])),
            status_cell(&text(&s["status"])),
            esc(&text(&s["duration_ms"])),
            esc(&text(&s["message"])),
        ));
    }
    body.push_str("</table>");
    body.push_str(&data_docs(&checks, "This run checked no expectations."));
    Ok(page(&format!("Run {id}"), &body))
}

/// The Data Docs of one `validate()` call: what it checked, by whom, and
/// each expectation's result.
async fn validation(State(state): State<HttpState>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ConsoleError> {
    let (caller, _) = browser(&state, &headers)?;
    let ctx = session_of(&state, &caller)?;
    let checks = rows(&ctx, &validation_sql(&format!("validation_id = {}", quote(&id)))).await?;
    let Some(first) = checks.as_array().and_then(|c| c.first()).cloned() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no validate() call has id {id}, or you may not read its table")).into());
    };
    let table = text(&first["table_name"]);
    // The results are about a table: only its readers see them.
    if let Some((layer, name)) = table.split_once('.')
        && !caller.may(|p| p.can_read(layer, name))
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, format!("you may not read {table}")).into());
    }
    let mut body = format!(
        "<p><code>validate('{}')</code> called by {} at {} · <a href=\"/lineage?table={}\">lineage</a></p>",
        esc(&table),
        esc(&first["validated_by"].as_str().map(str::to_string).unwrap_or_else(|| "a local user".into())),
        esc(&text(&first["validated_at"])),
        esc(&url_part(&table)),
    );
    body.push_str(&data_docs(&checks, "This call checked no expectations."));
    Ok(page(&format!("Validation of {table}"), &body))
}

/// The stored expectation results matching `filter`, in the order checked.
fn validation_sql(filter: &str) -> String {
    format!(
        "SELECT table_name, expectation, columns, success, element_count, unexpected_count, unexpected_percent, missing_count, \
         partial_unexpected_list, observed_value, validated_at, validated_by FROM workbench.validations WHERE {filter} ORDER BY validated_at"
    )
}

/// Data Docs: a validation report of expectation results (rows of
/// [`validation_sql`]), like Great Expectations' validation results page.
fn data_docs(checks: &Value, when_empty: &str) -> String {
    let mut html = String::from("<h2 id=\"data-docs\">Data Docs: validation results</h2>");
    let list = checks.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        html.push_str(&format!("<p>{}</p>", esc(when_empty)));
        return html;
    }
    let passed = list.iter().filter(|c| c["success"] == Value::Bool(true)).count();
    html.push_str(&format!("<p>{passed} of {} expectations passed.</p>", list.len()));
    html.push_str("<table class=\"data-docs\"><tr><th>table</th><th>expectation</th><th>columns</th><th>success</th><th>observed</th><th>rows</th><th>unexpected</th><th>missing</th><th>sample of unexpected values</th></tr>");
    for c in &list {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{} ({}%)</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&text(&c["table_name"])),
            esc(&text(&c["expectation"])),
            esc(&text(&c["columns"])),
            status_cell(&text(&c["success"])),
            esc(&text(&c["observed_value"])),
            esc(&text(&c["element_count"])),
            esc(&text(&c["unexpected_count"])),
            esc(&c["unexpected_percent"].as_f64().map(|p| format!("{p:.2}")).unwrap_or_default()),
            esc(&text(&c["missing_count"])),
            esc(&text(&c["partial_unexpected_list"])),
        ));
    }
    html.push_str("</table>");
    html
}

#[derive(Deserialize)]
struct LineageQuery {
    table: String,
    /// Draw columns and the column-to-column edges too.
    #[serde(default)]
    columns: Option<String>,
}

/// One lineage edge; the columns are empty for a table-level edge.
struct Edge {
    from: (String, String),
    to: (String, String),
    transform: String,
}

async fn lineage(State(state): State<HttpState>, headers: HeaderMap, Query(q): Query<LineageQuery>) -> Result<Response, ConsoleError> {
    let (caller, _) = browser(&state, &headers)?;
    let ctx = session_of(&state, &caller)?;
    let columns = q.columns.as_deref().is_some_and(|c| !matches!(c, "" | "0" | "false" | "no"));
    let found = rows(&ctx, &format!("SELECT from_table, from_column, to_table, to_column, transform FROM lineage({}, 'both')", quote(&q.table))).await?;
    let edges: Vec<Edge> = found
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Edge {
            from: (text(&e["from_table"]), text(&e["from_column"])),
            to: (text(&e["to_table"]), text(&e["to_column"])),
            transform: text(&e["transform"]),
        })
        .filter(|e| e.from.1.is_empty() != columns)
        .collect();
    let toggle = if columns {
        format!("<a id=\"toggle-columns\" href=\"/lineage?table={}\">tables only</a>", esc(&url_part(&q.table)))
    } else {
        format!("<a id=\"toggle-columns\" href=\"/lineage?table={}&amp;columns=1\">show columns</a>", esc(&url_part(&q.table)))
    };
    let body = format!(
        "<p>Tables this one reads from are to the left, tables that read it to the right · {toggle}</p>{}",
        lineage_svg(&q.table, &edges)
    );
    Ok(page(&format!("Lineage of {}", q.table), &body))
}

/// `name` in at most `max` characters: its start and end around an ellipsis.
fn fit(name: &str, max: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= max {
        return name.to_string();
    }
    let tail = max / 2;
    let head = max - tail - 1;
    format!("{}…{}", chars[..head].iter().collect::<String>(), chars[chars.len() - tail..].iter().collect::<String>())
}

/// A left-to-right layered drawing: each table in the column of its
/// longest path from a source, as a box listing the columns that edges
/// touch; edges as lines between tables, or between columns.
fn lineage_svg(focus: &str, edges: &[Edge]) -> String {
    let mut nodes: Vec<String> = vec![focus.to_string()];
    let mut fields: std::collections::HashMap<String, Vec<String>> = Default::default();
    for e in edges {
        for (table, column) in [&e.from, &e.to] {
            if !nodes.contains(table) {
                nodes.push(table.clone());
            }
            let list = fields.entry(table.clone()).or_default();
            if !column.is_empty() && !list.contains(column) {
                list.push(column.clone());
            }
        }
    }
    for list in fields.values_mut() {
        list.sort();
    }
    let mut layer: std::collections::HashMap<&str, usize> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    // Longest-path layering (bounded: lineage has no cycles, but be safe).
    for _ in 0..nodes.len() {
        let mut changed = false;
        for e in edges {
            if e.from.0 == e.to.0 {
                continue;
            }
            let want = layer[e.from.0.as_str()] + 1;
            if layer[e.to.0.as_str()] < want {
                layer.insert(e.to.0.as_str(), want);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let (box_w, head_h, row_h, gap_x, gap_y) = (190.0, 30.0, 18.0, 70.0, 16.0);
    let height_of = |n: &str| head_h + fields.get(n).map_or(0, |c| c.len()) as f64 * row_h;
    let columns = layer.values().copied().max().unwrap_or(0) + 1;
    let mut next_y: Vec<f64> = vec![10.0; columns];
    let mut place: std::collections::HashMap<&str, (f64, f64)> = Default::default();
    let mut sorted: Vec<&String> = nodes.iter().collect();
    sorted.sort();
    for n in sorted {
        let c = layer[n.as_str()];
        place.insert(n.as_str(), (10.0 + c as f64 * (box_w + gap_x), next_y[c]));
        next_y[c] += height_of(n) + gap_y;
    }
    // Where an edge meets a box: a column's row, or the title.
    let anchor = |(table, column): &(String, String)| -> f64 {
        let y = place[table.as_str()].1;
        match fields.get(table).and_then(|c| c.iter().position(|f| f == column)) {
            Some(i) if !column.is_empty() => y + head_h + i as f64 * row_h + row_h / 2.0,
            _ => y + head_h / 2.0,
        }
    };
    let width = 20.0 + columns as f64 * (box_w + gap_x);
    let height = next_y.iter().cloned().fold(40.0, f64::max) + 10.0;
    let mut svg = format!(
        "<svg id=\"lineage-graph\" role=\"img\" aria-label=\"lineage graph\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    for e in edges {
        let (a, b) = (place[e.from.0.as_str()], place[e.to.0.as_str()]);
        let label = |(table, column): &(String, String)| if column.is_empty() { table.clone() } else { format!("{table}.{column}") };
        svg.push_str(&format!(
            "<line class=\"edge\" x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"#7a8794\" stroke-width=\"1.5\"><title>{} → {} ({})</title></line>",
            a.0 + box_w,
            anchor(&e.from),
            b.0,
            anchor(&e.to),
            esc(&label(&e.from)),
            esc(&label(&e.to)),
            esc(&e.transform),
        ));
    }
    for n in &nodes {
        let (x, y) = place[n.as_str()];
        let fill = if n == focus { "#1d2733" } else { "#e8eef5" };
        let ink = if n == focus { "#fff" } else { "#1d2733" };
        svg.push_str(&format!(
            "<g class=\"node\"><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{box_w}\" height=\"{:.0}\" rx=\"4\" fill=\"{fill}\" stroke=\"#3b6ea8\"/>\
             <a href=\"/lineage?table={}\"><text x=\"{:.0}\" y=\"{:.0}\" font-size=\"12\" font-weight=\"600\" fill=\"{ink}\">{}</text></a>",
            height_of(n),
            esc(&url_part(n)),
            x + 8.0,
            y + 19.0,
            esc(&fit(n, 27))
        ));
        svg.push_str(&format!("<title>{}</title>", esc(n)));
        for (i, column) in fields.get(n).into_iter().flatten().enumerate() {
            svg.push_str(&format!(
                "<text class=\"column\" x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" fill=\"{ink}\">{}</text>",
                x + 14.0,
                y + head_h + i as f64 * row_h + 13.0,
                esc(column)
            ));
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    svg
}
