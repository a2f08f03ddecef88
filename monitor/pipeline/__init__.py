"""One stream's batch: decode, schema checks, dead letters, finding stages."""
