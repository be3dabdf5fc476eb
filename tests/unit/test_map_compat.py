"""Whether an existing map can stand in for a map spec (pure): each difference named."""

from __future__ import annotations

from ttcp.kernel.uapi import MapFlag, MapType
from ttcp.obj.map_compat import Difference, MapShape, differences, only_size_differs


def test_differences_name_each_property() -> None:
    want = MapShape(MapType.HASH, 16, 16, 0, 1024)
    assert differences(want, want) == []
    found = MapShape(MapType.LPM_TRIE, 8, 16, MapFlag.NO_PREALLOC, 64)
    diffs = differences(want, found)
    assert [d.field for d in diffs] == ["map_type", "key_size", "flags", "max_entries"]
    assert [str(d) for d in diffs] == ["type LPM_TRIE (wanted HASH)", "key size 8 (wanted 16)",
                                       "flags NO_PREALLOC (wanted 0)", "max entries 64 (wanted 1024)"]
    assert str(Difference("flags", 0, 1 << 20 | 1)) == "flags NO_PREALLOC|0x100000 (wanted 0)"
    assert str(Difference("map_type", 1, 999)) == "type 999 (wanted HASH)"
    assert only_size_differs(differences(want, MapShape(MapType.HASH, 16, 16, 0, 8)))
    assert not only_size_differs(diffs) and not only_size_differs([])
