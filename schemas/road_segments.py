"""road_segments: one directed road segment between two graph nodes (OSM node pair or benchmark arc)."""

from schemas._base import Column, Table

# Drivable OSM highway classes, fastest first; the index is the class rank used by routing weights and priors.
ROAD_CLASSES = (
    "motorway", "trunk", "primary", "secondary", "tertiary",
    "motorway_link", "trunk_link", "primary_link", "secondary_link", "tertiary_link",
    "unclassified", "residential", "living_street", "service", "road", "unknown",
)
DEFAULT_H3_RES = 7  # ~5 km^2 cells: central Porto spans several partitions

ROAD_SEGMENTS = Table(
    name="road_segments",
    grain="one directed segment between two consecutive intersection/end nodes of one way (or one graph arc)",
    partition_by=("partition",),
    columns=(
        Column("segment_id", "int64", "stable id: hash of (osm_way_id, from_node_id, to_node_id); the arc id for node/arc graphs"),
        Column("osm_way_id", "int64", "OSM way id (null for node/arc graphs)", required=False),
        Column("from_node_id", "int64", "OSM node id (or graph node id) where the segment starts"),
        Column("to_node_id", "int64", "OSM node id (or graph node id) where the segment ends"),
        Column("reverse_segment_id", "int64", "segment_id of the opposite direction, null if one-way", required=False),
        Column("length_m", "float64", "geodesic length along the geometry, metres"),
        Column("road_class", "string", "OSM highway class (see ROAD_CLASSES), 'unknown' for graphs without tags"),
        Column("maxspeed_kph", "float64", "posted limit in km/h (mph converted), null if absent/none/signals", required=False),
        Column("name", "string", "street name or ref, null if absent", required=False),
        Column("is_oneway", "bool", "true when the way may only be driven in this direction"),
        Column("geom_lon_deg", "array<float64>", "vertex longitudes, WGS84 degrees, in driving order"),
        Column("geom_lat_deg", "array<float64>", "vertex latitudes, WGS84 degrees, in driving order"),
        Column("timezone", "string", "IANA time zone of the segment midpoint (local time for bucketing)"),
        Column("partition", "string", "H3 cell (res in _partitions.json) of the segment midpoint"),
    ),
)
