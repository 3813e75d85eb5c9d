"""Generation engines: vLLM engine actors and their pool, model sources and fetching, the
installed vLLM build, GPU monitoring, the embedding model and its actors. The backend
interface and its implementations are hare/backends/.
"""

# The Ray namespace of every named actor a run starts (engines, embedders): one value, so a
# worker, the driver and a test all find them.
RAY_NAMESPACE = "hare"
