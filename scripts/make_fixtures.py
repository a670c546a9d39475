"""Generates the spreadsheet fixtures in tests/fixtures/ (small, committed).

    pip install openpyxl xlwt odfpy && python3 scripts/make_fixtures.py

The same table in xlsx, xls and ods: a notes sheet first, then a "Personas"
sheet with two title rows, a merged title, dates stored as date cells (serial
numbers inside the file), a blank cell and a blank separator row.
"""
import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
ROWS = [
    ("Ana", datetime.date(1990, 5, 17), 1500.5),
    ("Bruno", datetime.date(1985, 12, 1), None),
    None,  # blank separator row
    ("Carla", datetime.date(2001, 2, 28), 990),
]


def xlsx():
    from openpyxl import Workbook
    wb = Workbook()
    wb.active.title = "Notas"
    wb.active["A1"] = "this sheet is not data"
    ws = wb.create_sheet("Personas")
    ws["A1"] = "Listado de personas"
    ws.merge_cells("A1:C1")
    ws.append([])
    ws.append(["Nombre", "Nacimiento", "Saldo"])
    for row in ROWS:
        ws.append(list(row) if row else [])
    for cell in ws["B"]:
        if isinstance(cell.value, datetime.date):
            cell.number_format = "dd/mm/yyyy"
    wb.save(OUT / "personas.xlsx")


def xls():
    import xlwt
    wb = xlwt.Workbook()
    wb.add_sheet("Notas").write(0, 0, "this sheet is not data")
    ws = wb.add_sheet("Personas")
    ws.write_merge(0, 0, 0, 2, "Listado de personas")
    for c, name in enumerate(["Nombre", "Nacimiento", "Saldo"]):
        ws.write(2, c, name)
    date_style = xlwt.easyxf(num_format_str="DD/MM/YYYY")
    r = 3
    for row in ROWS:
        if row:
            ws.write(r, 0, row[0])
            ws.write(r, 1, row[1], date_style)
            if row[2] is not None:
                ws.write(r, 2, row[2])
        r += 1
    wb.save(str(OUT / "personas.xls"))


def ods():
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import Table, TableRow, TableCell
    from odf.text import P
    doc = OpenDocumentSpreadsheet()
    notes = Table(name="Notas")
    tr = TableRow()
    tc = TableCell(valuetype="string")
    tc.addElement(P(text="this sheet is not data"))
    tr.addElement(tc)
    notes.addElement(tr)
    doc.spreadsheet.addElement(notes)
    table = Table(name="Personas")

    def row(values):
        tr = TableRow()
        for v in values:
            if v is None:
                tr.addElement(TableCell())
            elif isinstance(v, datetime.date):
                tc = TableCell(valuetype="date", datevalue=v.isoformat())
                tc.addElement(P(text=v.strftime("%d/%m/%Y")))
                tr.addElement(tc)
            elif isinstance(v, (int, float)):
                tc = TableCell(valuetype="float", value=v)
                tc.addElement(P(text=str(v)))
                tr.addElement(tc)
            else:
                tc = TableCell(valuetype="string")
                tc.addElement(P(text=v))
                tr.addElement(tc)
        table.addElement(tr)

    row(["Listado de personas"])
    row([None])
    row(["Nombre", "Nacimiento", "Saldo"])
    for r in ROWS:
        row(list(r) if r else [None])
    doc.spreadsheet.addElement(table)
    doc.save(str(OUT / "personas.ods"))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    xlsx()
    xls()
    ods()
    print("wrote", sorted(p.name for p in OUT.iterdir()))
