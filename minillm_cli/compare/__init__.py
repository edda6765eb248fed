"""``minillm compare``: run a fair comparison of objectives (a plan of distill stages), then evaluate and tabulate."""
