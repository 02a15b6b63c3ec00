"""The server's garbage-collector recorder and its preparation for serving."""

from __future__ import annotations

import gc

from twin.server.gc_pauses import YOUNG_THRESHOLD, GcPauses, prepare_for_serving


def test_the_recorder_counts_and_times_collections_per_generation():
    rec = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(2)
        stats = rec.stats()
    finally:
        rec.uninstall()
    assert stats["collections"][0] >= 1 and stats["collections"][2] >= 1
    assert stats["longest_ms"][2] > 0 and stats["pause_ms"][2] >= stats["longest_ms"][2]
    gc.collect(2)  # uninstalled: nothing more is counted
    assert rec.stats()["collections"] == stats["collections"]


def test_prepare_for_serving_freezes_what_is_alive_and_raises_the_young_threshold():
    before = gc.get_threshold()
    try:
        frozen = prepare_for_serving()
        assert frozen > 1000 and gc.get_freeze_count() == frozen  # at least the imported modules' objects
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD and gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
