"""Generates the example landing files shipped in lake/landing/ (small, committed).

    python3 scripts/make_examples.py

1. DIPRES-style budget execution workbook: title rows above the header,
   accented headers, wide monthly columns, Spanish number formats, a blank
   separator row and a merged title cell.
2. A general-ledger CSV extract (latin1, semicolon-delimited, decimal commas)
   whose accounts are described in a Postgres table (see specs/README.md).
"""
import csv
import random
from pathlib import Path

from openpyxl import Workbook

ROOT = Path(__file__).resolve().parent.parent
LANDING = ROOT / "lake" / "landing"
MONTHS = ["Enero", "Febrero", "Marzo", "Abril", "Mayo", "Junio", "Julio", "Agosto",
          "Septiembre", "Octubre", "Noviembre", "Diciembre"]


def dipres(year: int, seed: int) -> None:
    rnd = random.Random(seed)
    wb = Workbook()
    ws = wb.active
    ws.title = "Ejecucion"
    ws["A1"] = f"Ejecución Presupuestaria Mensual {year}"
    ws.merge_cells("A1:H1")
    ws["A2"] = "Fuente: DIPRES. Cifras en miles de pesos."
    header = ["Partida", "Capítulo", "Programa", "Subtítulo", "Ítem", "Denominación"] + MONTHS
    for col, name in enumerate(header, start=1):
        ws.cell(row=4, column=col, value=name)
    row = 5
    for partida in ("01", "05", "09"):
        for programa in ("01", "02"):
            for subtitulo, item, nombre in (("21", "01", "Gastos en Personal"),
                                            ("22", "04", "Materiales de Uso o Consumo"),
                                            ("24", "03", "Transferencias a Otras Entidades")):
                values = [partida, "01", programa, subtitulo, item, nombre]
                for m in range(12):
                    amount = rnd.randint(1_000, 9_999_999)
                    # Spanish thousands separators, as the DIPRES export writes them.
                    values.append(f"{amount:,}".replace(",", "."))
                for col, v in enumerate(values, start=1):
                    ws.cell(row=row, column=col, value=v)
                row += 1
        row += 1  # blank separator row between partidas
    out = LANDING / "dipres_ejecucion" / f"ejecucion_{year}.xlsx"
    out.parent.mkdir(parents=True, exist_ok=True)
    wb.save(out)


def ledger() -> None:
    rnd = random.Random(7)
    out = LANDING / "gl_entries" / "ledger_2024.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="latin-1", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["Asiento", "Fecha", "Cuenta", "Glosa", "Debe", "Haber"])
        for n in range(1, 241):
            month = (n - 1) // 20 + 1
            day = (n % 27) + 1
            cuenta = rnd.choice(["1101", "1102", "2101", "4101", "5101", "5102"])
            amount = rnd.randint(10_000, 5_000_000) / 100
            text = f"{amount:,.2f}".replace(",", "X").replace(".", ",").replace("X", ".")
            debe, haber = (text, "") if n % 2 else ("", text)
            w.writerow([n, f"{day:02d}/{month:02d}/2024", cuenta, f"Operación {n} - año", debe, haber])


if __name__ == "__main__":
    dipres(2023, 1)
    dipres(2024, 2)
    ledger()
    print("wrote", sorted(str(p.relative_to(ROOT)) for p in LANDING.rglob("*.*")))
