"""The table functions through psycopg2 with bound parameters.

Usage: python3 functions_psycopg2.py PORT
"""
import json
import sys

import psycopg2

conn = psycopg2.connect(host="127.0.0.1", port=int(sys.argv[1]), user="workbench", dbname="workbench")
conn.autocommit = True
cur = conn.cursor()

cur.execute("SELECT count(*) FROM preview(%s, %s)", ("dipres_ejecucion", "landing/dipres_ejecucion/ejecucion_2023.xlsx"))
print("preview_rows", cur.fetchone()[0])

cur.execute("SELECT expectation, success FROM validate(%s) ORDER BY 1", ("silver.dipres_ejecucion",))
print("validate", json.dumps(cur.fetchall()))

cur.execute("SELECT count(*) FROM lineage(%s, %s, %s)", ("gold.mart_ejecucion_mensual", "up", 3))
print("lineage_edges", cur.fetchone()[0])

cur.execute("SELECT column_name FROM profile(%s) WHERE column_name = %s", ("silver.gl_accounts", "nombre"))
print("profile", cur.fetchone()[0])

cur.execute("SELECT version, operation FROM history(%s)", ("gold.mart_ejecucion_mensual",))
print("history", json.dumps(cur.fetchall()))

try:
    cur.execute("SELECT * FROM history(%s)", ("silver.does_not_exist",))
except psycopg2.Error as err:
    print("error", err.pgcode)
