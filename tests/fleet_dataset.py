"""The demo's generated fleet (central/demo_fleet.py), stored and rolled up once per session.

The envelopes go through `teiten central import`'s function (`import_envelopes`, the
receiver's checks), the regions are the bundled delegation sample, and the label CSV is
imported before the rollup (so the rollup matches it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from central import demo_fleet
from central.demo_fleet import Plant, write_fleet
from central.importer import import_envelopes
from central.keyring import load_keyring
from central.labels import parse_label_csv
from central.receiver import Ingest
from central.store import Store

_CACHE: dict[str, tuple[Path, Plant]] = {}


def fleet_dataset() -> tuple[Path, Plant]:
    """(rolled-up database, plant); callers copy the database before writing."""
    if "db" not in _CACHE:
        from central.cli.report import rollup

        shm = Path("/dev/shm")
        d = Path(tempfile.mkdtemp(prefix="teiten-fleet-",
                                  dir=shm if shm.is_dir() and os.access(shm, os.W_OK)
                                  else None))
        plant = write_fleet(d / "fleet")
        db = d / "central.db"
        keys = d / "fleet" / "sensors.toml"
        with Store(db) as store:
            ingest = Ingest(store, keys, max_summary_bytes=1 << 26, keyring=load_keyring(keys))
            res = import_envelopes(ingest, [d / "fleet" / s for s in demo_fleet.SENSORS])
            assert res.stored == plant.summaries and not res.rejected, res.to_json()
            table = demo_fleet.region_table()
            store.save_regions(list(table.rows()), [str(demo_fleet.RIR_SAMPLE)], ["sample"])
            csv_path = d / "fleet" / f"{demo_fleet.LABEL}.csv"
            entries, _ = parse_label_csv(csv_path.read_text().splitlines(), demo_fleet.LABEL)
            store.save_label(demo_fleet.LABEL, entries, str(csv_path))
            rollup(store)
        _CACHE["db"] = (db, plant)
    return _CACHE["db"]
