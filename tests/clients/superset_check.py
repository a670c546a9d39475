"""Apache Superset itself (run with the Superset virtualenv's python) against
Workbench, through Superset's own REST API in-process (Flask test client):
add the database, test the connection, list schemas and tables, add a dataset
(columns and types fetched from Workbench), run a SQL Lab query and a
time-series chart query with a time filter and a group-by.

Usage: SUPERSET_HOME=DIR python superset_check.py PORT
Superset's own metadata database is initialised once under SUPERSET_HOME
(a template reused by later runs); each run works on a fresh copy.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from checks import check, expect, finish

port = int(sys.argv[1])
# Kept inside the virtualenv, so a new Superset version gets a new template.
home = os.environ.get("SUPERSET_HOME") or os.path.join(sys.prefix, "superset-home")
os.makedirs(home, exist_ok=True)
template = os.path.join(home, "superset-template.db")
work = tempfile.mkdtemp(prefix="superset-")
config_path = os.path.join(work, "superset_config.py")


def write_config(db_path):
    with open(config_path, "w") as f:
        f.write(
            f"SECRET_KEY = 'workbench-compat-test-only'\n"
            f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{db_path}'\n"
            "WTF_CSRF_ENABLED = False\n"
            "TALISMAN_ENABLED = False\n"
            "RATELIMIT_STORAGE_URI = 'memory://'\n"
            "CACHE_CONFIG = {'CACHE_TYPE': 'NullCache'}\n"
            "DATA_CACHE_CONFIG = {'CACHE_TYPE': 'NullCache'}\n"
        )


env = dict(os.environ, SUPERSET_CONFIG_PATH=config_path, FLASK_APP="superset", SUPERSET_HOME=home)
if not os.path.exists(template):
    building = template + ".building"
    write_config(building)
    for cmd in (
        ["db", "upgrade"],
        ["fab", "create-admin", "--username", "admin", "--password", "admin",
         "--firstname", "Ada", "--lastname", "Admin", "--email", "admin@example.com"],
        ["init"],
    ):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "superset"), *cmd], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    os.replace(building, template)

db_path = os.path.join(work, "superset.db")
shutil.copy(template, db_path)
write_config(db_path)
os.environ.update(env)

from superset.app import create_app  # noqa: E402

app = create_app()
app.config["TESTING"] = True
client = app.test_client()
uri = f"postgresql://workbench@127.0.0.1:{port}/workbench"


def call(method, path, body=None, ok=(200, 201)):
    resp = client.open(path, method=method, json=body, headers=headers, follow_redirects=True)
    expect(resp.status_code in ok, f"{method} {path} -> {resp.status_code}: {resp.get_data(as_text=True)[:2000]}")
    return resp.get_json()


headers = {}
state = {}
login = client.post("/api/v1/security/login",
                    json={"username": "admin", "password": "admin", "provider": "db", "refresh": True})
headers["Authorization"] = "Bearer " + login.get_json()["access_token"]

@check("test connection")
def _():
    call("POST", "/api/v1/database/test_connection/", {"sqlalchemy_uri": uri, "database_name": "workbench"})

@check("add database")
def _():
    out = call("POST", "/api/v1/database/",
               {"database_name": "workbench", "sqlalchemy_uri": uri, "expose_in_sqllab": True})
    state["db"] = out["id"]

@check("list schemas")
def _():
    schemas = call("GET", f"/api/v1/database/{state['db']}/schemas/?q=(force:!t)")["result"]
    expect({"bronze", "silver", "gold"} <= set(schemas), schemas)

@check("list tables")
def _():
    tables = call("GET", f"/api/v1/database/{state['db']}/tables/?q=(force:!t,schema_name:silver)")["result"]
    names = {t["value"] for t in tables}
    expect({"orders", "events"} <= names, tables)

@check("table metadata")
def _():
    meta = call("GET", f"/api/v1/database/{state['db']}/table_metadata/?name=events&schema=silver")
    cols = {c["name"]: c["type"] for c in meta["columns"]}
    expect(cols.get("happened_at") == "TIMESTAMP" and cols.get("amount") == "NUMERIC", cols)

@check("add dataset with columns and types")
def _():
    out = call("POST", "/api/v1/dataset/", {"database": state["db"], "schema": "silver", "table_name": "events"})
    state["ds"] = out["id"]
    ds = call("GET", f"/api/v1/dataset/{state['ds']}")["result"]
    cols = {c["column_name"]: (c["type"], c["is_dttm"]) for c in ds["columns"]}
    expect(cols["happened_at"] == ("TIMESTAMP WITHOUT TIME ZONE", True), cols)
    expect(cols["amount"][0] == "NUMERIC(10, 2)" and cols["kind"][0] == "TEXT", cols)
    expect(cols["id"][0] == "INTEGER" and not cols["id"][1], cols)

@check("SQL Lab query")
def _():
    out = call("POST", "/api/v1/sqllab/execute/", {
        "database_id": state["db"], "schema": "silver", "runAsync": False, "client_id": "wbcheck1",
        "sql": "select kind, count(*) as n, sum(amount) as total from silver.events group by kind order by kind",
    })
    expect(out["status"] == "success", out)
    got = [(r["kind"], r["n"], float(r["total"])) for r in out["data"]]
    expect(got == [("click", 40, 2574.0), ("search", 40, 2618.0), ("view", 40, 2662.0)], got)

@check("time-series chart with time filter and group-by")
def _():
    out = call("POST", "/api/v1/chart/data", {
        "datasource": {"id": state["ds"], "type": "table"},
        "force": True,
        "queries": [{
            "columns": [
                {"columnType": "BASE_AXIS", "sqlExpression": "happened_at", "label": "happened_at",
                 "expressionType": "SQL", "timeGrain": "P1D"},
                "kind",
            ],
            "metrics": [{"expressionType": "SIMPLE", "column": {"column_name": "value"},
                         "aggregate": "SUM", "label": "sum_value"}, "count"],
            "filters": [{"col": "happened_at", "op": "TEMPORAL_RANGE",
                         "val": "2024-01-02T00:00:00 : 2024-01-04T00:00:00"}],
            "orderby": [["count", False]],
            "row_limit": 1000,
        }],
        "result_format": "json",
        "result_type": "full",
    })
    result = out["result"][0]
    expect(not result.get("error"), result.get("error"))
    rows = result["data"]
    expect(len(rows) == 6, json.dumps(rows)[:1000])
    expect(all(r["count"] == 8 for r in rows), rows)
    days = sorted({r["happened_at"] for r in rows})
    expect(len(days) == 2, days)
    expect("TO_TIMESTAMP" in result["query"] or "to_timestamp" in result["query"].lower(), result["query"])


finish()
