-- Debe y haber por cuenta y mes: silver.gl_entries joined with the chart of
-- accounts read from Postgres.
SELECT e.periodo,
       e.cuenta,
       a.nombre AS cuenta_nombre,
       a.tipo,
       SUM(e.debe) AS debe,
       SUM(e.haber) AS haber,
       SUM(coalesce(e.debe, 0) - coalesce(e.haber, 0)) AS saldo
FROM silver.gl_entries e
JOIN silver.gl_accounts a ON a.cuenta = e.cuenta
GROUP BY e.periodo, e.cuenta, a.nombre, a.tipo
