"""OSTAF pipelines: DAG wiring, compile, local run and cluster submit. No training maths here."""
