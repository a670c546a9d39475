"""SQLAlchemy (what Superset uses) connects to Workbench and lists its schemas.

Usage: python3 sqlalchemy_connect.py PORT
Exits non-zero with the reason on any failure.
"""
import sys

from sqlalchemy import create_engine, inspect, text

port = int(sys.argv[1])
engine = create_engine(f"postgresql+psycopg2://workbench@127.0.0.1:{port}/workbench")
with engine.connect() as conn:
    version = conn.execute(text("select version()")).scalar()
    assert version.startswith("PostgreSQL 16"), version
    total = conn.execute(
        text("select count(*) from silver.orders where region = :r"), {"r": "north"}
    ).scalar()
    print("north_orders", total)

schemas = inspect(engine).get_schema_names()
for expected in ("bronze", "silver", "gold"):
    assert expected in schemas, schemas
print("schemas", ",".join(sorted(schemas)))
print("dialect_version", engine.dialect.server_version_info)
