"""Steps chained into jobs: the pipeline, batches in worker processes, and the accuracy search."""
