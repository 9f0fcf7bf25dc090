"""Table declaration type: one `Table` per warehouse table, convertible to Arrow and Spark schemas."""

from __future__ import annotations

from dataclasses import dataclass, field

# Logical type names -> Arrow / Spark DDL. Timestamps are instants (UTC), microsecond precision.
_ARROW = {
    "string": "string",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "float32": "float32",
    "float64": "float64",
    "bool": "bool",
    "date": "date32",
    "timestamp": "timestamp[us, tz=UTC]",
    "binary": "binary",
    "array<int16>": "list<int16>",
    "array<int64>": "list<int64>",
    "array<float64>": "list<float64>",
}
_SPARK = {
    "string": "STRING",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INT",
    "int64": "BIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "binary": "BINARY",
    "array<int16>": "ARRAY<SMALLINT>",
    "array<int64>": "ARRAY<BIGINT>",
    "array<float64>": "ARRAY<DOUBLE>",
}


@dataclass(frozen=True)
class Column:
    """One column: name (unit in the name), logical type, one-line meaning."""

    name: str
    type: str
    doc: str
    required: bool = True  # a data check (Parquet reads columns back nullable), not a schema flag


@dataclass(frozen=True)
class Table:
    """A warehouse table: Parquet under `<warehouse>/<name>/` with Hive-style partition folders."""

    name: str
    grain: str
    columns: tuple[Column, ...]
    partition_by: tuple[str, ...] = ()
    doc: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def data_columns(self) -> list[str]:
        """Columns stored inside the Parquet files (partition keys live in folder names)."""
        return [c.name for c in self.columns if c.name not in self.partition_by]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def arrow_schema(self, with_partitions: bool = True):
        """pyarrow.Schema of the table (imports pyarrow lazily)."""
        import pyarrow as pa

        cols = self.columns if with_partitions else [c for c in self.columns if c.name not in self.partition_by]
        return pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in cols])

    def spark_ddl(self, with_partitions: bool = True) -> str:
        cols = self.columns if with_partitions else [c for c in self.columns if c.name not in self.partition_by]
        return ", ".join(f"`{c.name}` {_SPARK[c.type]}" for c in cols)

    def spark_schema(self, with_partitions: bool = True):
        """pyspark StructType of the table (imports pyspark lazily)."""
        from pyspark.sql.types import StructType

        return StructType.fromDDL(self.spark_ddl(with_partitions))


def _arrow_type(name: str):
    import pyarrow as pa

    return {
        "string": pa.string(),
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
        "binary": pa.binary(),
        "array<int16>": pa.list_(pa.int16()),
        "array<int64>": pa.list_(pa.int64()),
        "array<float64>": pa.list_(pa.float64()),
    }[name]


assert set(_ARROW) == set(_SPARK)
