"""Fleet simulator: vehicles driving the road network under a time-of-week traffic model -> probes + truth."""
