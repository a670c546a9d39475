"""psycopg 3: binary results, named server-side cursors, COPY ... TO STDOUT.

Usage: python3 psycopg3_check.py PORT
"""
import datetime
import decimal
import sys

import psycopg

from checks import check, expect, finish

port = int(sys.argv[1])
conn = psycopg.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench", autocommit=True)


@check("binary results")
def _():
    with conn.cursor(binary=True) as cur:
        cur.execute("select id, kind, happened_at, logged_at, value, ok, small, day, amount "
                    "from silver.events where id = %s", (5,))
        row = cur.fetchone()
    expect(row[0] == 5 and row[1] == "view", row)
    expect(row[2] == datetime.datetime(2024, 1, 1, 5, 0), row[2])
    expect(row[3] == datetime.datetime(2024, 1, 1, 5, 0, tzinfo=datetime.timezone.utc), row[3])
    expect(row[4] == 2.5 and row[5] is False and row[6] == 5 and row[7] == datetime.date(2024, 1, 1), row)
    expect(row[8] == decimal.Decimal("5.50"), row[8])


@check("text results and parameters")
def _():
    with conn.cursor() as cur:
        cur.execute("select region, count(*) from silver.orders where amount > %s group by region order by region",
                    (decimal.Decimal("400.00"),))
        rows = cur.fetchall()
        expect([r[0] for r in rows] == ["east", "north", "south"], rows)
        expect(cur.description[1].name == "count", cur.description)


@check("named server-side cursor")
def _():
    with psycopg.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench") as tx:
        with tx.cursor(name="events_cur") as cur:
            cur.itersize = 25
            cur.execute("select id, happened_at from silver.events order by id")
            first = cur.fetchmany(30)
            rest = cur.fetchall()
        expect([r[0] for r in first] == list(range(30)), first[:3])
        expect(len(rest) == 90 and rest[-1][0] == 119, len(rest))


@check("copy to stdout")
def _():
    with conn.cursor() as cur:
        with cur.copy("COPY (select id, region from silver.orders where id < 3 order by id) TO STDOUT") as copy:
            data = b"".join(bytes(b) for b in copy)
        expect(data == b"0\tnorth\n1\tsouth\n2\teast\n", data)
        with cur.copy("COPY (select id, region from silver.orders where id < 2 order by id) TO STDOUT (FORMAT CSV, HEADER)") as copy:
            data = b"".join(bytes(b) for b in copy)
        expect(data == b"id,region\n0,north\n1,south\n", data)
        with cur.copy("COPY (select id, region from silver.orders where id < 3 order by id) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text"])
            rows = list(copy.rows())
        expect(rows == [(0, "north"), (1, "south"), (2, "east")], rows)


@check("transaction statements")
def _():
    with psycopg.connect(host="127.0.0.1", port=port, user="workbench", dbname="workbench") as tx:
        tx.execute("SAVEPOINT s1")
        tx.execute("RELEASE SAVEPOINT s1")
        tx.execute("select 1")
        tx.rollback()
        with tx.transaction():
            tx.execute("select 2")


@check("table functions with server-side bound parameters")
def _():
    # psycopg 3 binds on the server ($1): table-function arguments are planned
    # once the values are known.
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM profile(%s) ORDER BY column_name", ("silver.orders",))
        expect([r[0] for r in cur.fetchall()] == ["amount", "id", "ordered_on", "region"], "profile columns")
        expect(cur.description[0].name == "column_name", cur.description)
        cur.execute("SELECT count(*) FROM history(%s)", ("silver.events",))
        expect(cur.fetchone()[0] >= 1, "history rows")


conn.close()
finish()
