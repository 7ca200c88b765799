"""The lab: the offline scene world (`scenes`), the downstream A/B (`downstream`), the benchmark
harness (`bench`) and the tiny-model builders (`tiny`, `tiny_families`). The lab imports the core;
the core never imports the lab (import-linter checks it)."""
