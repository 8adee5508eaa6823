"""Storage helpers shared by the stores (SQLite opened one way)."""
