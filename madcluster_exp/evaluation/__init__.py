"""What a protocol computes from scores: evaluation objects, pooling, sanity flags."""
