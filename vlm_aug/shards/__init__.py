"""Shards, the unit of work: read an input tar into Samples (`read`), decode images (`decode`),
write one output shard atomically (`write`); `layout` alone knows the output directory."""
