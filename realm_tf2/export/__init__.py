"""SavedModel exports with the original module signatures (contracts §3).

`export_embedder`, `export_bert`, `export_reader` write plain TF SavedModels loadable with
`tf.saved_model.load` / `hub.load` in a process that imports only TensorFlow (+ TF Text).
"""
