"""Files: ISMRMRD raw data in and out, map and coefficient images, atomic writes."""
