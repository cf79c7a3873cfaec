"""The kinds of feature column a dataset can declare, and the towers know how to encode."""

KINDS = ("id", "categorical", "multi_hot", "text", "numeric", "bucketized", "time")
