"""Write the preview benchmark's inputs: a ~5 MB CSV and a ~5 MB XLSX of
sales rows (id, region, product, amount, sold_on).

Usage: python3 make_preview_files.py OUT.csv OUT.xlsx
"""
import csv
import random
import sys

from openpyxl import Workbook

TARGET = 5_000_000
rng = random.Random(7)
regions = ["north", "south", "east", "west"]
products = [f"product-{i:03d}" for i in range(200)]


def row(i):
    return [i, rng.choice(regions), rng.choice(products), f"{rng.uniform(1, 5000):.2f}",
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"]


csv_path, xlsx_path = sys.argv[1], sys.argv[2]
with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "region", "product", "amount", "sold_on"])
    i = 0
    while f.tell() < TARGET:
        w.writerow(row(i))
        i += 1

# XLSX compresses ~4x better than CSV: write rows until the file is ~5 MB.
wb = Workbook(write_only=True)
ws = wb.create_sheet("sales")
ws.append(["id", "region", "product", "amount", "sold_on"])
for i in range(155_000):
    ws.append(row(i))
wb.save(xlsx_path)
