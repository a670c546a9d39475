// pgjdbc over TLS with the certificate and host name verified
// (sslmode=verify-full against the test's own CA).
//
// Usage: java -cp /usr/share/java/postgresql.jar TlsCheck.java CA_FILE USER PASSWORD PORT
import java.sql.*;
import java.util.*;

public class TlsCheck {
    public static void main(String[] args) throws Exception {
        String ca = args[0], user = args[1], password = args[2], port = args[3];
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("ssl", "true");
        props.setProperty("sslmode", "verify-full");
        props.setProperty("sslrootcert", ca);
        try (Connection conn = DriverManager.getConnection("jdbc:postgresql://localhost:" + port + "/workbench", props);
             Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT count(*) FROM silver.suppliers")) {
            rs.next();
            if (rs.getLong(1) <= 0) throw new AssertionError("no rows over TLS");
            System.out.println("ok pgjdbc verify-full");
        }
        Properties plain = new Properties();
        plain.setProperty("user", user);
        plain.setProperty("password", password);
        plain.setProperty("sslmode", "disable");
        try (Connection conn = DriverManager.getConnection("jdbc:postgresql://localhost:" + port + "/workbench", plain)) {
            throw new AssertionError("pgjdbc connected in plaintext to a TLS-only server");
        } catch (SQLException e) {
            if (!"28000".equals(e.getSQLState()) || !e.getMessage().contains("only TLS"))
                throw new AssertionError("unexpected refusal: " + e.getSQLState() + " " + e.getMessage());
            System.out.println("ok pgjdbc plaintext refused: " + e.getSQLState());
        }
        System.out.println("all checks passed");
    }
}
