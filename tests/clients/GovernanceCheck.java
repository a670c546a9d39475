// pgjdbc as a governed user: prints what the driver's metadata and queries
// show, one fact per line, for the Rust test to compare per user.
//
// Usage: java -cp /usr/share/java/postgresql.jar GovernanceCheck.java USER PASSWORD PORT
import java.sql.*;
import java.util.*;

public class GovernanceCheck {
    public static void main(String[] args) throws Exception {
        String user = args[0], password = args[1], port = args[2];
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("prepareThreshold", "1"); // server-prepared, binary results
        try (Connection conn = DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + port + "/workbench", props)) {
            DatabaseMetaData md = conn.getMetaData();
            try (ResultSet rs = md.getTables(null, null, "%", new String[] {"TABLE"})) {
                while (rs.next()) {
                    String schema = rs.getString("TABLE_SCHEM");
                    if (List.of("bronze", "silver", "gold").contains(schema))
                        System.out.println("table " + schema + "." + rs.getString("TABLE_NAME") + " remarks=" + rs.getString("REMARKS"));
                }
            }
            try (ResultSet rs = md.getColumns(null, "silver", "suppliers", "%")) {
                while (rs.next())
                    System.out.println("column " + rs.getString("COLUMN_NAME") + " remarks=" + rs.getString("REMARKS"));
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT rut, email, region FROM silver.suppliers WHERE amount > ? ORDER BY name")) {
                for (int pass = 0; pass < 2; pass++) { // second pass: server-prepared
                    ps.setLong(1, 0);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next())
                            System.out.println("row " + pass + " " + rs.getString(1) + "|" + rs.getString(2) + "|" + rs.getString(3));
                    }
                }
            }
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM bronze.suppliers").close();
                System.out.println("bronze readable");
            } catch (SQLException e) {
                System.out.println("bronze refused " + e.getSQLState() + " " + e.getMessage().split("\n")[0]);
            }
        }
        System.out.println("all checks passed");
    }
}
