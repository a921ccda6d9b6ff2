"""refbilevel asv benchmarks (see ../README.md)."""
