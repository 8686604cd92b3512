"""Runs SQL over a pgveil audit archive with DuckDB, as an auditor would.

usage: archive_query.py ARCHIVE_ROOT QUERY [QUERY ...]

The views `sessions` and `statements` read every Parquet file of the
archive's Hive-style partitions. Each query's rows are printed as one line
of JSON.
"""

import json
import sys

import duckdb


def main() -> None:
    root, queries = sys.argv[1], sys.argv[2:]
    con = duckdb.connect()
    for table in ("sessions", "statements"):
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet("
            f"'{root}/{table}/*/*.parquet', hive_partitioning = true)"
        )
    for query in queries:
        rows = con.execute(query).fetchall()
        print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
