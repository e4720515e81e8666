// The playground app (replaced by the full version).
