"""Cross-cutting plumbing every layer uses: user-facing errors, atomic writes, devices, progress."""
