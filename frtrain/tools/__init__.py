"""The data tools users run as ``python -m frtrain.tools.<name>`` (the scripts/ of the same names wrap them):
make_bin (pairs -> insightface .bin), folder2rec and rec2folder (identity folders <-> RecordIO), align (raw photos ->
aligned crops from 5 landmarks), reproduce (the papers' reported-vs-reproduced tables)."""
