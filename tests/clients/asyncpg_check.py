"""asyncpg: type introspection, prepared statements, binary codecs for every
type Workbench emits, cursors in a transaction and copy_from_query.

Usage: python3 asyncpg_check.py PORT
"""
import asyncio
import datetime
import decimal
import io
import sys

import asyncpg

from checks import check, expect, finish

port = int(sys.argv[1])
loop = asyncio.new_event_loop()
run = loop.run_until_complete
conn = run(asyncpg.connect(host="127.0.0.1", port=port, user="workbench", database="workbench"))


@check("binary codecs of every emitted type")
def _():
    row = run(conn.fetchrow(
        "select id, kind, happened_at, logged_at, value, ok, small, day, amount "
        "from silver.events where id = $1", 3))
    expect(row["id"] == 3 and row["kind"] == "click", dict(row))
    expect(row["happened_at"] == datetime.datetime(2024, 1, 1, 3, 0), row["happened_at"])
    expect(row["logged_at"] == datetime.datetime(2024, 1, 1, 3, 0, tzinfo=datetime.timezone.utc), row["logged_at"])
    expect(row["value"] == 1.5 and row["ok"] is False and row["small"] == 3, dict(row))
    expect(row["day"] == datetime.date(2024, 1, 1), row["day"])
    expect(row["amount"] == decimal.Decimal("3.30"), row["amount"])


@check("prepared statement reused")
def _():
    stmt = run(conn.prepare("select count(*) from silver.orders where region = $1"))
    expect([a.name for a in stmt.get_parameters()] == ["text"], stmt.get_parameters())
    expect([a.name for a in stmt.get_attributes()] == ["count"], stmt.get_attributes())
    for region, n in (("north", 100), ("south", 100), ("east", 100), ("west", 0)) * 3:
        got = run(stmt.fetchval(region))
        expect(got == n, (region, got))


@check("parameter types honoured")
def _():
    got = run(conn.fetchval("select $1::int4 + 1", 41))
    expect(got == 42, got)
    got = run(conn.fetchval("select count(*) from silver.events where happened_at >= $1",
                            datetime.datetime(2024, 1, 2)))
    expect(got == 96, got)
    got = run(conn.fetchval("select count(*) from silver.orders where ordered_on = $1", datetime.date(2022, 1, 8)))
    expect(got == 10, got)


@check("LIMIT and OFFSET parameters are bigint")
def _():
    stmt = run(conn.prepare("select id from silver.orders order by id limit $1 offset $2"))
    types = [t.name for t in stmt.get_parameters()]
    expect(types == ["int8", "int8"], types)
    rows = run(stmt.fetch(3, 2))
    first = run(conn.fetchval("select min(id) from silver.orders"))
    expect([r["id"] for r in rows] == [first + 2, first + 3, first + 4], rows)
    got = run(conn.fetch("select * from (select id from silver.orders order by id limit $1) s", 2))
    expect(len(got) == 2, got)


@check("cursor in a transaction")
def _():
    async def go():
        seen = []
        async with conn.transaction():
            async for record in conn.cursor("select id from silver.events order by id", prefetch=50):
                seen.append(record["id"])
            cur = await conn.cursor("select id from silver.events order by id")
            first = await cur.fetch(10)
            await cur.forward(5)
            nxt = await cur.fetchrow()
        return seen, first, nxt

    seen, first, nxt = run(go())
    expect(seen == list(range(120)), seen[:5])
    expect([r["id"] for r in first] == list(range(10)) and nxt["id"] == 15, (first, nxt))


@check("copy_from_query")
def _():
    buf = io.BytesIO()
    run(conn.copy_from_query("select id, region from silver.orders where id < $1 order by id", 3, output=buf))
    expect(buf.getvalue() == b"0\tnorth\n1\tsouth\n2\teast\n", buf.getvalue())
    buf = io.BytesIO()
    run(conn.copy_from_query("select id, region from silver.orders where id < 2 order by id", output=buf, format="csv", header=True))
    expect(buf.getvalue() == b"id,region\n0,north\n1,south\n", buf.getvalue())


@check("error then further queries")
def _():
    try:
        run(conn.fetch("select * from silver.nope"))
        raise AssertionError("no error")
    except asyncpg.PostgresError as err:
        expect(err.sqlstate == "42P01", err.sqlstate)
    expect(run(conn.fetchval("select 1")) == 1, "after error")


run(conn.close())
finish()
