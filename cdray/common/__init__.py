"""Small helpers every layer uses: safe file writes, credential masking, signals, fault injection."""
