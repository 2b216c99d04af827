"""The rollup job: fold the summaries the store holds into its daily aggregates.

`central.rollup` is pure (summary in, rows out: `rollup_summary`, `ColumnBatch`,
`RollupBatch`); this module is the loop that pages pending summaries out of the store,
folds them, and writes the batches back, so the store and the fold do not import each
other (the store imports the row types; the job imports both).
"""

from __future__ import annotations

import logging
from typing import Any, Final

import numpy as np

from central.columns import decode_columns
from central.labels import LabelSet
from central.regions import RegionTable
from central.rollup import DAY, ColumnBatch, RollupBatch, rollup_summary
from central.store import Store
from wire.envelope import (
    DEFAULT_MAX_SUMMARY_BYTES,
    EnvelopeError,
    decompress_capped,
    parse_envelope,
)
from wire.summary import SummaryFormatError, decode_summary

log = logging.getLogger("teiten.rollup")


# A rollup writes when its life tables hold this many distinct sources (about 70 bytes
# each in memory), when its port columns hold this many bytes (a busy /24 sensor-hour is
# 48 KB of them), or when nothing is pending.
MAX_BATCH_SOURCES: Final = 8_000_000
MAX_BATCH_PORT_BYTES: Final = 1 << 30


def roll_up_pending(store: Store, regions: RegionTable, *, batch: int = 200,
                    progress: Any = None, reference: bool = False,
                    labels: LabelSet | None = None,
                    max_sources: int = MAX_BATCH_SOURCES,
                    max_port_bytes: int = MAX_BATCH_PORT_BYTES) -> int:
    """Fold every stored summary not yet rolled up into the aggregates; returns how many.

    Reads and writes through `store`.  The summary bytes were
    checked when they were received and are decoded again here, from the stored envelope
    (its payload, decompressed under the same cap).  The fast path (`ColumnBatch`) reads
    pages of `batch` summaries and writes, in one transaction, when its source tables
    reach `max_sources`, its port columns `max_port_bytes`, or nothing is left.
    `reference=True` runs the row-by-row reference (`rollup_summary` + `RollupBatch`),
    one transaction per page.
    """
    def summary_bytes(blob: bytes | None, envelope: bytes) -> bytes:
        if blob is not None:
            return blob
        return decompress_capped(parse_envelope(envelope).payload, DEFAULT_MAX_SUMMARY_BYTES)

    done = skipped = 0
    after: tuple[int, str, int] | None = None
    fast = ColumnBatch(regions, labels)
    while True:
        rows = store.pending_rollup(batch, after)
        for sid, seq, hour, blob, envelope in rows:
            after = (hour, sid, seq)
            try:
                data = summary_bytes(blob, envelope)
                if reference:
                    b = RollupBatch()
                    b.add(rollup_summary(decode_summary(data), seq, regions, labels))
                    store.write_rollup(b)
                else:
                    fast.add(decode_columns(data), seq)
            except (EnvelopeError, SummaryFormatError) as exc:
                # Checked on receipt, so only a damaged file gets here: skip the row (it
                # stays pending; `teiten central db` counts it as not_rolled_up) rather
                # than stop the rollup.
                log.warning("not rolled up: %s sequence %d: %s", sid, seq, exc)
                skipped += 1
        full = fast.sources >= max_sources or fast.port_bytes >= max_port_bytes
        if not reference and len(fast) and (not rows or full):
            store.write_rollup(fast.finish())
            fast = ColumnBatch(regions, labels)
        done += len(rows)
        if progress is not None and rows:
            progress(done)
        if not rows:
            return done - skipped


def backfill_labels(store: Store, labels: LabelSet, *, batch: int = 200,
                    progress: Any = None) -> int:
    """Sightings of `labels` in the summaries already rolled up whose bytes are still kept
    (retention removes them with the source rows), added to `label_daily`.

    The rollup matches the labels it knows on every later summary; this covers the
    earlier ones once, when a label is imported.  Returns how many summaries it read.
    """
    cb = ColumnBatch(RegionTable.from_rows([]), labels)
    done = 0
    after: tuple[int, str, int] | None = None
    while True:
        rows = store.rolled_up_envelopes(after, batch)
        if not rows:
            return done
        for sid, seq, hour, blob, envelope in rows:
            after = (hour, sid, seq)
            try:
                data = blob if blob is not None else decompress_capped(
                    parse_envelope(envelope).payload, DEFAULT_MAX_SUMMARY_BYTES)
                c = decode_columns(data)
            except Exception as exc:  # checked on receipt: only a damaged file
                log.warning("label backfill skipped %s sequence %d: %s", sid, seq, exc)
                continue
            src = c.sources
            if src.n:
                lens = np.frombuffer(src.length, dtype=np.uint8)
                slots = np.frombuffer(src.address, dtype=np.uint8).reshape(-1, 16)
                cb._label_hits(c.head.hour_start // DAY, src, slots, lens, lens == 4)
        store.add_label_sightings(cb.batch.label_rows)
        cb.batch.label_rows = {}
        done += len(rows)
        if progress is not None:
            progress(done)
