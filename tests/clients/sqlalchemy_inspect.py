"""SQLAlchemy (1.4 is what Superset uses, 2.x the current one) with psycopg2:
first connect, every inspector method a BI tool calls, pandas.read_sql and
bound parameters, against a Workbench serving the BI fixture lake.

Usage: python3 sqlalchemy_inspect.py PORT
"""
import sys

import sqlalchemy
from sqlalchemy import create_engine, inspect, text

from checks import check, expect, finish

port = int(sys.argv[1])
url = f"postgresql+psycopg2://workbench@127.0.0.1:{port}/workbench"
engine = create_engine(url)
print("sqlalchemy", sqlalchemy.__version__)


@check("first connect and version")
def _():
    with engine.connect() as conn:
        version = conn.execute(text("select version()")).scalar()
        expect(version.startswith("PostgreSQL 16"), version)
    expect(engine.dialect.server_version_info[0] == 16, engine.dialect.server_version_info)


insp = inspect(engine)


@check("get_schema_names")
def _():
    schemas = insp.get_schema_names()
    for s in ("bronze", "silver", "gold", "workbench"):
        expect(s in schemas, schemas)


@check("get_table_names")
def _():
    expect(set(insp.get_table_names(schema="silver")) >= {"orders", "events"}, insp.get_table_names(schema="silver"))
    expect("daily_orders" in insp.get_table_names(schema="gold"), insp.get_table_names(schema="gold"))


@check("get_view_names")
def _():
    expect(isinstance(insp.get_view_names(schema="silver"), list), "not a list")


@check("get_columns")
def _():
    cols = {c["name"]: c for c in insp.get_columns("orders", schema="silver")}
    expect(list(cols) == ["id", "region", "amount", "ordered_on"], list(cols))
    expect(str(cols["id"]["type"]) == "BIGINT", cols["id"]["type"])
    expect(str(cols["amount"]["type"]) == "NUMERIC(12, 2)", cols["amount"]["type"])
    expect(str(cols["ordered_on"]["type"]) == "DATE", cols["ordered_on"]["type"])
    expect(cols["id"]["nullable"] is False and cols["region"]["nullable"] is True, cols)
    types = {c["name"]: c["type"] for c in insp.get_columns("events", schema="silver")}
    ev = {name: str(t) for name, t in types.items()}
    expect(ev["happened_at"] == "TIMESTAMP" and not types["happened_at"].timezone, ev)
    expect(ev["logged_at"] == "TIMESTAMP" and types["logged_at"].timezone, ev)
    expect(ev["value"].replace("_", " ") == "DOUBLE PRECISION" and ev["ok"] == "BOOLEAN" and ev["id"] == "INTEGER", ev)
    expect(ev["small"] == "SMALLINT" and ev["amount"] == "NUMERIC(10, 2)", ev)


@check("get_pk_constraint")
def _():
    pk = insp.get_pk_constraint("orders", schema="silver")
    expect(pk["constrained_columns"] == [], pk)


@check("get_foreign_keys")
def _():
    expect(insp.get_foreign_keys("orders", schema="silver") == [], "fks")


@check("get_indexes")
def _():
    expect(insp.get_indexes("orders", schema="silver") == [], "indexes")


@check("get_unique_constraints")
def _():
    expect(insp.get_unique_constraints("orders", schema="silver") == [], "uniques")


@check("get_check_constraints")
def _():
    expect(insp.get_check_constraints("orders", schema="silver") == [], "checks")


@check("get_table_comment")
def _():
    comment = insp.get_table_comment("orders", schema="silver")
    expect("text" in comment, comment)


@check("has_table")
def _():
    with engine.connect() as conn:
        expect(engine.dialect.has_table(conn, "orders", schema="silver"), "silver.orders missing")
        expect(not engine.dialect.has_table(conn, "nope", schema="silver"), "silver.nope present")


@check("bound parameters")
def _():
    with engine.connect() as conn:
        n = conn.execute(text("select count(*) from silver.orders where region = :r and id < :n"), {"r": "north", "n": 30}).scalar()
        expect(n == 10, n)
        amount = conn.execute(text("select amount from silver.orders where id = :id"), {"id": 7}).scalar()
        expect(str(amount) == "10.75", amount)


@check("pandas.read_sql")
def _():
    import pandas as pd

    with engine.connect() as conn:
        df = pd.read_sql(text("select id, region, amount, ordered_on from silver.orders order by id limit 5"), conn)
    expect(len(df) == 5 and list(df.columns) == ["id", "region", "amount", "ordered_on"], df)
    expect(df["id"].tolist() == [0, 1, 2, 3, 4], df["id"].tolist())
    with engine.connect() as conn:
        ev = pd.read_sql(text("select happened_at from silver.events order by id limit 2"), conn)
    expect(str(ev["happened_at"][1]) == "2024-01-01 01:00:00", ev["happened_at"].tolist())


finish()
