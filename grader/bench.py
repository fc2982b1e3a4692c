"""`labs bench` and `labs profile` (filled in below)."""
