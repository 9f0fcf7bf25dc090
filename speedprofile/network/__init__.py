"""Road network: OSM PBF or node/arc graphs -> road_segments (directed segments, H3-partitioned)."""
