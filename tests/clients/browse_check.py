"""The start-up and browsing queries BI and SQL tools send, verbatim in
shape: pgAdmin, pgcli and Grafana (psycopg2, text protocol) and DBeaver and
Metabase (pgjdbc; replayed here with psycopg 3 server-side prepared
statements, i.e. the extended protocol as JDBC uses it).

Usage: python3 browse_check.py PORT
"""
import sys

import psycopg
import psycopg2

from checks import check, expect, finish

port = int(sys.argv[1])
pg2 = psycopg2.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench")
pg2.autocommit = True
pg3 = psycopg.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench", autocommit=True)


def text_query(sql, params=None):
    with pg2.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def prepared(sql, params=None):
    with pg3.cursor() as cur:
        cur.execute(sql, params, prepare=True)
        return cur.fetchall() if cur.description else []


def prepared_dicts(sql, params=None):
    """Rows as dicts keyed by column name (the last column of a name wins)."""
    with pg3.cursor() as cur:
        cur.execute(sql, params, prepare=True)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


# --- pgAdmin 4 ---------------------------------------------------------------
@check("pgAdmin: database properties")
def _():
    rows = text_query(
        "SELECT db.oid as did, db.datname, db.datallowconn, pg_catalog.pg_encoding_to_char(db.encoding) AS serverencoding, "
        "pg_catalog.has_database_privilege(db.oid, 'CREATE') as cancreate, datistemplate "
        "FROM pg_catalog.pg_database db WHERE db.datname = current_database()")
    expect(len(rows) == 1 and rows[0][1] == "workbench" and rows[0][3] == "UTF8", rows)


@check("pgAdmin: current role")
def _():
    rows = text_query(
        "SELECT roles.oid as id, roles.rolname as name, roles.rolsuper as is_superuser, "
        "CASE WHEN roles.rolsuper THEN true ELSE roles.rolcreaterole END as can_create_role, "
        "CASE WHEN roles.rolsuper THEN true ELSE roles.rolcreatedb END as can_create_db "
        "FROM pg_catalog.pg_roles as roles WHERE rolname = current_user")
    expect(len(rows) == 1 and rows[0][1] == "workbench", rows)


@check("pgAdmin: schemas")
def _():
    rows = text_query(
        "SELECT nsp.oid, nsp.nspname as name, pg_catalog.has_schema_privilege(nsp.oid, 'CREATE') as can_create, "
        "pg_catalog.has_schema_privilege(nsp.oid, 'USAGE') as has_usage, des.description "
        "FROM pg_catalog.pg_namespace nsp LEFT OUTER JOIN pg_catalog.pg_description des ON "
        "(des.objoid=nsp.oid AND des.classoid='pg_namespace'::regclass) "
        "WHERE nspname NOT LIKE E'pg\\\\_%' ORDER BY nspname")
    names = [r[1] for r in rows]
    expect({"bronze", "silver", "gold"} <= set(names) and not any(n.startswith("pg_") for n in names), names)


@check("pgAdmin: tables of a schema")
def _():
    rows = text_query(
        "SELECT rel.oid, rel.relname AS name, "
        "(SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid=rel.oid AND tgisinternal = FALSE) AS triggercount, "
        "pg_catalog.obj_description(rel.oid, 'pg_class') AS description "
        "FROM pg_catalog.pg_class rel WHERE rel.relkind IN ('r','s','t','p') "
        "AND rel.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s) "
        "ORDER BY rel.relname", ("silver",))
    expect({"events", "orders"} <= {r[1] for r in rows}, rows)


# --- pgcli -------------------------------------------------------------------
@check("pgcli: search path and schemata")
def _():
    path = [r[0] for r in text_query("SELECT * FROM unnest(current_schemas(true))")]
    expect(path[0] == "pg_catalog" and "public" in path, path)
    names = [r[0] for r in text_query("SELECT n.nspname schema_name FROM pg_catalog.pg_namespace n ORDER BY 1")]
    expect("silver" in names, names)


@check("pgcli: tables and columns")
def _():
    rows = text_query(
        "SELECT n.nspname schema_name, c.relname table_name FROM pg_catalog.pg_class c "
        "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = ANY(%s) ORDER BY 1,2", (["r", "p", "f"],))
    expect(("silver", "orders") in rows and ("gold", "daily_orders") in rows, rows)
    rows = text_query(
        "SELECT nsp.nspname schema_name, cls.relname table_name, att.attname column_name, "
        "att.atttypid::regtype::text type_name, att.atthasdef AS has_default, "
        "pg_catalog.pg_get_expr(def.adbin, def.adrelid, true) as default "
        "FROM pg_catalog.pg_attribute att "
        "INNER JOIN pg_catalog.pg_class cls ON att.attrelid = cls.oid "
        "INNER JOIN pg_catalog.pg_namespace nsp ON cls.relnamespace = nsp.oid "
        "LEFT OUTER JOIN pg_attrdef def ON def.adrelid = att.attrelid AND def.adnum = att.attnum "
        "WHERE cls.relkind = ANY(%s) AND NOT att.attisdropped AND att.attnum > 0 "
        "ORDER BY 1, 2, att.attnum", (["r", "p", "f"],))
    orders = [(r[2], r[3]) for r in rows if r[:2] == ("silver", "orders")]
    expect(orders == [("id", "bigint"), ("region", "text"), ("amount", "numeric"), ("ordered_on", "date")], orders)


@check("pgcli: datatypes and functions")
def _():
    text_query(
        "SELECT n.nspname schema_name, t.typname type_name FROM pg_catalog.pg_type t "
        "INNER JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
        "WHERE ( t.typrelid = 0 OR ( SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid ) ) "
        "AND NOT EXISTS( SELECT 1 FROM pg_catalog.pg_type el WHERE el.oid = t.typelem AND el.typarray = t.oid ) "
        "AND n.nspname <> 'pg_catalog' AND n.nspname <> 'information_schema' ORDER BY 1, 2")
    # pgcli's function listing, verbatim (pgcli/pgexecute.py).
    rows = text_query(
        "SELECT n.nspname schema_name, p.proname func_name, p.proargnames, "
        "COALESCE(proallargtypes::regtype[], proargtypes::regtype[])::text[], p.proargmodes, "
        "prorettype::regtype::text return_type, p.prokind = 'a' is_aggregate, p.prokind = 'w' is_window, "
        "p.proretset is_set_returning, d.deptype = 'e' is_extension, pg_get_expr(proargdefaults, 0) AS arg_defaults "
        "FROM pg_catalog.pg_proc p INNER JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
        "LEFT JOIN pg_depend d ON d.objid = p.oid and d.deptype = 'e' "
        "WHERE p.prorettype::regtype != 'trigger'::regtype ORDER BY 1, 2")
    lineage = [r for r in rows if r[1] == "lineage" and len(r[3]) == 3]
    expect(len(lineage) == 1, [r for r in rows if r[1] == "lineage"])
    _, _, names, types, _, returns = lineage[0][:6]
    expect(names == ["table_name", "direction", "depth"] and types == ["text", "text", "integer"], lineage[0])
    expect(returns == "record", returns)


# --- Grafana -----------------------------------------------------------------
@check("Grafana: version, tables, columns, time macros")
def _():
    (version,), = text_query("SELECT current_setting('server_version_num')::int/100 as version")
    expect(version == 1600, version)
    text_query("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'")
    rows = text_query(
        "select quote_ident(table_schema) || '.' || quote_ident(table_name) as \"table\" from information_schema.tables "
        "where quote_ident(table_schema) not in ('information_schema', 'pg_catalog', 'workbench') "
        "and table_type = 'BASE TABLE' order by 1")
    expect("silver.events" in [r[0] for r in rows], rows)
    rows = text_query(
        "select quote_ident(column_name) as \"column\", data_type as \"type\" from information_schema.columns "
        "where quote_ident(table_schema) = 'silver' and quote_ident(table_name) = 'events' order by ordinal_position")
    expect(rows[2] == ("happened_at", "timestamp without time zone"), rows)
    rows = text_query(
        "SELECT floor(extract(epoch from happened_at)/86400)*86400 AS \"time\", kind, count(*) "
        "FROM silver.events WHERE happened_at BETWEEN '2024-01-02T00:00:00Z' AND '2024-01-03T23:59:59Z' "
        "GROUP BY 1, 2 ORDER BY 1, 2")
    expect(len(rows) == 6 and rows[0][0] == 1704153600 and rows[0][2] == 8, rows)
    rows = text_query(
        "SELECT sub.t FROM (SELECT timestamp 'epoch' + 1704153600 * interval '1 second' AS t) AS sub")
    expect(str(rows[0][0]) == "2024-01-02 00:00:00", rows)


# --- DBeaver (pgjdbc, extended protocol) ---------------------------------------
@check("DBeaver: connection bootstrap")
def _():
    # search_path is "$user", public and a schema named like the user exists.
    rows = prepared("SELECT current_schema(),session_user")
    expect(rows == [("workbench", "workbench")], rows)
    rows = prepared("select * from pg_catalog.pg_settings where name=%s", ("standard_conforming_strings",))
    expect(len(rows) == 1 and rows[0][1] == "on", rows)
    rows = prepared("SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datname=%s", ("workbench",))
    expect(len(rows) == 1, rows)


@check("DBeaver: schemas with descriptions")
def _():
    rows = prepared_dicts(
        "SELECT n.oid,n.*,d.description FROM pg_catalog.pg_namespace n "
        "LEFT OUTER JOIN pg_catalog.pg_description d ON d.objoid=n.oid AND d.objsubid=0 AND d.classoid='pg_namespace'::regclass "
        "ORDER BY nspname")
    expect("silver" in [r["nspname"] for r in rows], rows)


@check("DBeaver: tables and attributes")
def _():
    (ns,), = prepared("SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = %s", ("silver",))
    rows = prepared_dicts(
        "SELECT c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr, "
        "pg_catalog.pg_get_partkeydef(c.oid) as partition_key "
        "FROM pg_catalog.pg_class c LEFT OUTER JOIN pg_catalog.pg_description d "
        "ON d.objoid=c.oid AND d.objsubid=0 AND d.classoid='pg_class'::regclass "
        "WHERE c.relnamespace=%s AND c.relkind not in ('i','I','c')", (ns,))
    tables = {r["relname"]: r["oid"] for r in rows}
    expect({"orders", "events"} <= set(tables), tables)
    rows = prepared_dicts(
        "SELECT c.relname,a.*,pg_catalog.pg_get_expr(ad.adbin, ad.adrelid, true) as def_value,dsc.description "
        "FROM pg_catalog.pg_attribute a INNER JOIN pg_catalog.pg_class c ON (a.attrelid=c.oid) "
        "LEFT OUTER JOIN pg_catalog.pg_attrdef ad ON (a.attrelid=ad.adrelid AND a.attnum = ad.adnum) "
        "LEFT OUTER JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid) "
        "WHERE NOT a.attisdropped AND c.relkind not in ('i','I','c') AND c.oid=%s ORDER BY a.attnum",
        (tables["orders"],))
    expect([r["attname"] for r in rows if r["attnum"] > 0] == ["id", "region", "amount", "ordered_on"], rows)


@check("DBeaver: data types")
def _():
    rows = prepared_dicts(
        "SELECT t.oid,t.*,c.relkind,format_type(nullif(t.typbasetype, 0), t.typtypmod) as base_type_name, d.description "
        "FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_type et ON et.oid=t.typelem "
        "LEFT OUTER JOIN pg_catalog.pg_class c ON c.oid=t.typrelid "
        "LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid=d.objoid "
        "WHERE t.typname IS NOT NULL AND (c.relkind IS NULL OR c.relkind = 'c') AND (et.typcategory IS NULL OR et.typcategory <> 'C')")
    expect(any(r["typname"] == "numeric" for r in rows), len(rows))


# --- Metabase (pgjdbc, extended protocol) -------------------------------------
@check("Metabase: sync tables, privileges and fields")
def _():
    rows = prepared(
        "SELECT n.nspname AS schema, c.relname AS name, "
        "pg_catalog.has_table_privilege(current_user, concat('\"', n.nspname, '\"', '.', '\"', c.relname, '\"'), 'SELECT') AS select "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname = %s ORDER BY 2", ("gold",))
    expect(rows == [("gold", "daily_orders", True)], rows)
    rows = prepared(
        "SELECT c.column_name AS name, c.udt_name AS \"database-type\", c.ordinal_position - 1 AS \"database-position\", "
        "c.table_schema AS \"table-schema\", c.table_name AS \"table-name\", c.is_nullable = 'NO' AS \"database-required\" "
        "FROM information_schema.columns c WHERE c.table_schema = %s AND c.table_name = %s ORDER BY c.ordinal_position",
        ("silver", "orders"))
    expect([(r[0], r[1], r[2]) for r in rows] == [("id", "int8", 0), ("region", "text", 1), ("amount", "numeric", 2), ("ordered_on", "date", 3)], rows)
    (tz,), = prepared("SELECT current_setting('TIMEZONE') AS timezone")
    expect(tz in ("UTC", "Etc/UTC"), tz)


# --- settings every client reads ---------------------------------------------
@check("SHOW values are Postgres values")
def _():
    expect(text_query("SHOW standard_conforming_strings") == [("on",)], "scs")
    expect(text_query("SHOW transaction isolation level") == [("read committed",)], text_query("SHOW transaction isolation level"))
    expect(text_query("SHOW search_path") == [('"$user", public',)], text_query("SHOW search_path"))
    expect(text_query("SHOW timezone")[0][0] in ("UTC", "Etc/UTC"), text_query("SHOW timezone"))
    expect(text_query("SELECT current_setting('server_version_num')") == [("160006",)], "server_version_num")


@check("SET search_path changes name resolution")
def _():
    with psycopg2.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench") as c:
        c.autocommit = True
        cur = c.cursor()
        cur.execute("SET search_path TO silver, public")
        cur.execute("SELECT current_schema(), count(*) FROM orders")
        expect(cur.fetchone() == ("silver", 300), "resolution")
        cur.execute("SHOW search_path")
        expect(cur.fetchone()[0] == "silver, public", "show")
        cur.execute("SELECT current_schemas(false)")
        expect(cur.fetchone()[0] == ["silver", "public"], "current_schemas")
        cur.execute("SET search_path = gold")
        cur.execute("SELECT count(*) FROM daily_orders")
        expect(cur.fetchone()[0] > 0, "gold")


@check("session statements")
def _():
    with psycopg2.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench") as c:
        c.autocommit = True
        cur = c.cursor()
        for stmt in ("BEGIN ISOLATION LEVEL REPEATABLE READ", "SAVEPOINT a", "RELEASE SAVEPOINT a",
                     "SAVEPOINT b", "ROLLBACK TO SAVEPOINT b", "COMMIT", "DISCARD ALL",
                     "SET application_name = 'x'", "RESET ALL", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"):
            cur.execute(stmt)


@check("catalog functions")
def _():
    (oid,), = text_query("SELECT 'silver.orders'::regclass::oid")
    rows = text_query(
        "SELECT format_type(a.atttypid, a.atttypmod), pg_get_serial_sequence('silver.orders', a.attname), "
        "pg_total_relation_size(a.attrelid) IS NOT NULL FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum = 3", (oid,))
    expect(rows == [("numeric(12,2)", None, True)], rows)
    rows = text_query("SELECT c.oid::regclass::text, a.atttypid::regtype::text FROM pg_class c "
                      "JOIN pg_attribute a ON a.attrelid = c.oid WHERE c.oid = %s AND a.attnum = 3", (oid,))
    expect(rows == [("silver.orders", "numeric")], rows)
    rows = text_query("SELECT p.oid::regproc::text FROM pg_proc p WHERE p.oid = 'now'::regproc")
    expect(rows == [("now",)], rows)
    expect(text_query("SELECT pg_table_is_visible(%s), pg_type_is_visible(20)", (oid,)) == [(False, True)], "visible")
    rows = text_query("SELECT (information_schema._pg_expandarray(ARRAY['a','b'])).n")
    expect([r[0] for r in rows] == [1, 2], rows)
    rows = text_query("SELECT generate_subscripts(ARRAY[10,20,30], 1)")
    expect([r[0] for r in rows] == [1, 2, 3], rows)
    expect(text_query("SELECT count(*), 1 + 1, now() IS NOT NULL") == [(1, 2, True)], "labels")
    expect(text_query("SELECT to_char(to_timestamp('2024-03-05 07:08:09.123456', 'YYYY-MM-DD HH24:MI:SS.US'), 'YYYY-MM-DD HH24:MI:SS.US')")
           == [("2024-03-05 07:08:09.123456",)], "to_timestamp")
    expect(str(text_query("SELECT to_date('05/03/2024', 'DD/MM/YYYY')")[0][0]) == "2024-03-05", "to_date")
    expect(str(text_query("SELECT timestamp 'epoch' + 1709622489 * interval '1 second'")[0][0]) == "2024-03-05 07:08:09", "epoch")


@check("OIDs are stable across connections")
def _():
    a = text_query("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname='silver' AND relname='orders'")
    b = prepared("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname='silver' AND relname='orders'")
    expect(a == b and len(a) == 1, (a, b))
    print("silver.orders oid", a[0][0])


finish()
