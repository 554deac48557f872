"""Tests of realm_tf2.export."""
