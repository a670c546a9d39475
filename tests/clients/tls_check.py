"""psycopg2, psycopg 3 and asyncpg over TLS with full certificate checks
(`sslmode=verify-full` against the test's own CA), as a user with a password.

Usage: python3 tls_check.py CA_FILE USER PASSWORD PORT
"""
import asyncio
import ssl
import sys

from checks import check, expect, finish

ca, user, password, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
dsn = (f"host=localhost port={port} dbname=workbench user={user} password='{password}' "
       f"sslmode=verify-full sslrootcert={ca}")


@check("psycopg2 verify-full")
def _():
    import psycopg2

    conn = psycopg2.connect(dsn)
    expect(conn.info.ssl_in_use, "psycopg2 says the connection is not encrypted")
    expect(conn.info.ssl_attribute("protocol") in ("TLSv1.2", "TLSv1.3"), conn.info.ssl_attribute("protocol"))
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM silver.suppliers WHERE amount > %s", (0,))
    expect(cur.fetchone()[0] > 0, "no rows over TLS")
    conn.close()


@check("psycopg2 refuses a server its CA did not sign")
def _():
    import psycopg2

    try:
        psycopg2.connect(dsn.replace(f"sslrootcert={ca}", "sslrootcert=/etc/ssl/certs/ca-certificates.crt"))
    except psycopg2.OperationalError as err:
        expect("certificate verify failed" in str(err), str(err))
    else:
        raise AssertionError("connected although the certificate is not trusted")


@check("psycopg 3 verify-full, binary results")
def _():
    import psycopg

    with psycopg.connect(dsn) as conn:
        expect(conn.pgconn.ssl_in_use, "psycopg says the connection is not encrypted")
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT name FROM silver.suppliers ORDER BY name LIMIT 1")
            expect(cur.fetchone()[0], "empty name")


@check("asyncpg verify-full")
def _():
    import asyncpg

    async def go():
        context = ssl.create_default_context(cafile=ca)
        conn = await asyncpg.connect(host="localhost", port=int(port), user=user, password=password,
                                     database="workbench", ssl=context)
        try:
            total = await conn.fetchval("SELECT sum(amount) FROM silver.suppliers WHERE amount > $1", 0)
            expect(total > 0, total)
        finally:
            await conn.close()

    asyncio.run(go())


@check("asyncpg refuses a server its CA did not sign")
def _():
    import asyncpg

    async def go():
        try:
            conn = await asyncpg.connect(host="localhost", port=int(port), user=user, password=password,
                                         database="workbench", ssl=ssl.create_default_context())
        except ssl.SSLCertVerificationError:
            return
        await conn.close()
        raise AssertionError("connected although the certificate is not trusted")

    asyncio.run(go())


finish()
