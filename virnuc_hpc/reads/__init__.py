"""Reading the input: samples, formats, validation, chunks, frames and bags (no torch)."""
