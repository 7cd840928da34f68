"""fedlink: linked statistics without raw data leaving source."""
