"""Test-wide setup: offline, no analytics, one BLAS thread per process.

The environment must be set before huggingface_hub / gradio are imported anywhere,
so it happens at the top of conftest (pytest imports it first).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tiny models: thread start-up costs more than it saves (0.57 s vs 0.015 s per forward on a
# busy 2-core machine); must be set before torch is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")
