"""The validate benchmark's anchor: Great Expectations (pandas back-end)
running the same 10 expectations as Workbench's validate() on lineitem.

Usage: python3 ge_validate.py lineitem.parquet
Prints {"seconds": ...} (validation only, after loading the data) as the last line.
"""
import json
import sys
import time

import great_expectations as gx
import pandas as pd

df = pd.read_parquet(sys.argv[1])
context = gx.get_context(mode="ephemeral")
source = context.data_sources.add_pandas("bench")
asset = source.add_dataframe_asset("lineitem")
batch_def = asset.add_batch_definition_whole_dataframe("all")
batch = batch_def.get_batch(batch_parameters={"dataframe": df})
E = gx.expectations
# Workbench's first expectation covers four columns in one not_null; GE
# checks them one expectation per column.
suite = [
    *[E.ExpectColumnValuesToNotBeNull(column=c) for c in ("l_orderkey", "l_partkey", "l_suppkey", "l_shipdate")],
    E.ExpectCompoundColumnsToBeUnique(column_list=["l_orderkey", "l_linenumber"]),
    E.ExpectColumnValuesToBeBetween(column="l_quantity", min_value=1, max_value=50),
    E.ExpectColumnValuesToBeBetween(column="l_discount", min_value=0, max_value=0.1),
    E.ExpectColumnValuesToBeInSet(column="l_returnflag", value_set=["A", "N", "R"]),
    E.ExpectColumnValuesToBeInSet(column="l_shipmode", value_set=["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"]),
    E.ExpectColumnValuesToMatchRegex(column="l_shipinstruct", regex="^[A-Z ]+$"),
    E.ExpectColumnValueLengthsToBeBetween(column="l_comment", min_value=1, max_value=44),
    E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="l_receiptdate", column_B="l_shipdate", or_equal=True),
    E.ExpectTableRowCountToBeBetween(min_value=1, max_value=100_000_000),
]
start = time.perf_counter()
results = [batch.validate(e) for e in suite]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "success": [r.success for r in results]}))
