"""Reports: the JSON shapes (`records.py`), files on disk (`files.py`), terminal tables and summary lines
(`tables.py`), localization heatmaps (`heatmap.py`) and shipped-edit manifests (`manifest.py`).
No torch; rich loads when a table is drawn."""
