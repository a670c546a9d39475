// pgjdbc (what DBeaver, Metabase and most JDBC tools use) against Workbench:
// DatabaseMetaData, ResultSetMetaData, prepared statements past the
// server-prepare threshold (binary transfer), fetch-size cursors, cancel.
//
// Usage: java -cp /usr/share/java/postgresql.jar tests/clients/JdbcCheck.java PORT
import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

public class JdbcCheck {
    interface Body { void run() throws Exception; }

    static final List<String> failed = new ArrayList<>();

    static void check(String name, Body body) {
        try {
            body.run();
            System.out.println("ok " + name);
        } catch (Throwable t) {
            failed.add(name);
            System.out.println("FAIL " + name + ": " + t);
        }
    }

    static void expect(boolean cond, Object what) {
        if (!cond) throw new AssertionError(String.valueOf(what));
    }

    static List<String> column(ResultSet rs, String name) throws SQLException {
        List<String> out = new ArrayList<>();
        while (rs.next()) out.add(rs.getString(name));
        rs.close();
        return out;
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/workbench?user=workbench&prepareThreshold=2";
        Connection conn = DriverManager.getConnection(url);
        DatabaseMetaData md = conn.getMetaData();
        System.out.println("driver " + md.getDriverVersion() + ", server " + md.getDatabaseProductVersion());

        check("getSchemas", () -> {
            List<String> schemas = column(md.getSchemas(), "TABLE_SCHEM");
            expect(schemas.containsAll(List.of("bronze", "silver", "gold")), schemas);
        });
        check("getTables", () -> {
            List<String> tables = column(md.getTables(null, "silver", "%", new String[] {"TABLE"}), "TABLE_NAME");
            expect(tables.containsAll(List.of("orders", "events")), tables);
            List<String> all = column(md.getTables(null, null, "%", null), "TABLE_NAME");
            expect(all.contains("daily_orders"), all);
        });
        check("getColumns", () -> {
            ResultSet rs = md.getColumns(null, "silver", "orders", "%");
            List<String> got = new ArrayList<>();
            while (rs.next()) {
                got.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME") + ":" + rs.getInt("DATA_TYPE")
                        + ":" + rs.getInt("COLUMN_SIZE") + ":" + rs.getInt("DECIMAL_DIGITS") + ":" + rs.getString("IS_NULLABLE"));
            }
            expect(got.equals(List.of(
                    "id:int8:" + Types.BIGINT + ":19:0:NO",
                    "region:text:" + Types.VARCHAR + ":2147483647:0:YES",
                    "amount:numeric:" + Types.NUMERIC + ":12:2:YES",
                    "ordered_on:date:" + Types.DATE + ":13:0:YES")), got);
        });
        check("getPrimaryKeys", () -> expect(column(md.getPrimaryKeys(null, "silver", "orders"), "COLUMN_NAME").isEmpty(), "pk"));
        check("getImportedKeys", () -> expect(column(md.getImportedKeys(null, "silver", "orders"), "FKCOLUMN_NAME").isEmpty(), "fk"));
        check("getIndexInfo", () -> expect(column(md.getIndexInfo(null, "silver", "orders", false, true), "INDEX_NAME").isEmpty(), "idx"));
        check("getTypeInfo", () -> {
            List<String> types = column(md.getTypeInfo(), "TYPE_NAME");
            expect(types.containsAll(List.of("int8", "text", "numeric", "timestamptz", "bool")), types);
        });
        check("getFunctions", () -> {
            List<String> fns = column(md.getFunctions(null, null, "validate"), "FUNCTION_NAME");
            expect(fns.contains("validate"), fns);
        });
        check("ResultSetMetaData types", () -> {
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select id, kind, happened_at, logged_at, value, ok, small, day, amount from silver.events limit 1")) {
                ResultSetMetaData m = rs.getMetaData();
                List<String> got = new ArrayList<>();
                for (int i = 1; i <= m.getColumnCount(); i++) got.add(m.getColumnName(i) + ":" + m.getColumnTypeName(i));
                expect(got.equals(List.of("id:int4", "kind:text", "happened_at:timestamp", "logged_at:timestamptz",
                        "value:float8", "ok:bool", "small:int2", "day:date", "amount:numeric")), got);
                expect(m.getPrecision(9) == 10 && m.getScale(9) == 2, m.getPrecision(9) + "," + m.getScale(9));
            }
        });
        check("prepared statement past prepareThreshold (binary)", () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                    "select id, happened_at, logged_at, amount, day from silver.events where id = ?")) {
                for (int i = 0; i < 6; i++) {
                    ps.setInt(1, 7);
                    try (ResultSet rs = ps.executeQuery()) {
                        expect(rs.next(), "no row");
                        expect(rs.getInt(1) == 7, rs.getInt(1));
                        expect(rs.getTimestamp(2).toLocalDateTime().toString().equals("2024-01-01T07:00"), rs.getTimestamp(2));
                        expect(rs.getObject(3, java.time.OffsetDateTime.class).toInstant().toString().equals("2024-01-01T07:00:00Z"), rs.getObject(3));
                        expect(rs.getBigDecimal(4).equals(new BigDecimal("7.70")), rs.getBigDecimal(4));
                        expect(rs.getDate(5).toString().equals("2024-01-01"), rs.getDate(5));
                    }
                }
            }
        });
        check("setFetchSize cursor with autocommit off", () -> {
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.setFetchSize(10);
                int n = 0;
                long sum = 0;
                try (ResultSet rs = st.executeQuery("select id from silver.events order by id")) {
                    while (rs.next()) { n++; sum += rs.getLong(1); }
                }
                expect(n == 120 && sum == 7140, n + " rows, sum " + sum);
            }
            conn.commit();
            conn.setAutoCommit(true);
        });
        check("cancel", () -> {
            try (Statement st = conn.createStatement()) {
                Thread canceller = new Thread(() -> {
                    try { Thread.sleep(300); st.cancel(); } catch (Exception e) { throw new RuntimeException(e); }
                });
                canceller.start();
                long start = System.nanoTime();
                try {
                    st.executeQuery("select count(*) from generate_series(1, 100000000000) as t(x) where x % 7 = 3");
                    throw new AssertionError("not cancelled");
                } catch (SQLException e) {
                    expect("57014".equals(e.getSQLState()), e.getSQLState() + " " + e.getMessage());
                }
                canceller.join();
                expect((System.nanoTime() - start) / 1_000_000 < 3000, "cancel took too long");
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select 1")) {
                expect(rs.next() && rs.getInt(1) == 1, "connection unusable after cancel");
            }
        });
        conn.close();
        if (!failed.isEmpty()) {
            System.out.println(failed.size() + " check(s) failed: " + failed);
            System.exit(1);
        }
        System.out.println("all checks passed");
    }
}
