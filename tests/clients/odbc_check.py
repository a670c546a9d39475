"""psqlODBC (the driver Excel, Power BI and Tableau use on Windows desktops,
here Debian's odbc-postgresql through unixODBC) driven with pyodbc: catalog
functions, typed results, bound parameters, SQLSTATEs, and the driver's
declare/fetch mode, which reads big results through a server-side cursor.

Usage: python3 odbc_check.py PORT
"""
import datetime
import decimal
import sys

import pyodbc

from checks import check, expect, finish

port = sys.argv[1]
BASE = f"DRIVER={{PostgreSQL Unicode}};SERVER=127.0.0.1;PORT={port};DATABASE=workbench;UID=workbench;PWD=;"


def connect(extra="", autocommit=True):
    # Autocommit is ODBC's default and what Excel, Power BI and Tableau use.
    return pyodbc.connect(BASE + extra, autocommit=autocommit, timeout=10)


conn = connect()
print("driver", conn.getinfo(pyodbc.SQL_DRIVER_NAME), conn.getinfo(pyodbc.SQL_DRIVER_VER),
      "server", conn.getinfo(pyodbc.SQL_DBMS_VER), flush=True)


@check("SQLTables: the lake's schemas and tables")
def _():
    tables = {(r.table_schem, r.table_name) for r in conn.cursor().tables(tableType="TABLE")}
    expect(("silver", "orders") in tables and ("gold", "daily_orders") in tables, sorted(tables)[:20])
    silver = [r.table_name for r in conn.cursor().tables(schema="silver", tableType="TABLE")]
    expect("orders" in silver and "events" in silver, silver)


@check("SQLColumns: names, types, nullability")
def _():
    cols = [(r.column_name, r.type_name, r.nullable) for r in conn.cursor().columns(table="orders", schema="silver")]
    names = [c[0] for c in cols]
    expect(names == ["id", "region", "amount", "ordered_on"], cols)
    types = {c[0]: c[1] for c in cols}
    expect(types["id"] == "int8" and types["amount"] == "numeric" and types["ordered_on"] == "date", types)


@check("typed results")
def _():
    row = conn.cursor().execute("SELECT id, region, amount, ordered_on FROM silver.orders WHERE id = 7").fetchone()
    expect(row.id == 7 and row.region == "south", row)
    expect(row.amount == decimal.Decimal("10.75"), row.amount)
    expect(isinstance(row.ordered_on, datetime.date), type(row.ordered_on))


@check("bound parameters")
def _():
    cur = conn.cursor()
    n = cur.execute("SELECT count(*) FROM silver.orders WHERE region = ? AND amount > ?", "south", 100).fetchone()[0]
    expect(n == 78, n)
    rows = cur.execute("SELECT id FROM silver.orders WHERE id IN (?, ?) ORDER BY id", 3, 5).fetchall()
    expect([r.id for r in rows] == [3, 5], rows)


@check("errors carry their SQLSTATE and the connection goes on")
def _():
    cur = conn.cursor()
    try:
        cur.execute("SELECT * FROM silver.no_such_table")
    except pyodbc.Error as err:
        expect(err.args[0] == "42P01", err.args)
    else:
        raise AssertionError("no error")
    expect(cur.execute("SELECT 1").fetchone()[0] == 1, "connection unusable after an error")


@check("declare/fetch mode: a big result through a server-side cursor")
def _():
    big = connect("UseDeclareFetch=1;Fetch=25;", autocommit=False)
    cur = big.cursor()
    cur.execute("SELECT id, amount FROM silver.orders ORDER BY id")
    ids = []
    while True:
        chunk = cur.fetchmany(40)
        if not chunk:
            break
        ids.extend(r.id for r in chunk)
    expect(ids == list(range(300)), f"{len(ids)} rows, first {ids[:3]}")
    big.commit()
    # Still usable for a second cursor in the same session.
    n = cur.execute("SELECT count(*) FROM silver.orders WHERE region = ?", "east").fetchone()[0]
    expect(n == 100, n)
    big.close()


finish()
