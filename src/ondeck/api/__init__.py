"""HTTP adapters over the controller: JSON API, metrics, (later) webhooks and UI."""
