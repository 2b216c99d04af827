"""Forward migrations of the central database schema.

Strategy: the schema of version 1 is `central/store.py`'s `_SCHEMA` (created with
`IF NOT EXISTS`, so it is the same for a new file and for an old one).  Every later version
is one `Migration` here: the SQL that takes a database from `version - 1` to `version`.
`Store` opens a file, reads `schema_version`, and applies each pending migration in its own
transaction together with the version bump, so a crash leaves the file at a whole version.
A new file goes through the same steps as an old one, so the migrations are exercised by
every test that opens a store.  Migrations only go forward: a file newer than this program
is refused (upgrade teiten), and a backup (`teiten central backup`) before an upgrade is
the way back.  No SQLite here: this module is data; the store executes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Migration:
    version: int  # the schema version after this migration
    description: str
    sql: str


MIGRATIONS: Final = (
    Migration(
        2,
        "aggregates for the quarterly report, region ranges, retention marks",
        """
        -- one row per stored summary that the rollup has folded into the aggregates
        CREATE TABLE rollup_hours (
            sensor_id       TEXT    NOT NULL,
            seq_key         INTEGER NOT NULL,
            hour_start      INTEGER NOT NULL,
            bucket_seconds  INTEGER NOT NULL,
            rolled_us       INTEGER NOT NULL,
            packets         INTEGER NOT NULL,
            backscatter     INTEGER NOT NULL,
            sources         INTEGER NOT NULL,
            sources_overflow INTEGER NOT NULL,  -- packets from sources past the sensor's cap
            partial         INTEGER NOT NULL,   -- 1: the sensor said the hour is incomplete
            capture_drops   INTEGER NOT NULL,   -- packets libpcap/the kernel dropped
            clock_unsynced  INTEGER NOT NULL,   -- 1: the sensor's clock was not synchronised
            spool_evicted   INTEGER NOT NULL,   -- envelopes the sensor evicted (never coming)
            PRIMARY KEY (sensor_id, seq_key)
        ) WITHOUT ROWID;
        CREATE INDEX rollup_hours_hour ON rollup_hours (hour_start, sensor_id);
        -- day = hour_start // 86400 (UTC day number); port -1 = no port (fragments, other)
        CREATE TABLE daily_port (
            proto INTEGER NOT NULL, port INTEGER NOT NULL, day INTEGER NOT NULL,
            sensor_id TEXT NOT NULL,
            packets INTEGER NOT NULL, backscatter INTEGER NOT NULL,
            PRIMARY KEY (proto, port, day, sensor_id)
        ) WITHOUT ROWID;
        CREATE TABLE quarter_port (
            quarter TEXT NOT NULL, sensor_id TEXT NOT NULL,
            proto INTEGER NOT NULL, port INTEGER NOT NULL,
            packets INTEGER NOT NULL, backscatter INTEGER NOT NULL,
            PRIMARY KEY (quarter, sensor_id, proto, port)
        ) WITHOUT ROWID;
        CREATE TABLE daily_region (
            day INTEGER NOT NULL, sensor_id TEXT NOT NULL, cc TEXT NOT NULL,
            registry TEXT NOT NULL, packets INTEGER NOT NULL,
            PRIMARY KEY (day, sensor_id, cc, registry)
        ) WITHOUT ROWID;
        -- named daily counters: packets, bytes, backscatter, backscatter:<kind>, fp:<name>, ...
        CREATE TABLE daily_counter (
            day INTEGER NOT NULL, sensor_id TEXT NOT NULL, name TEXT NOT NULL,
            value INTEGER NOT NULL,
            PRIMARY KEY (day, sensor_id, name)
        ) WITHOUT ROWID;
        -- one row per source and quarter, fleet-wide: first and last sighting in the quarter.
        -- `source` is the 4/16-byte address until retention replaces it by an 8-byte random
        -- token (no mapping kept), which keeps the lifetimes and forgets the address.
        CREATE TABLE source_life (
            quarter TEXT NOT NULL, source BLOB NOT NULL,
            first_us INTEGER NOT NULL, last_us INTEGER NOT NULL,
            packets INTEGER NOT NULL, fingerprints INTEGER NOT NULL,
            PRIMARY KEY (quarter, source)
        ) WITHOUT ROWID;
        CREATE INDEX source_life_last ON source_life (last_us);
        -- the current region ranges (replaced as a whole by `teiten central regions import`)
        CREATE TABLE regions (
            family INTEGER NOT NULL, start BLOB NOT NULL, end_ BLOB NOT NULL,
            cc TEXT NOT NULL, registry TEXT NOT NULL,
            PRIMARY KEY (family, start)
        ) WITHOUT ROWID;
        CREATE TABLE region_imports (
            id INTEGER PRIMARY KEY, imported_us INTEGER NOT NULL, files TEXT NOT NULL,
            ipv4_ranges INTEGER NOT NULL, ipv6_ranges INTEGER NOT NULL, serials TEXT NOT NULL
        );
        -- retention: when a summary's per-source bytes were removed (envelope emptied)
        ALTER TABLE summaries ADD COLUMN pruned_us INTEGER;
        CREATE TABLE retention_runs (
            id INTEGER PRIMARY KEY, run_us INTEGER NOT NULL, cutoff_us INTEGER NOT NULL,
            sources_anonymised INTEGER NOT NULL, summaries_pruned INTEGER NOT NULL,
            rejected_pruned INTEGER NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "daily ports as one compressed column set per sensor-day",
        """
        -- A busy /24 sees most of the 65,536 ports in a day: as rows, a 20-sensor quarter
        -- is 60 M of them.  One row per (day, sensor) instead: `data` is a zstd frame of
        -- three little-endian int64 arrays of `ports` entries each: the port keys
        -- (proto * 65537 + port + 1, port -1 = none), sorted, then packets, then
        -- backscatter.  `daily_port` keeps what older versions wrote; reads add both.
        CREATE TABLE daily_port_cols (
            day INTEGER NOT NULL, sensor_id TEXT NOT NULL,
            ports INTEGER NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (day, sensor_id)
        ) WITHOUT ROWID;
        """,
    ),
    Migration(
        4,
        "distinct sources per day, labelled source populations",
        """
        -- per (day, sensor): the sum over the sensor's hours of each port's distinct
        -- sources, and how many of those hourly counts the sensor estimated (a sketch):
        -- the same zstd layout as daily_port_cols (keys, source-hours, estimated hours)
        CREATE TABLE daily_port_src (
            day INTEGER NOT NULL, sensor_id TEXT NOT NULL,
            ports INTEGER NOT NULL, data BLOB NOT NULL,
            PRIMARY KEY (day, sensor_id)
        ) WITHOUT ROWID;
        -- fleet-wide distinct sources per (day, region): the smallest KMV_K 64-bit hashes
        -- of the source addresses (little-endian uint64, sorted).  Fewer than KMV_K: the
        -- exact set (n exact); KMV_K of them: a k-minimum-values estimate (estimated 1)
        CREATE TABLE daily_region_src (
            day INTEGER NOT NULL, cc TEXT NOT NULL, registry TEXT NOT NULL,
            n INTEGER NOT NULL, estimated INTEGER NOT NULL, hashes BLOB NOT NULL,
            PRIMARY KEY (day, cc, registry)
        ) WITHOUT ROWID;
        CREATE TABLE labels (
            name TEXT PRIMARY KEY, imported_us INTEGER NOT NULL, source_file TEXT NOT NULL,
            entries INTEGER NOT NULL
        );
        -- an entry: one address (start = end) or a prefix; addresses as 4/16 bytes big
        -- endian.  Retention replaces a single address by a random token (start = end)
        CREATE TABLE label_members (
            label TEXT NOT NULL REFERENCES labels(name) ON DELETE CASCADE,
            family INTEGER NOT NULL, start BLOB NOT NULL, end_ BLOB NOT NULL,
            identified_us INTEGER NOT NULL,
            PRIMARY KEY (label, family, start, end_)
        ) WITHOUT ROWID;
        -- sightings of labelled sources, fleet-wide, per UTC day
        CREATE TABLE label_daily (
            label TEXT NOT NULL REFERENCES labels(name) ON DELETE CASCADE,
            day INTEGER NOT NULL, source BLOB NOT NULL,
            packets INTEGER NOT NULL, first_us INTEGER NOT NULL, last_us INTEGER NOT NULL,
            identified_us INTEGER NOT NULL,
            PRIMARY KEY (label, day, source)
        ) WITHOUT ROWID;
        CREATE INDEX label_daily_last ON label_daily (last_us);
        """,
    ),
)

LATEST: Final = MIGRATIONS[-1].version


def pending(current: int) -> list[Migration]:
    """The migrations to apply, in order, to a database at version `current`."""
    return [m for m in MIGRATIONS if m.version > current]
