"""What a run writes and reads back: the store, tables, calls and the OUTDIR lock (no torch)."""
