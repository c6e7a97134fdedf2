"""What people look at: figures from plain data, notebook parameters and reports.

- `figures`: reconstruction grids, training curves, few-shot and ablation figures;
- `pyramid_figures`: the token pyramid drawn over its image;
- `parameters`: notebook parameters checked against their declared types and bounds;
- `readable`: numbers and words as people read them (percentages with intervals, dB, word grids);
- `report`: notebooks run by papermill into HTML reports; `report_index`: the index of the runs.

Nothing here trains or calls an LLM.
"""
