"""Person-search datasets: CUHK-SYSU layout reader and the records the evaluator consumes."""
