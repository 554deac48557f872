"""Retrieval: MIPS indexes (`index`), the block store, corpus embedding and the index refreshers."""
