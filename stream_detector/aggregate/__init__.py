"""input.mode = "aggregate": raw events (flows, requests, firewall lines) become per-key feature
vectors over event-time buckets before the windows, so the rest of the engine is unchanged."""
