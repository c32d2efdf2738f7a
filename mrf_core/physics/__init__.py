"""Physics: the FISP-MRF schedule, the EPG simulator, dictionaries and their SVD temporal basis."""
