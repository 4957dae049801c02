"""Serving: packaging a model and its transformer, KServe's model server locally, InferenceServices.

Modules: detect (model kinds), formats (runtime file layouts), transformer (function packaging), package (the
package directory), server (the kserve.Model + ``python -m nbmagic.serve.server``), client (V1/V2 requests),
local (subprocess servers and their handles), upload + cluster (InferenceService), api (``serve()``).
Nothing heavy is imported here.
"""
