"""What people look at: figures from plain data, notebook parameters and reports.

- `figures`: reconstruction grids, training curves, few-shot and ablation figures;
- `pyramid_figures`: the token pyramid drawn over its image;
- `parameters`: notebook parameters checked against their declared types and bounds;
- `report`: notebooks run by papermill into HTML reports and an index.

Nothing here trains or calls an LLM.
"""
