"""Speed and memory figures, each printed beside a baseline measured in the same run.

- ``speed``: side-by-side batching, recomposition, decode, MCUB items/s, the 7B-shaped GPU
  section (``python -m composition bench``);
- ``methods``: time and peak memory of every registered merge method, dense and core space.

The app's own cold start is measured by ``studio.cold_start`` with the helpers of ``speed``.
The engine never imports this package.
"""
